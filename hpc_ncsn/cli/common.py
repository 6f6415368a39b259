"""What every command's parser shares: the help formatters, --config with KEY=VALUE overrides, --debug."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import config_reference

__all__ = ["DEFAULTS", "RAW", "add_config_args", "add_debug", "keys_help"]

RAW = argparse.RawDescriptionHelpFormatter


class DEFAULTS(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Options with their defaults (none for options without one, or switches that are off), and the examples of
    the epilog one per line, as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def add_config_args(parser: argparse.ArgumentParser, example: str = "noise.sigma_max=50 data.image_size=16") -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config file (default: built-in defaults), e.g. configs/debug.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"overrides such as {example}")


def keys_help() -> str:
    return ("config keys (section: key=built-in default (choices); set any as KEY=VALUE, e.g. train.steps=500;\n"
            f"what each means: docs/configs.md):\n{config_reference()}")


def add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error the command would report in one line")
