"""The data set registry: cache, mirror, download (through file:// URLs), checksums, offline errors."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
from conftest import mirror_file

from llmscratch.data import registry
from llmscratch.data.registry import DatasetInfo, RemoteFile, download, fetch
from llmscratch.utils import UserError

CONTENT = b"a small data set\nwith two lines\n"
SHA = hashlib.sha256(CONTENT).hexdigest()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private cache and no mirror; returns the data cache folder."""
    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LLMSCRATCH_DATA_MIRROR", raising=False)
    return tmp_path / "cache" / "data"


def _register(monkeypatch, name: str, *files: RemoteFile, kind: str = "text") -> None:
    info = DatasetInfo(name=name, files=files, license="test", description="test entry", kind=kind)
    monkeypatch.setitem(registry.DATASETS, name, info)


def _source(tmp_path: Path, data: bytes = CONTENT, name: str = "upstream.txt") -> str:
    src = tmp_path / "upstream" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    return src.as_uri()


def test_download_then_cache_hit_without_rehash(tmp_path, cache, monkeypatch):
    url = _source(tmp_path)
    _register(monkeypatch, "fake", RemoteFile("fake.txt", url, SHA))
    got = fetch("fake", progress=False)
    assert got == cache / "fake.txt" == registry.path("fake")
    assert got.read_bytes() == CONTENT
    assert registry.is_cached("fake")

    # Second fetch: the upstream is gone and hashing is forbidden; the verified marker answers.
    (tmp_path / "upstream" / "upstream.txt").unlink()
    monkeypatch.setattr(registry, "sha256_file", lambda p: pytest.fail("re-hashed a verified cache file"))
    assert fetch("fake", progress=False) == got


def test_changed_cache_file_is_rehashed_and_refetched(tmp_path, cache, monkeypatch):
    url = _source(tmp_path)
    _register(monkeypatch, "fake", RemoteFile("fake.txt", url, SHA))
    got = fetch("fake", progress=False)
    got.write_bytes(b"tampered")  # size and mtime change, so the marker no longer vouches for it
    assert fetch("fake", progress=False).read_bytes() == CONTENT


def test_mirror_hit_copies_into_cache_without_network(tmp_path, cache, monkeypatch):
    mirror = tmp_path / "mirror"
    (mirror / "sub").mkdir(parents=True)
    (mirror / "sub" / "fake.txt").write_bytes(CONTENT)
    monkeypatch.setenv("LLMSCRATCH_DATA_MIRROR", str(mirror))
    _register(monkeypatch, "fake", RemoteFile("sub/fake.txt", "file:///nonexistent/never-read.txt", SHA))
    got = fetch("fake", progress=False)
    assert got == cache / "sub" / "fake.txt"
    assert got.read_bytes() == CONTENT
    (mirror / "sub" / "fake.txt").unlink()  # the cache copy stays valid without the mirror
    assert fetch("fake", progress=False).read_bytes() == CONTENT


def test_corrupted_mirror_file_rejected(tmp_path, cache, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "fake.txt").write_bytes(b"not the right bytes")
    monkeypatch.setenv("LLMSCRATCH_DATA_MIRROR", str(mirror))
    _register(monkeypatch, "fake", RemoteFile("fake.txt", "file:///nonexistent/x.txt", SHA))
    with pytest.raises(UserError, match="mirror file .*fake.txt has sha256"):
        fetch("fake", progress=False)
    assert not (cache / "fake.txt").exists()


def test_corrupted_download_rejected_and_nothing_cached(tmp_path, cache, monkeypatch):
    url = _source(tmp_path, b"corrupted upstream bytes")
    _register(monkeypatch, "fake", RemoteFile("fake.txt", url, SHA))
    with pytest.raises(UserError, match="checksum mismatch"):
        fetch("fake", progress=False)
    assert not (cache / "fake.txt").exists()
    assert not any(cache.iterdir())  # no temporary or partial file either


def test_offline_error_names_url_mirror_and_cache_path(cache, monkeypatch):
    url = "file:///nonexistent/llmscratch-test/fake.txt"
    _register(monkeypatch, "fake", RemoteFile("fake.txt", url, SHA))
    with pytest.raises(UserError) as e:
        fetch("fake", progress=False)
    msg = str(e.value)
    assert url in msg
    assert "set LLMSCRATCH_DATA_MIRROR to a folder holding fake.txt" in msg
    assert str(cache / "fake.txt") in msg
    assert "LLMSCRATCH_DATA_MIRROR is not set" in msg
    assert not (cache / "fake.txt").exists()


def test_offline_error_when_mirror_lacks_the_file(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("LLMSCRATCH_DATA_MIRROR", str(tmp_path))
    _register(monkeypatch, "fake", RemoteFile("fake.txt", "file:///nonexistent/fake.txt", SHA))
    with pytest.raises(UserError, match=f"LLMSCRATCH_DATA_MIRROR={tmp_path} has no such file"):
        fetch("fake", progress=False)


def test_unknown_name_lists_known_names(cache):
    with pytest.raises(UserError, match="unknown data set 'nope'; known: .*sms-spam.*the-verdict"):
        fetch("nope")
    with pytest.raises(UserError, match="known:"):
        registry.path("nope")


def test_multi_file_entry_returns_folder(tmp_path, cache, monkeypatch):
    a, b = b"first file", b"second file"
    _register(
        monkeypatch, "pair",
        RemoteFile("pair/a.json", _source(tmp_path, a, "a.json"), _sha(a)),
        RemoteFile("pair/b.bpe", _source(tmp_path, b, "b.bpe"), _sha(b)),
    )
    assert registry.path("pair") == cache / "pair"
    got = fetch("pair", progress=False)
    assert got == cache / "pair"
    assert (got / "a.json").read_bytes() == a and (got / "b.bpe").read_bytes() == b


def test_zip_member_extracted_and_verified(tmp_path, cache, monkeypatch):
    archive = tmp_path / "upstream" / "archive.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme", "not this one")
        zf.writestr("Member", CONTENT)
    _register(monkeypatch, "zipped", RemoteFile("Member", archive.as_uri(), SHA, member="Member"))
    got = fetch("zipped", progress=False)
    assert got == cache / "Member" and got.read_bytes() == CONTENT
    assert sorted(p.name for p in cache.iterdir()) == [".Member.verified", "Member"]  # archive not kept


def test_zip_member_with_wrong_checksum_rejected(tmp_path, cache, monkeypatch):
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("Member", b"other bytes")
    _register(monkeypatch, "zipped", RemoteFile("Member", archive.as_uri(), SHA, member="Member"))
    with pytest.raises(UserError, match="checksum mismatch for member Member"):
        fetch("zipped", progress=False)
    assert not (cache / "Member").exists()


def test_zip_without_member_rejected(tmp_path, cache, monkeypatch):
    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme", "x")
    _register(monkeypatch, "zipped", RemoteFile("Member", archive.as_uri(), SHA, member="Member"))
    with pytest.raises(UserError, match="not a zip archive holding Member"):
        fetch("zipped", progress=False)


def test_generic_download_helper(tmp_path):
    url = _source(tmp_path)
    dest = tmp_path / "out" / "model.bin"
    assert download(url, dest, progress=False) == dest
    assert dest.read_bytes() == CONTENT
    dest2 = tmp_path / "out" / "checked.bin"
    download(url, dest2, sha256=SHA, desc="checked", progress=False)
    assert dest2.read_bytes() == CONTENT
    with pytest.raises(registry.DownloadError, match="could not download"):
        download("file:///nonexistent/x.bin", tmp_path / "out" / "missing.bin", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checked.bin", "model.bin"]


def test_registry_facts():
    names = [d.name for d in registry.list_datasets()]
    assert names == ["gpt2-bpe", "instruction-data", "instruction-data-preference", "sms-spam", "the-verdict"]
    sms = registry.get_dataset("sms-spam").files[0]
    assert sms.url == "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
    assert sms.member == "SMSSpamCollection"
    bpe = registry.get_dataset("gpt2-bpe")
    assert [f.url.rsplit("/", 1)[1] for f in bpe.files] == ["encoder.json", "vocab.bpe"]
    assert all(f.url.startswith("https://openaipublic.blob.core.windows.net/gpt-2/models/124M/") for f in bpe.files)
    verdict = registry.get_dataset("the-verdict").files[0]
    assert verdict.url.startswith("https://raw.githubusercontent.com/rasbt/LLMs-from-scratch/main/ch02/")


@pytest.mark.parametrize("name", sorted(registry.DATASETS))
def test_fetch_real_mirror_files(name, tmp_path, monkeypatch):
    info = registry.get_dataset(name)
    for f in info.files:
        mirror_file(f.filename)  # skip when the mirror lacks it
    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path / "cache"))
    got = fetch(name, progress=False)
    assert got == registry.path(name)
    for f in info.files:
        assert registry.sha256_file(tmp_path / "cache" / "data" / f.filename) == f.sha256
    if info.multi_file:
        assert got.is_dir() and sorted(p.name for p in got.iterdir() if not p.name.startswith(".")) == [
            "encoder.json", "vocab.bpe"]
