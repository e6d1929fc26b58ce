"""The `llmscratch` command. Each module in this package adds its subcommands through `register(subparsers)`.

Subcommands stay thin: they parse flags, call library functions and print. A `UserError` raised anywhere is
printed as one line (no traceback) and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
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


def leaf_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that `args` runs, e.g. the one of `data tokenize`."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, sub.dest, None) if sub is not None else None
        if name not in (sub.choices if sub is not None else {}):
            return parser
        parser = sub.choices[name]


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """{parameter (dest): its long flag} for the options of one parser."""
    return {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}


def user_message(error: UserError, parser: argparse.ArgumentParser) -> str:
    """The error's text with the parameters it names written as this command's flags (overwrite=True ->
    --overwrite, max_new_tokens -> --max-new-tokens)."""
    text = str(error)
    flags = flag_names(parser)
    for param in getattr(error, "params", ()):
        if param in flags:
            text = re.sub(rf"(?<![\w-]){re.escape(param)}(=True)?(?![\w-])", flags[param], text)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"llmscratch: error: {user_message(e, leaf_parser(parser, args))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("llmscratch: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
