"""`llmscratch deploy package / verify`: what goes into model.tar.gz, the manifest check, refusals, atomic writes."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
import torch

from llmscratch.cli import main
from llmscratch.deploy.config import PackageConfig, ServingConfig
from llmscratch.deploy.package import (
    check_archive,
    package_model,
    read_archive_manifest,
    serve_args,
    verify_model_dir,
)
from llmscratch.model import GPTConfig, build_model
from llmscratch.tokenizer import Tokenizer
from llmscratch.utils import UserError
from llmscratch.weights import load_model
from llmscratch.weights.ours import save_pretrained


def byte_tokenizer() -> Tokenizer:
    return Tokenizer({i: bytes([i]) for i in range(256)}, [], {"<|endoftext|>": 256}, eos_id=256)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """One of our model folders: a random tiny GPT-2 with a byte tokenizer."""
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=257, context_length=64, emb_dim=32, n_layers=2, n_heads=4))
    return save_pretrained(model, byte_tokenizer(), tmp_path_factory.mktemp("m") / "tiny")


def unpack(archive, dest):
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


def test_archive_holds_the_folder_at_top_level_with_manifest_and_serving_config(tiny_folder, tmp_path):
    out = tmp_path / "model.tar.gz"
    r = package_model(PackageConfig(model=str(tiny_folder), out=str(out), progress=False,
                                    serving=ServingConfig(default_max_tokens=50, max_batch=2)))
    with tarfile.open(out, "r:gz") as tar:
        names = tar.getnames()
        members = {n: tar.extractfile(n).read() for n in names}
    assert names[:2] == ["manifest.json", "serving.json"]
    assert set(names) == {"manifest.json", "serving.json", "config.json", "model.safetensors", "tokenizer.json"}
    manifest = json.loads(members["manifest.json"])
    assert manifest["format"] == "llmscratch-model-archive" and manifest["model"] == "."
    for name, info in manifest["files"].items():  # every other file, with its true size and sha256
        assert info == {"size": len(members[name]), "sha256": hashlib.sha256(members[name]).hexdigest()}
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    assert json.loads(members["serving.json"]) == {"default_max_tokens": 50, "max_batch": 2, "max_queue": 64,
                                                   "timeout": 60.0, "device": "auto", "dtype": "float32"}
    assert members["model.safetensors"] == (tiny_folder / "model.safetensors").read_bytes()
    assert r.model == "." and r.path == out and out.stat().st_mode & 0o777 == 0o644 & ~_umask()

    folder = unpack(out, tmp_path / "opt-ml-model")
    assert verify_model_dir(folder) == folder
    assert serve_args(folder) == ["--model", str(folder), "--default-max-tokens", "50", "--max-batch", "2",
                                  "--max-queue", "64", "--timeout", "60.0", "--device", "auto", "--dtype", "float32"]
    loaded = load_model(folder)  # what the server will do with --model /opt/ml/model
    assert loaded.tokenizer.encode("hi") == [104, 105]
    assert check_archive(out)["files"] == manifest["files"]


def _umask() -> int:
    import os

    m = os.umask(0)
    os.umask(m)
    return m


def test_a_named_tokenizer_is_stored_so_the_endpoint_needs_no_network(tmp_path):
    byte_tokenizer().save(tmp_path / "tok.json", vocab_view=False)
    model = build_model(GPTConfig(vocab_size=257, context_length=32, emb_dim=16, n_layers=1, n_heads=2))
    folder = save_pretrained(model, str(tmp_path / "tok.json"), tmp_path / "named")
    assert (folder / "tokenizer.ref.json").exists()
    package_model(PackageConfig(model=str(folder), out=str(tmp_path / "a.tar.gz"), progress=False))
    (tmp_path / "tok.json").unlink()  # the endpoint has no access to the packager's files
    unpacked = unpack(tmp_path / "a.tar.gz", tmp_path / "u")
    assert not (unpacked / "tokenizer.ref.json").exists()
    assert load_model(verify_model_dir(unpacked)).tokenizer.encode("ok") == [111, 107]


def test_a_folder_without_tokenizer_is_refused(tmp_path):
    model = build_model(GPTConfig(vocab_size=257, context_length=32, emb_dim=16, n_layers=1, n_heads=2))
    folder = save_pretrained(model, None, tmp_path / "notok")
    with pytest.raises(UserError, match="has no tokenizer"):
        package_model(PackageConfig(model=str(folder), out=str(tmp_path / "a.tar.gz"), progress=False))


def test_a_gguf_file_goes_in_as_is(tmp_path):
    gguf = tmp_path / "tiny.Q4_0.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 40)
    out = tmp_path / "g.tar.gz"
    r = package_model(PackageConfig(model=str(gguf), out=str(out), progress=False))
    assert r.model == "tiny.Q4_0.gguf"
    folder = unpack(out, tmp_path / "u")
    assert (folder / "tiny.Q4_0.gguf").read_bytes() == gguf.read_bytes()
    assert verify_model_dir(folder) == folder / "tiny.Q4_0.gguf"
    assert serve_args(folder)[:2] == ["--model", str(folder / "tiny.Q4_0.gguf")]
    # repackaging the unpacked folder (a single GGUF beside the old manifest) gives the same model entry
    assert package_model(PackageConfig(model=str(folder), out=str(tmp_path / "again.tar.gz"),
                                       progress=False)).model == "tiny.Q4_0.gguf"


def test_not_a_gguf_nor_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a GGUF file nor a model folder"):
        package_model(PackageConfig(model=str(tmp_path / "notes.txt"), out=str(tmp_path / "a.tar.gz")))
    with pytest.raises(UserError, match="holds no model"):
        package_model(PackageConfig(model=str(tmp_path), out=str(tmp_path / "a.tar.gz")))
    with pytest.raises(UserError, match="not found"):
        package_model(PackageConfig(model=str(tmp_path / "absent"), out=str(tmp_path / "a.tar.gz")))


@pytest.mark.parametrize("name", ["pytorch_model.bin", "optimizer.pt", "extra.pkl"])
def test_pickles_are_refused(tiny_folder, tmp_path, name):
    import shutil

    folder = tmp_path / "withpickle"
    shutil.copytree(tiny_folder, folder)
    torch.save({"w": torch.zeros(2)}, folder / name)
    with pytest.raises(UserError, match=f"pickled files \\({name}\\)"):
        package_model(PackageConfig(model=str(folder), out=str(tmp_path / "a.tar.gz"), progress=False))
    assert not (tmp_path / "a.tar.gz").exists()


def test_protocol_pickle_without_suffix_is_found(tiny_folder, tmp_path):
    import pickle
    import shutil

    folder = tmp_path / "p"
    shutil.copytree(tiny_folder, folder)
    (folder / "weights.dat").write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with pytest.raises(UserError, match="weights.dat"):
        package_model(PackageConfig(model=str(folder), out=str(tmp_path / "a.tar.gz"), progress=False))


def test_an_unrelated_file_is_not_overwritten_without_overwrite(tiny_folder, tmp_path, capsys):
    out = tmp_path / "model.tar.gz"
    out.write_text("my notes")
    with pytest.raises(SystemExit) as e:
        main(["deploy", "package", "--model", str(tiny_folder), "-o", str(out), "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a model archive" in err[0] and "--overwrite" in err[0]
    assert out.read_text() == "my notes"
    main(["deploy", "package", "--model", str(tiny_folder), "-o", str(out), "--no-progress", "--overwrite",
          "--max-batch", "3"])
    assert read_archive_manifest(out) is not None
    # an archive of ours is replaced without --overwrite
    main(["deploy", "package", "--model", str(tiny_folder), "-o", str(out), "--no-progress", "--max-batch", "5"])
    with tarfile.open(out, "r:gz") as tar:
        assert json.loads(tar.extractfile("serving.json").read())["max_batch"] == 5
    assert "wrote" in capsys.readouterr().out


def test_a_failed_write_leaves_nothing_behind(tiny_folder, tmp_path, monkeypatch):
    import llmscratch.deploy.package as package

    def broken(path, *args, **kwargs):
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(package, "_write_tar", broken)
    with pytest.raises(OSError, match="disk full"):
        package_model(PackageConfig(model=str(tiny_folder), out=str(tmp_path / "m.tar.gz"), progress=False))
    assert list(tmp_path.iterdir()) == []


def test_verify_names_the_damaged_or_missing_file(tiny_folder, tmp_path, capsys):
    out = tmp_path / "m.tar.gz"
    package_model(PackageConfig(model=str(tiny_folder), out=str(out), progress=False))
    folder = unpack(out, tmp_path / "u")
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, one bit pattern changed
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(SystemExit) as e:
        main(["deploy", "verify", str(folder)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors does not match its sha256" in err and "corrupted" in err
    (folder / "model.safetensors").write_bytes(bytes(data[:-10]))  # cut short
    cut = r"model.safetensors has size [\d,]+ bytes, its manifest says [\d,]+ \(the file was cut short"
    with pytest.raises(UserError, match=cut):
        verify_model_dir(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "model": "../../etc"}))
    with pytest.raises(UserError, match="model path '../../etc' points outside the archive"):
        verify_model_dir(folder)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "model.safetensors").unlink()
    with pytest.raises(UserError, match="model.safetensors is missing"):
        verify_model_dir(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(UserError, match="no manifest.json"):
        verify_model_dir(folder)
    with pytest.raises(UserError, match="does not exist"):
        verify_model_dir(tmp_path / "nowhere")


def test_verify_refuses_a_pickle_slipped_in(tiny_folder, tmp_path):
    out = tmp_path / "m.tar.gz"
    package_model(PackageConfig(model=str(tiny_folder), out=str(out), progress=False))
    folder = unpack(out, tmp_path / "u")
    torch.save({}, folder / "evil.pt")
    with pytest.raises(UserError, match="evil.pt"):
        verify_model_dir(folder)


def _tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_check_archive_finds_an_archive_without_a_model(tiny_folder, tmp_path):
    with pytest.raises(UserError, match="holds no model"):
        check_archive(_tar(tmp_path / "plain.tar.gz", {"README": b"hello"}))
    empty = {"format": "llmscratch-model-archive", "version": 1, "model": ".", "files": {}}
    with pytest.raises(UserError, match="holds no model"):
        check_archive(_tar(tmp_path / "empty.tar.gz", {"manifest.json": json.dumps(empty).encode()}))
    out = tmp_path / "m.tar.gz"
    package_model(PackageConfig(model=str(tiny_folder), out=str(out), progress=False))
    with tarfile.open(out, "r:gz") as tar:
        members = {n: tar.extractfile(n).read() for n in tar.getnames()}
    members.pop("model.safetensors")
    with pytest.raises(UserError, match="model.safetensors is missing"):
        check_archive(_tar(tmp_path / "lacking.tar.gz", members))
    with pytest.raises(UserError, match="not found"):
        check_archive(tmp_path / "absent.tar.gz")


def test_settings_are_checked(tiny_folder, tmp_path, capsys):
    with pytest.raises(UserError, match="max_batch must be >= 1"):
        ServingConfig(max_batch=0)
    with pytest.raises(UserError, match="dtype must be one of"):
        ServingConfig(dtype="x")
    with pytest.raises(UserError, match="compress_level must be <= 9"):
        PackageConfig(model=str(tiny_folder), compress_level=10)
    with pytest.raises(SystemExit) as e:
        main(["deploy", "package", "--model", str(tiny_folder), "-o", str(tmp_path / "a.tar.gz"), "--max-queue", "0"])
    assert e.value.code == 2 and "--max-queue must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "a.tar.gz").exists()


def test_settings_from_a_config_file(tiny_folder, tmp_path):
    (tmp_path / "deploy.yaml").write_text("max-batch: 4\ndtype: bfloat16\ncompress-level: 1\n")
    main(["deploy", "package", "--model", str(tiny_folder), "-o", str(tmp_path / "a.tar.gz"), "--no-progress",
          "--config", str(tmp_path / "deploy.yaml"), "--max-batch", "2"])
    with tarfile.open(tmp_path / "a.tar.gz", "r:gz") as tar:
        serving = json.loads(tar.extractfile("serving.json").read())
    assert (serving["max_batch"], serving["dtype"]) == (2, "bfloat16")  # flags given win over the file
