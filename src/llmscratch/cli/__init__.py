"""The `llmscratch` command. Each module in this package adds its subcommands through `register(subparsers)`.

Subcommands stay thin: they parse flags, call library functions and print. A `UserError` raised anywhere is
printed as one line (no traceback) and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from llmscratch import __version__
from llmscratch.utils import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmscratch",
        description="Large language models from scratch: tokenizers, GPT-2 and Llama models, training, "
        "fine-tuning, real weights, generation and benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"llmscratch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"llmscratch: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("llmscratch: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
