"""The `fastmix` command line. Each subcommand lives in its own module and adds
itself through ``add_parser(subparsers)``; its ``run(args)`` returns an exit code."""
from __future__ import annotations

import argparse
import sys


def _add_info(subparsers) -> None:
    p = subparsers.add_parser("info", help="versions, backends and GPUs")
    p.set_defaults(run=_run_info)


def _run_info(args) -> int:
    from .info import info_text

    print(info_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastmix", description="Fast MixUnlearn: kernels, trainer and evaluation.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_info(subparsers)
    from . import train, tune, unlearn

    train.add_parser(subparsers)
    unlearn.add_parser(subparsers)
    tune.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
