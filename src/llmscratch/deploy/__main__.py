"""`python -m llmscratch.deploy verify [--serve-args] DIR`: `llmscratch deploy verify` without building the whole
CLI (whose other commands import torch), so the container's entrypoint checks the archive in a fraction of a
second before the server starts."""

from __future__ import annotations

import argparse
import sys

from llmscratch.cli.deploy import add_verify
from llmscratch.utils import UserError


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmscratch.deploy",
                                     description="Check an unpacked model archive (llmscratch deploy verify).")
    add_verify(parser.add_subparsers(dest="step", metavar="STEP", required=True))
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"llmscratch: error: {e}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        sys.exit(0)


if __name__ == "__main__":
    main()
