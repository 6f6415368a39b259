#!/usr/bin/env python
"""Keep this machine's cores busy, as another user's job would: float32 matrix products on `--threads`
OpenMP threads for `--seconds`. The competing program of docs/performance.md's contended measurements:

    python bench/busy.py --threads 2 --seconds 1200 &   # then the command to measure
"""

import argparse
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="OpenMP threads (default 2)")
    parser.add_argument("--seconds", type=float, default=600, help="how long (default 600)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    a = torch.randn(1024, 1024)
    end = time.monotonic() + args.seconds
    products = 0
    while time.monotonic() < end:
        a @ a
        products += 1
    print(f"busy: {products} products of 1024×1024 in {args.seconds:.0f} s on {args.threads} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
