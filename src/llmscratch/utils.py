"""Small shared helpers: the user-facing error type, atomic writes, device and thread selection."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class UserError(ValueError):
    """A mistake the user can fix (bad flag, missing file, offline download). The CLI prints it without a traceback.

    `params` names the parameters the message speaks of (e.g. "max_new_tokens"); the CLI writes them as the flags
    it maps them to (--max-new-tokens).
    """

    def __init__(self, message: str, params: tuple[str, ...] | str = ()):
        super().__init__(message)
        self.params = (params,) if isinstance(params, str) else tuple(params)


class FolderInUse(UserError):
    """An output folder exists and is not one of ours: replacing it would delete what it holds."""

    def __init__(self, folder: Path, reason: str):
        super().__init__(f"{folder} {reason}; refusing to replace it: choose another output path, remove it, or "
                         "pass overwrite=True to replace it anyway", params="overwrite")
        self.folder, self.reason = folder, reason


# A model's licence and terms files, which `export` copies along.
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE", "USE_POLICY.md", "GEMMA_TERMS.html")
# Every file name our folder writers produce (model folders, Hugging Face exports, checkpoints, classifiers,
# tuned models). A writer that puts a new name into a folder that atomic_folder replaces must add it here, or a
# second run refuses to replace its own output (FolderInUse).
OUTPUT_FILES = frozenset({
    "model.safetensors", "model.safetensors.index.json", "config.json", "tokenizer.json", "tokenizer.ref.json",
    "tokenizer.model", "chat_template.jinja", "generation_config.json", "vocab.json", "merges.txt",
    "tokenizer_config.json", "special_tokens_map.json", "optimizer.safetensors", "optimizer.json", "rng.safetensors",
    "state.json", "manifest.json", "training.json", "classifier.json", "classifier.safetensors", "report.json",
    "instruct.json", "serving.json", "reference_logprobs.safetensors", *LICENSE_FILES,
})
_TEMP_NAME = re.compile(r"^\..+\.tmp$")  # a file left by an interrupted atomic write


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether `a` and `b` name the same existing file (after resolving links), or the same path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


def check_not_input(outputs: list[str | os.PathLike], inputs: list[str | os.PathLike]) -> None:
    """Refuse to write any of `outputs` onto one of `inputs` (compared after resolving links)."""
    for out in outputs:
        for src in inputs:
            if same_file(out, src):
                raise UserError(f"the output {out} is the same file as the input {src}: writing it would destroy "
                                "the input; choose another output path")


def check_folder_spares(out: str | os.PathLike, source: str | os.PathLike) -> None:
    """Refuse an output folder that is the input `source` (a model folder or file) or holds it: replacing it would
    destroy the input. Nothing to check when `source` is not a path (a registered name, a preset)."""
    if not Path(source).expanduser().exists():
        return
    src, dst = Path(source).expanduser().resolve(), Path(out).expanduser().resolve()
    if same_file(out, source) or dst in src.parents:
        raise UserError(f"the output {out} {'is' if same_file(out, source) else 'holds'} the input {source}: writing "
                        "it would destroy the input; choose another output folder")


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """`path` as a Path when it is a file to read; else a UserError: "`what` file not found" or "is a folder"."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, not a file")
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    return path


def read_text_file(path: str | os.PathLike, what: str, exact: bool = False) -> str:
    """The UTF-8 text of the file `path` (see `check_input_file`); a file that is not UTF-8 is a UserError naming it.
    `exact`: line ends as they are in the file (CRLF stays CRLF: text to tokenize), else "\n" (universal newlines:
    templates, settings)."""
    path = check_input_file(path, what)
    try:
        with open(path, encoding="utf-8", newline="" if exact else None) as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def file_in_the_way(path: str | os.PathLike) -> Path | None:
    """The nearest existing part of `path` (itself, else the closest folder above) when it is a file: what stops a
    folder from being made at `path`; None when there is none."""
    path = Path(path)
    near = next((p for p in (path, *path.parents) if p.exists()), None)
    return near if near is not None and not near.is_dir() else None


def check_folder_can_be_made(out: str | os.PathLike) -> None:
    """Refuse, before any work, an output folder that a file stands in the way of (itself or a folder above)."""
    if (blocked := file_in_the_way(out)) is not None:
        raise UserError(f"the output folder {out} cannot be made: {blocked} is a file")


def json_object(path: str | os.PathLike, limit: int = 1 << 28) -> dict | None:
    """The JSON object in the regular file `path` (how our own files are recognised), or None: no such file, a
    link, unreadable, larger than `limit` bytes, not JSON, not an object."""
    import json

    path = Path(path)
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > limit:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def json_format_of(path: str | os.PathLike) -> str | None:
    """The "format" entry of the JSON object in file `path` (how our files say what they are), or None."""
    return (json_object(path) or {}).get("format")


def check_file_replaceable(path: str | os.PathLike, ours: bool, what: str, overwrite: bool = False) -> None:
    """Refuse, before any work, to replace an existing file `path` that is not one of ours (`ours`: it is `what`,
    written by llmscratch) unless `overwrite`."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not path.is_dir() and not ours and not overwrite:
        raise UserError(f"{path} exists and is not {what}; refusing to replace it: choose another output path, or "
                        "pass overwrite=True to replace it anyway", params="overwrite")


def check_output_file(path: str | os.PathLike) -> None:
    """Refuse, before any work, an output file path that cannot be written: an existing folder, a path below
    something that is not a folder, or a folder where no file can be created (read-only, no permission: an
    OSError naming `path`)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"the output {path} is a folder; give a file path")
    if (blocked := file_in_the_way(path.parent)) is not None:
        raise UserError(f"cannot write {path}: {blocked} is a file, not a folder")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    with _named(path):
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    os.unlink(probe)


def folder_problem(folder: str | os.PathLike, ours: frozenset[str] = OUTPUT_FILES) -> str | None:
    """Why `folder` may not be replaced without an explicit overwrite, or None when it may: it does not exist, is
    empty, or holds only files our writers produce (names in `ours`, at least one *.safetensors, no subfolder)."""
    folder = Path(folder)
    if folder.is_symlink():
        return "is a symbolic link"
    if not folder.exists():
        return None
    if not folder.is_dir():
        return "is a file, not a folder"
    try:
        entries = list(folder.iterdir())
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    foreign = sorted(p.name for p in entries
                     if not (p.is_file() and not p.is_symlink() and (p.name in ours or _TEMP_NAME.match(p.name))))
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return f"holds files that are not ours ({shown})"
    if entries and not any(p.suffix == ".safetensors" for p in entries):
        return "is not one of our output folders (it holds no weights)"
    return None


def check_replaceable(folder: str | os.PathLike, overwrite: bool = False, ours: frozenset[str] = OUTPUT_FILES) -> None:
    """Raise FolderInUse unless `folder` may be replaced by a new output (see `folder_problem`) or `overwrite`;
    a UserError when it cannot be made at all (a file above it)."""
    folder = Path(folder)
    if folder.exists() and Path.cwd().resolve().is_relative_to(folder.resolve()):
        raise UserError(f"{folder} is the current folder or holds it: an output folder is replaced whole; name a new "
                        "folder for it")
    if not folder.exists() and (blocked := file_in_the_way(folder.parent)) is not None:
        raise UserError(f"cannot make the folder {folder}: {blocked} is a file")
    if not overwrite and (reason := folder_problem(folder, ours)) is not None:
        raise FolderInUse(Path(folder), reason)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on failure removed.

    Readers never see a partial file: the rename is atomic on POSIX file systems.
    """
    path = Path(path)
    with _named(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        with _named(path, tmp):
            yield tmp
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _named(target: Path, tmp: Path | None = None) -> Iterator[None]:
    """File system errors about the temporary path (or none) are reported as errors about `target`."""
    try:
        yield
    except OSError as e:
        ours = os.path.join(str(target.parent), f".{target.name}.")  # the prefix of our temporary names
        if e.filename is None or str(e.filename) == str(tmp) or str(e.filename).startswith(ours):
            what = e.strerror or f"could not be written completely ({e}); is the disk full?"
            raise OSError(e.errno, what, str(target)) from e
        raise


def replace_folder(new: Path, folder: Path, overwrite: bool = False, ours: frozenset[str] = OUTPUT_FILES) -> None:
    """Move the finished folder `new` onto `folder`, with the usual permissions (temporary folders and files are
    private to their owner). An existing `folder` is replaced only when it is one of our outputs (see
    `folder_problem`) or with `overwrite` (then anything there: a folder, a file or a link, which is removed, not
    followed); otherwise FolderInUse is raised and nothing is touched."""
    check_replaceable(folder, overwrite, ours)
    umask = os.umask(0)
    os.umask(umask)
    for f in new.iterdir():
        f.chmod(0o666 & ~umask)
    new.chmod(0o777 & ~umask)
    if not folder.exists() and not folder.is_symlink():
        os.replace(new, folder)
        return
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    os.replace(folder, old)
    try:
        os.replace(new, folder)
    except OSError:
        os.replace(old, folder)  # put the old one back
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()


@contextlib.contextmanager
def atomic_folder(
    folder: str | os.PathLike, overwrite: bool = False, ours: frozenset[str] = OUTPUT_FILES
) -> Iterator[Path]:
    """Yield a temporary folder beside `folder` to fill; on success it replaces `folder`, on failure it is removed.

    An existing `folder` that is not one of our outputs (a user's folder, a file, a link) is refused before
    anything is written, unless `overwrite` (see `replace_folder`)."""
    folder = Path(folder)
    check_replaceable(folder, overwrite, ours)
    with _named(folder):
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        with _named(folder, tmp):
            yield tmp
            replace_folder(tmp, folder, overwrite, ours)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def human_bytes(n: float) -> str:
    """Bytes for people (decimal units): "1.25 GB", "93.1 MB", "4.0 kB", "12 B"."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.{2 if unit == 'GB' else 1}f} {unit}"
    return f"{n:.0f} B"


def plural(n: int, word: str, many: str | None = None) -> str:
    """`n` and `word`, with an s (or `many`) unless n is 1: "1 step", "12 steps", "2 processes"."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {many or word + 's'}"


def derived_seed(seed: int, key: object) -> int:
    """A 63-bit seed that depends on (seed, key) only: the seed of one epoch, one row of a batch... Unlike
    seed + key, (1, 0) and (0, 1) get unrelated seeds."""
    import hashlib

    digest = hashlib.sha256(f"llmscratch:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def pick_device(name: str | None = None):
    """The torch device to use: `name` if given ("cpu", "cuda", "mps", "auto"), else CUDA, then MPS, then CPU."""
    import torch

    if name and name != "auto":
        try:
            kind = torch.device(name).type
        except RuntimeError:
            kind = None
        if kind not in ("cpu", "cuda", "mps"):
            raise UserError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto", params="device")
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {name} asked for, but CUDA is not available on this machine", params="device")
        if name == "mps" and not torch.backends.mps.is_available():
            raise UserError("device mps asked for, but MPS is not available on this machine", params="device")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cache_dir() -> Path:
    """Where downloads and fetched models live: $LLMSCRATCH_CACHE, default ~/.cache/llmscratch."""
    return Path(os.environ.get("LLMSCRATCH_CACHE", Path.home() / ".cache" / "llmscratch")).expanduser()
