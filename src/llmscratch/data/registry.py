"""Registry of the data sets the project uses: where they come from, their checksums, and a local cache.

`fetch(name)` returns a verified local copy. It looks, in order, in

1. the cache, `cache_dir()/data/` (laid out like the mirror; a file's sha256 is checked once and remembered
   in a hidden `.FILE.verified` marker holding size, mtime and digest),
2. the mirror folder named by `$LLMSCRATCH_DATA_MIRROR` (same layout as the cache: `the-verdict.txt`,
   `SMSSpamCollection`, `gpt2/encoder.json`, ...); a mirror file is verified and then COPIED into the cache, so
   `fetch` always answers with a cache path and the mirror may be read-only or go away later,
3. the canonical URL, downloaded with a progress bar, verified, and written atomically.

A file that fails its checksum is never kept in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llmscratch.utils import UserError, atomic_path, atomic_write_text, cache_dir

MIRROR_ENV = "LLMSCRATCH_DATA_MIRROR"
_RASBT = "https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/"
_GPT2 = "https://openaipublic.blob.core.windows.net/gpt-2/models/124M/"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set: `filename` is its path relative to the cache (and mirror) folder."""

    filename: str
    url: str
    sha256: str
    member: str | None = None  # when `url` is a zip archive: the member extracted as `filename`


@dataclass(frozen=True)
class DatasetInfo:
    """A registry entry. `kind` says what the data is: "text", "table", "json" or "tokenizer"."""

    name: str
    files: tuple[RemoteFile, ...]
    license: str
    description: str
    kind: str

    @property
    def multi_file(self) -> bool:
        return len(self.files) > 1


DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        DatasetInfo(
            name="the-verdict",
            files=(
                RemoteFile(
                    "the-verdict.txt",
                    _RASBT + "ch02/01_main-chapter-code/the-verdict.txt",
                    "b41e41a68f0398a3154ae69e2e4c0e2694e17fe0d66730536837f1b01935b31f",
                ),
            ),
            license="public domain",
            description='Edith Wharton, "The Verdict" (1908), 20,479 characters: the book\'s pretraining text',
            kind="text",
        ),
        DatasetInfo(
            name="sms-spam",
            files=(
                RemoteFile(
                    "SMSSpamCollection",
                    "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip",
                    "55341228082b25b832a5868a5ab4b038142a57f70c676c123280af6ff457fe46",
                    member="SMSSpamCollection",
                ),
            ),
            license="CC BY 4.0",
            description="UCI SMS Spam Collection v.1: 5,574 lines 'label<TAB>text', 4,827 ham and 747 spam",
            kind="table",
        ),
        DatasetInfo(
            name="instruction-data",
            files=(
                RemoteFile(
                    "instruction-data.json",
                    _RASBT + "ch07/01_main-chapter-code/instruction-data.json",
                    "7e09a9af353722ca15c18bc580f093f9c39d3178335a75177319cb1e1d163944",
                ),
            ),
            license="license of the rasbt/LLMs-from-scratch repository",
            description="1,100 Alpaca-format entries (instruction, input, output) for instruction fine-tuning",
            kind="json",
        ),
        DatasetInfo(
            name="instruction-data-preference",
            files=(
                RemoteFile(
                    "instruction-data-with-preference.json",
                    _RASBT + "ch07/04_preference-tuning-with-dpo/instruction-data-with-preference.json",
                    "305315abf14f65fa42c01a0877572f832606571c2a7d49f152ac1d758b16756e",
                ),
            ),
            license="license of the rasbt/LLMs-from-scratch repository",
            description="the instruction entries with 'chosen' and 'rejected' responses, for preference tuning",
            kind="json",
        ),
        DatasetInfo(
            name="gpt2-bpe",
            files=(
                RemoteFile(
                    "gpt2/encoder.json",
                    _GPT2 + "encoder.json",
                    "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
                ),
                RemoteFile(
                    "gpt2/vocab.bpe",
                    _GPT2 + "vocab.bpe",
                    "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
                ),
            ),
            license="MIT (modified), OpenAI gpt-2",
            description="GPT-2 byte-level BPE: encoder.json (50,257 tokens) and vocab.bpe (50,000 merges)",
            kind="tokenizer",
        ),
    ]
}


class DownloadError(UserError):
    """The network (or the URL) could not deliver a file."""


def list_datasets() -> list[DatasetInfo]:
    """All registry entries, sorted by name."""
    return [DATASETS[k] for k in sorted(DATASETS)]


def get_dataset(name: str) -> DatasetInfo:
    """The registry entry `name`; a `UserError` listing the known names when there is none."""
    try:
        return DATASETS[name]
    except KeyError:
        raise UserError(f"unknown data set {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def data_cache_dir() -> Path:
    """The folder where fetched data sets live: `cache_dir()/data`."""
    return cache_dir() / "data"


def path(name: str) -> Path:
    """Where `fetch(name)` puts the data set: a file, or the folder of a multi-file entry (may not exist yet)."""
    info = get_dataset(name)
    if info.multi_file:
        return data_cache_dir() / Path(info.files[0].filename).parent
    return data_cache_dir() / info.files[0].filename


def is_cached(name: str) -> bool:
    """True when every file of `name` is present in the cache (not re-verified here)."""
    return all((data_cache_dir() / f.filename).is_file() for f in get_dataset(name).files)


def fetch(name: str, *, progress: bool = True) -> Path:
    """A verified local copy of data set `name` (see the module docstring for the search order)."""
    info = get_dataset(name)
    missing: list[tuple[RemoteFile, str]] = []
    for f in info.files:
        try:
            _fetch_file(f, progress=progress)
        except DownloadError as e:
            missing.append((f, str(e)))
    if missing:
        raise UserError(_offline_message(info, missing))
    return path(name)


def sha256_file(file: str | os.PathLike) -> str:
    """The hex sha256 digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(file, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def download(
    url: str, dest: str | os.PathLike, sha256: str | None = None, desc: str | None = None,
    *, progress: bool = True, timeout: float = 30.0,
) -> Path:
    """Download `url` to `dest` with a progress bar; check `sha256` when given; write atomically.

    Network failures raise `DownloadError` (a `UserError`); a checksum mismatch raises `UserError`. In both
    cases nothing is left at `dest`.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    request = urllib.request.Request(url, headers={"User-Agent": "llmscratch"})
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, atomic_path(dest) as tmp:
            total = response.headers.get("Content-Length")
            with open(tmp, "wb") as out, tqdm(
                total=int(total) if total else None, unit="B", unit_scale=True, unit_divisor=1024,
                desc=desc or dest.name, disable=not progress, leave=False,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
            if sha256 is not None and h.hexdigest() != sha256:
                raise UserError(
                    f"checksum mismatch for {url}: got sha256 {h.hexdigest()}, expected {sha256}; "
                    "the download was discarded (a changed or corrupted file upstream)"
                )
    except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"could not download {url}: {reason}") from None
    return dest


def _marker(file: Path) -> Path:
    return file.with_name(f".{file.name}.verified")


def _stamp(file: Path) -> dict:
    st = file.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _remember_verified(file: Path, digest: str) -> None:
    atomic_write_text(_marker(file), json.dumps({"sha256": digest, **_stamp(file)}))


def _cache_is_valid(file: Path, sha256: str) -> bool:
    """Whether the cached `file` has digest `sha256`: trusted from its marker when size and mtime still match."""
    if not file.is_file():
        return False
    try:
        marker = json.loads(_marker(file).read_text())
        if marker == {"sha256": sha256, **_stamp(file)}:
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(file) == sha256:
        _remember_verified(file, sha256)
        return True
    file.unlink()  # corrupted or stale: fetch it again
    _marker(file).unlink(missing_ok=True)
    return False


def _fetch_file(f: RemoteFile, *, progress: bool) -> Path:
    dest = data_cache_dir() / f.filename
    if _cache_is_valid(dest, f.sha256):
        return dest
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and (Path(mirror) / f.filename).is_file():
        src = Path(mirror) / f.filename
        digest = sha256_file(src)
        if digest != f.sha256:
            raise UserError(
                f"mirror file {src} has sha256 {digest}, expected {f.sha256}; replace it with the file from "
                f"{f.url}" + (f" (member {f.member} of that archive)" if f.member else "")
            )
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
        _remember_verified(dest, f.sha256)
        return dest
    if f.member is None:
        download(f.url, dest, f.sha256, desc=f.filename, progress=progress)
    else:
        _download_member(f, dest, progress=progress)
    _remember_verified(dest, f.sha256)
    return dest


def _download_member(f: RemoteFile, dest: Path, *, progress: bool) -> None:
    """Download the zip archive at `f.url` into a temporary folder and keep only the verified member."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmpdir:
        archive = download(f.url, Path(tmpdir) / "archive.zip", desc=f.filename, progress=progress)
        try:
            with zipfile.ZipFile(archive) as zf, atomic_path(dest) as tmp:
                with zf.open(f.member) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
                digest = sha256_file(tmp)
                if digest != f.sha256:
                    raise UserError(
                        f"checksum mismatch for member {f.member} of {f.url}: got sha256 {digest}, "
                        f"expected {f.sha256}; nothing was cached"
                    )
        except (zipfile.BadZipFile, KeyError) as e:
            raise UserError(f"{f.url} is not a zip archive holding {f.member}: {e}") from None


def _offline_message(info: DatasetInfo, missing: list[tuple[RemoteFile, str]]) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    where = f"{MIRROR_ENV}={mirror} has no such file" if mirror else f"{MIRROR_ENV} is not set"
    parts = []
    for f, reason in missing:
        what = f"{f.filename} (the member {f.member} of that zip archive)" if f.member else f.filename
        parts.append(
            f"{reason}; {where}. To provide it, set {MIRROR_ENV} to a folder holding {what}, "
            f"or put the file at {data_cache_dir() / f.filename}"
        )
    return f"cannot fetch data set {info.name!r}: " + " | ".join(parts)
