"""model.tar.gz for SageMaker: a model at the archive's top level, a serving config and a manifest of sha256 sums.

    manifest.json    {"format": "llmscratch-model-archive", "version": 1, "model": ".", "files": {name: {size,
                     sha256}}}: every other file of the archive; "model" is what `llmscratch serve --model`
                     gets, relative to the folder SageMaker unpacks into (/opt/ml/model): "." for a model
                     folder, the file's name for a GGUF
    serving.json     ServingConfig: default sampling and batch limits of the endpoint
    config.json, model.safetensors, tokenizer.json, ...   our model folder (or a Hugging Face folder), or
    NAME.gguf                                              one GGUF file, as is

Pickled files are refused (never unpickled, never shipped). A tokenizer our folder only names
(tokenizer.ref.json) is stored as tokenizer.json, so the endpoint needs no network. The archive is written beside
its final name and renamed into place. `verify_model_dir` checks an unpacked archive before the server starts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from llmscratch.deploy.config import PackageConfig, ServingConfig
from llmscratch.utils import UserError, atomic_path

FORMAT = "llmscratch-model-archive"
VERSION = 1
MANIFEST = "manifest.json"
SERVING = "serving.json"
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib")
GGUF_MAGIC = b"GGUF"


@dataclass
class PackageResult:
    """What `package_model` wrote."""

    path: Path
    model: str  # the model's path inside the archive ("." or the GGUF file's name)
    files: dict[str, dict]  # the manifest's files
    seconds: float
    size: int  # bytes of the archive


# ------------------------------------------------------------------------------------------------ hashing


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    with open(path, "rb") as f:
        return _stream_sha256(f)


def _stream_sha256(f) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def is_pickle(path: Path) -> bool:
    """True for a pickle-based file: a known suffix, a pickle protocol header, or a torch.save zip."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head == b"PK\x03\x04":
        import zipfile

        try:
            with zipfile.ZipFile(path) as z:
                return any(n.endswith(".pkl") for n in z.namelist())
        except zipfile.BadZipFile:
            return False
    return False


# ------------------------------------------------------------------------------------------------ what goes in


def resolve_model(spec: str) -> Path:
    """The local path of `spec`: a folder or .gguf file, or a registered model name (fetched if needed)."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    from llmscratch.weights.registry import MODELS, fetch

    if spec in MODELS:
        return fetch(spec)
    raise UserError(f"model {spec!r} not found: give a model folder, a .gguf file or a registered model name "
                    f"({', '.join(MODELS)})")


def model_files(source: Path, scratch: Path) -> tuple[dict[str, Path], str]:
    """The files to pack ({name in the archive: local file}) and the model's path inside the archive.

    `scratch` is a folder for files made on the way (a tokenizer a folder only names)."""
    if source.is_file():
        with open(source, "rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise UserError(f"{source} is not a GGUF file nor a model folder: give a model folder or a .gguf")
        return {source.name: source}, source.name
    files = {p.relative_to(source).as_posix(): p for p in sorted(source.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(source).parts)}
    for name in (MANIFEST, SERVING):  # repackaging an unpacked archive: both are written anew
        files.pop(name, None)
    ggufs = [n for n in files if n.endswith(".gguf") and "/" not in n]
    if "config.json" not in files and len(ggufs) == 1:
        return _check_no_pickles(files, source), ggufs[0]
    if "config.json" not in files or not any(n.endswith(".safetensors") for n in files):
        raise UserError(f"{source} holds no model: it needs config.json and safetensors weights (our folder or a "
                        "Hugging Face one), or a single .gguf file")
    _check_no_pickles(files, source)
    if "tokenizer.ref.json" in files:
        files.pop("tokenizer.ref.json")
        files["tokenizer.json"] = _stored_tokenizer(source, scratch)
    return files, "."


def _check_no_pickles(files: dict[str, Path], source: Path) -> dict[str, Path]:
    pickles = [n for n, p in files.items() if is_pickle(p)]
    if pickles:
        raise UserError(f"{source} holds pickled files ({', '.join(pickles)}): they can run code when loaded, so "
                        "they are not packaged; keep weights as safetensors (llmscratch export) and remove them")
    return files


def _stored_tokenizer(source: Path, scratch: Path) -> Path:
    """The tokenizer our folder names (tokenizer.ref.json), written as a file in our format."""
    from llmscratch.weights.ours import load_tokenizer_of

    tok = load_tokenizer_of(source)
    if tok is None:
        raise UserError(f"{source} has no tokenizer (tokenizer.ref.json names none): an endpoint takes text, so "
                        "save the model with its tokenizer first")
    path = scratch / "tokenizer.json"
    tok.save(path, vocab_view=False)
    return path


# ------------------------------------------------------------------------------------------------ writing


def package_model(cfg: PackageConfig) -> PackageResult:
    """Write the archive `cfg.out` for the model `cfg.model`, with `cfg.serving` as serving.json (see the module
    docstring)."""
    out = Path(cfg.out).expanduser()
    _check_overwrite(out, cfg.overwrite)
    start = time.perf_counter()
    source = resolve_model(cfg.model)
    with tempfile.TemporaryDirectory(prefix="llmscratch-package-") as scratch:
        files, model = model_files(source, Path(scratch))
        serving_bytes = (json.dumps(dataclasses.asdict(cfg.serving), indent=2) + "\n").encode()
        entries = {n: {"size": p.stat().st_size, "sha256": file_sha256(p)} for n, p in files.items()}
        entries[SERVING] = {"size": len(serving_bytes), "sha256": hashlib.sha256(serving_bytes).hexdigest()}
        manifest = {"format": FORMAT, "version": VERSION, "model": model, "files": entries}
        manifest_bytes = (json.dumps(manifest, indent=1) + "\n").encode()
        with atomic_path(out) as tmp:
            _write_tar(tmp, [(MANIFEST, manifest_bytes), (SERVING, serving_bytes)], files, cfg, out.name)
    return PackageResult(out, model, entries, time.perf_counter() - start, out.stat().st_size)


def _check_overwrite(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise UserError(f"{out} is a folder: give the archive's file name, e.g. {out / 'model.tar.gz'}")
    if out.exists() and not overwrite and read_archive_manifest(out) is None:
        raise UserError(f"{out} exists and is not a model archive from llmscratch: choose another name or pass "
                        "overwrite=True to replace it", params="overwrite")


def _write_tar(path: Path, small: list[tuple[str, bytes]], files: dict[str, Path], cfg: PackageConfig,
               name: str) -> None:
    """The gzip tar: the small members first (manifest, serving config), then the files, with a progress bar."""
    from tqdm import tqdm

    total = sum(p.stat().st_size for p in files.values())
    with tarfile.open(path, "w:gz", compresslevel=cfg.compress_level) as tar, tqdm(
        total=total, unit="B", unit_scale=True, desc=f"packing {name}",
        disable=not cfg.progress, leave=False,
    ) as bar:
        for name, data in small:
            tar.addfile(_member(name, len(data)), io.BytesIO(data))
        for name, p in files.items():
            with open(p, "rb") as f:
                tar.addfile(_member(name, p.stat().st_size), _Counting(f, bar))


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, int(time.time())
    return info


class _Counting:
    """A file wrapper that advances a progress bar by the bytes read."""

    def __init__(self, f, bar):
        self.f, self.bar = f, bar

    def read(self, n=-1):
        data = self.f.read(n)
        self.bar.update(len(data))
        return data


# ------------------------------------------------------------------------------------------------ checking


def read_archive_manifest(path: str | os.PathLike) -> dict | None:
    """The manifest of an archive made by `package_model` (its first member), or None for any other file."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            first = tar.next()
            if first is None or first.name != MANIFEST or not first.isfile():
                return None
            data = json.loads(tar.extractfile(first).read())
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def check_archive(path: str | os.PathLike) -> dict:
    """Read a whole model.tar.gz and check it against its manifest (before uploading it). Returns the manifest."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model archive not found: {path}")
    manifest = read_archive_manifest(path)
    if manifest is None:
        raise UserError(f"{path} holds no model packaged by llmscratch (no {MANIFEST} first in a gzip tar): make "
                        "it with `llmscratch deploy package --model M -o model.tar.gz`")
    seen: dict[str, str] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name != MANIFEST:
                want = manifest.get("files", {}).get(member.name, {}).get("size")
                seen[member.name] = (f"size {member.size:,} bytes" if want is not None and member.size != want
                                     else _stream_sha256(tar.extractfile(member)))
    _compare(str(path), manifest, seen)
    return manifest


def verify_model_dir(folder: str | os.PathLike) -> Path:
    """Check an unpacked archive against its manifest; return the path `llmscratch serve --model` takes."""
    folder = Path(folder)
    if not folder.is_dir():
        if folder.is_file():
            raise UserError(f"{folder} is a file; verify checks the model folder that SageMaker unpacks from "
                            f"model.tar.gz into /opt/ml/model (unpack it first: tar -xzf {folder} -C FOLDER)")
        raise UserError(f"model folder {folder} does not exist (SageMaker unpacks model.tar.gz into /opt/ml/model)")
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise UserError(f"{folder} has no {MANIFEST}: it is not an archive from `llmscratch deploy package`")
    try:
        manifest = json.loads(mpath.read_text())
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError(f"not a {FORMAT} manifest")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise UserError(f"{mpath} is damaged: {e}") from None
    seen = {}
    for name, info in manifest["files"].items():
        p = folder / name
        if p.is_file():
            size = p.stat().st_size
            seen[name] = file_sha256(p) if info.get("size") in (None, size) else f"size {size:,} bytes"
    pickles = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and is_pickle(p)]
    if pickles:
        raise UserError(f"{folder} holds pickled files that are not part of the model: {', '.join(pickles)}")
    _compare(str(folder), manifest, seen)
    return folder / manifest.get("model", ".")


def _compare(where: str, manifest: dict, seen: dict[str, str]) -> None:
    """UserError naming the first file missing or differing from the manifest."""
    files = manifest.get("files", {})
    model = manifest.get("model")
    if isinstance(model, str) and (model.startswith("/") or ".." in Path(model).parts):
        raise UserError(f"{where}: its manifest's model path {model!r} points outside the archive (the manifest was "
                        "changed after packaging); package it again with `llmscratch deploy package`")
    if not files or model is None or (model != "." and model not in files):
        raise UserError(f"{where} holds no model: its manifest lists no model files")
    for name, info in files.items():
        if name not in seen:
            raise UserError(f"{where}: {name} is missing (the archive is incomplete); package it again with "
                            "`llmscratch deploy package`")
        if seen[name].startswith("size "):
            raise UserError(f"{where}: {name} has {seen[name]}, its manifest says {info.get('size'):,} (the file was "
                            "cut short or changed after packaging); package it again with `llmscratch deploy package`")
        if seen[name] != info["sha256"]:
            raise UserError(f"{where}: {name} does not match its sha256 in {MANIFEST} (the archive is corrupted "
                            "or was changed after packaging); package it again with `llmscratch deploy package`")


def serve_args(folder: str | os.PathLike) -> list[str]:
    """Check an unpacked archive, then the `llmscratch serve` arguments it asks for: --model and serving.json."""
    model = verify_model_dir(folder)
    path = Path(folder) / SERVING
    try:
        serving = ServingConfig(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise UserError(f"{path} is not a valid serving config: {e}") from None
    return ["--model", str(model), *serving.serve_args()]
