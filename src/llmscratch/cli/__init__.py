"""The `llmscratch` command. Each module in this package adds its subcommands through `register(subparsers)`.

Subcommands stay thin: they parse flags, call library functions and print. A user's mistake is printed as one
line (no traceback) and exits with status 2: a `UserError` raised anywhere, and the classes of error that only the
user's files and machine cause: file system errors (missing, unreadable, read-only, full disk, a folder where a
file is expected), text that is not UTF-8, and running out of memory. Any other exception is an internal error and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import pkgutil
import re
import sys

# OpenMP threads sleep between parallel regions instead of spinning (before torch loads OpenMP): with the
# default spinning, a decode step or a model load ran 2-3x slower whenever another process held a core, and
# no slower here when none did. A value set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from llmscratch import __version__
from llmscratch.utils import UserError


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one line, as every other error of ours: no usage block before it."""

    def error(self, message: str):
        self.exit(2, f"llmscratch: error: {message} (see: {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `command` (e.g. "generate"), only the module of that name registers when it
    defines the command (start-up: `llmscratch generate` does not import what `bench` or `serve` need)."""
    parser = Parser(
        prog="llmscratch",
        description="Large language models from scratch: tokenizers, GPT-2 and Llama models, training, "
        "fine-tuning, real weights, generation and benchmarks.",
    )
    parser.add_argument("--version", action="version", version=f"llmscratch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = sorted(m.name for m in pkgutil.iter_modules(__path__))
    if command is not None and command.replace("-", "_") in names:
        importlib.import_module(f"{__name__}.{command.replace('-', '_')}").register(sub)
        if command in sub.choices:
            return parser
        return build_parser()
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
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


def _switch(parser: argparse.ArgumentParser, dest: str, value: bool) -> str | None:
    """The argument-less flag that sets `dest` to `value` (--overwrite, --no-transformers), if there is one."""
    for a in parser._actions:
        if a.option_strings and a.nargs == 0 and a.dest in (dest, f"no_{dest.removeprefix('with_')}"):
            if (a.dest == dest and a.const is value) or (a.dest != dest and a.const is True and value is False):
                return max(a.option_strings, key=len)
    return None


def user_message(error: UserError, parser: argparse.ArgumentParser) -> str:
    """The error's text with the parameters it names (`error.params`) written as this command's flags:
    `overwrite=True` -> --overwrite, `with_x=False` -> --no-x (the switch that sets it), `template=FILE` ->
    --template FILE, and the bare name -> its flag where it cannot be an ordinary word (it has an underscore, or
    it starts the message: "max_new_tokens must be ..." -> "--max-new-tokens must be ...")."""
    text = str(error)
    flags = flag_names(parser)
    for param in getattr(error, "params", ()):
        name = re.escape(param)
        for value in (True, False):
            if (switch := _switch(parser, param, value)) is not None:
                text = re.sub(rf"(?<![\w-]){name}={value}\b", switch, text)
        if param not in flags:
            continue
        flag = flags[param]
        text = re.sub(rf"(?<![\w-]){name}=(?=\w)", flag + " ", text)
        bare = rf"(?<![\w-]){name}(?![\w=-])"
        text = re.sub(bare, flag, text) if "_" in param else re.sub(rf"^{bare}", flag, text)
    return text


_OS_HINTS = {
    errno.ENOSPC: "the disk is full (files written before are kept; partial outputs were removed)",
    errno.EDQUOT: "the disk quota is exceeded (files written before are kept; partial outputs were removed)",
    errno.EFBIG: "the file is too large for this file system or limit (partial outputs were removed)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOENT: "no such file or folder",
    errno.ENAMETOOLONG: "the name is too long",
}


def os_error_message(e: OSError) -> str:
    """One line for a file system error: the path(s) and what went wrong."""
    what = _OS_HINTS.get(e.errno, e.strerror or str(e) or type(e).__name__)
    if e.errno == errno.EEXIST and e.filename is not None and os.path.isfile(e.filename):
        what = "a file is already there, where a folder is needed"
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    return f"{paths}: {what}" if paths else what


def out_of_memory(e: BaseException) -> bool:
    """Whether `e` says memory ran out: MemoryError, torch's OutOfMemoryError (CUDA), or the CPU allocator's
    RuntimeError."""
    text = str(e)
    return (isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "CUDA out of memory" in text)


class Terminated(BaseException):
    """SIGTERM arrived: raised in the main thread so that partial outputs are removed on the way out, as on Ctrl-C."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated


def wrapped_os_error(e: BaseException) -> OSError | None:
    """The file system error inside another library's exception (safetensors: "... (os error 28)"), if any."""
    found = re.search(r"\(os error (\d+)\)", str(e)) if type(e).__name__ == "SafetensorError" else None
    return OSError(int(found[1]), os.strerror(int(found[1]))) if found else None


def main(argv: list[str] | None = None) -> None:
    import signal
    import threading

    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(words[0] if words and not words[0].startswith("-") else None)
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command's own parser, whose --help lists its flags
        leaf_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    previous = signal.getsignal(signal.SIGTERM)
    # Only the main thread may set handlers; a SIGTERM ignored, or handled outside Python, stays so; torchrun
    # workers keep the default, so that torchrun's teardown stops a rank blocked in a collective at once.
    ours = (threading.current_thread() is threading.main_thread() and previous not in (signal.SIG_IGN, None)
            and os.environ.get("WORLD_SIZE", "1") == "1")
    if ours:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args.func(args)
    except UserError as e:
        _fail(user_message(e, leaf_parser(parser, args)))
    except KeyboardInterrupt:
        print("llmscratch: interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated:
        print("llmscratch: terminated", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:  # the user's files and disks: missing, read-only, full, a folder in place of a file
        _fail(os_error_message(e))
    except UnicodeDecodeError as e:  # a text, CSV or config file that is not UTF-8, read without a check
        _fail(f"a file given is not UTF-8 text ({e.reason} at byte {e.start})")
    except Exception as e:  # a full disk inside safetensors; a setting that asked for more memory than there is
        if (os_error := wrapped_os_error(e)) is not None:
            _fail(os_error_message(os_error))
        if not out_of_memory(e):
            raise
        _fail("out of memory: a setting (a size, a count, a batch) asks for more memory than this machine has"
              + (f" ({str(e).splitlines()[0][:200]})" if str(e) else ""))
    finally:
        if ours:
            signal.signal(signal.SIGTERM, previous)


def run() -> None:
    """The `llmscratch` command (and `python -m llmscratch`): `main`, then, after a success and when nothing else
    is left running, a quick exit that skips tearing down the interpreter (with torch loaded that took 0.5-0.7 s
    of a 2 s `generate`). Errors end as Python ends them."""
    try:
        main()
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    quick_exit(0)


def quick_exit(code: int) -> None:
    """Flush the output and end the process at once with `code`, unless another thread or a child process is
    still running (then Python's ordinary exit waits for them as it should)."""
    import threading

    others = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    children = "multiprocessing" in sys.modules and sys.modules["multiprocessing"].active_children()
    if others or children:
        sys.exit(code)
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be written anyway
            pass
    os._exit(code)


def _fail(message: str) -> None:
    print(f"llmscratch: error: {' '.join(message.splitlines())}", file=sys.stderr)  # one line, always
    sys.exit(2)
