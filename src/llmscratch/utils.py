"""Small shared helpers: the user-facing error type, atomic writes, device and thread selection."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class UserError(ValueError):
    """A mistake the user can fix (bad flag, missing file, offline download). The CLI prints it without a traceback."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on failure removed.

    Readers never see a partial file: the rename is atomic on POSIX file systems.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def replace_folder(new: Path, folder: Path) -> None:
    """Move the finished folder `new` onto `folder` (whose old content, if any, is removed), with the usual
    permissions (temporary folders and files are private to their owner)."""
    umask = os.umask(0)
    os.umask(umask)
    for f in new.iterdir():
        f.chmod(0o666 & ~umask)
    new.chmod(0o777 & ~umask)
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
        os.replace(new, folder)
        shutil.rmtree(old)
    else:
        os.replace(new, folder)


@contextlib.contextmanager
def atomic_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `folder` to fill; on success it replaces `folder`, on failure it is removed."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
        replace_folder(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def pick_device(name: str | None = None):
    """The torch device to use: `name` if given ("cpu", "cuda", "mps", "auto"), else CUDA, then MPS, then CPU."""
    import torch

    if name and name != "auto":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {name} asked for, but CUDA is not available on this machine")
        if name == "mps" and not torch.backends.mps.is_available():
            raise UserError("--device mps asked for, but MPS is not available on this machine")
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cache_dir() -> Path:
    """Where downloads and fetched models live: $LLMSCRATCH_CACHE, default ~/.cache/llmscratch."""
    return Path(os.environ.get("LLMSCRATCH_CACHE", Path.home() / ".cache" / "llmscratch")).expanduser()
