"""Bad input at the command line: outputs never destroy inputs or a user's folder; mistakes are one line, exit 2."""

from __future__ import annotations

import os

import pytest

from llmscratch.cli import main
from llmscratch.utils import FolderInUse, UserError, atomic_folder, check_replaceable, folder_problem


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _error(capsys, *argv: str) -> str:
    code, _, err = _run(capsys, *argv)
    assert code == 2, err
    assert err.startswith("llmscratch: error: ") and "Traceback" not in err and err.count("\n") == 1, err
    return err


# ------------------------------------------------------------------------------- outputs onto inputs


def test_tokenize_refuses_its_input_as_output(capsys, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("hello world\n")
    link = tmp_path / "link.txt"
    link.symlink_to(text)
    assert "same file as the input" in _error(capsys, "data", "tokenize", text, "-o", text, "--quiet")
    assert "same file as the input" in _error(capsys, "data", "tokenize", link, "-o", text, "--quiet")
    header = tmp_path / "t.bin.json"  # the header written beside -o t.bin
    header.write_text("keep me")
    assert "same file as the input" in _error(capsys, "data", "tokenize", header, "-o", tmp_path / "t.bin", "--quiet")
    assert text.read_text() == "hello world\n" and header.read_text() == "keep me"
    assert "is a folder" in _error(capsys, "data", "tokenize", text, "-o", tmp_path, "--quiet")


def test_tokenizer_train_refuses_its_input_as_output(capsys, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("hello hello world\n")
    assert "same file as the input" in _error(capsys, "tokenizer", "train", "--input", text, "--vocab-size", "260",
                                              "-o", text)
    vocab = tmp_path / "a.vocab"  # -o a.json also writes a.vocab
    vocab.write_text("hello\n")
    assert "same file as the input" in _error(capsys, "tokenizer", "train", "--input", vocab, "--vocab-size", "260",
                                              "-o", tmp_path / "a.json")
    assert text.read_text() == "hello hello world\n" and vocab.read_text() == "hello\n"


# ------------------------------------------------------------------------------- folders that are not ours


def _tree(root) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["hf", "ours"])
def test_export_never_replaces_a_users_folder_or_file(capsys, tmp_path, fmt):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    run = tmp_path / "run"  # a training run: metrics, checkpoints
    (run / "checkpoints" / "step-1").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "checkpoints" / "step-1" / "model.safetensors").write_bytes(b"x")
    plain = tmp_path / "plain.txt"
    plain.write_text("a file")
    before = _tree(tmp_path)
    for out in (user, run, plain):
        err = _error(capsys, "export", "--model", "gpt2-tiny", "--format", fmt, "-o", out)
        assert "refusing to replace it" in err and "--overwrite" in err and "overwrite=True" not in err
    assert _tree(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "run", "user"]  # no hidden .old copies


def test_export_replaces_its_own_output_and_anything_with_overwrite(capsys, tmp_path):
    out = tmp_path / "m"
    assert _run(capsys, "export", "--model", "gpt2-tiny", "-o", out)[0] == 0
    assert _run(capsys, "export", "--model", "gpt2-tiny", "--format", "ours", "-o", out)[0] == 0  # ours -> ours
    assert (out / "tokenizer.json").is_file() and not (out / "generation_config.json").exists()
    (out / "notes.txt").write_text("mine")
    assert _run(capsys, "export", "--model", "gpt2-tiny", "-o", out)[0] == 2
    assert (out / "notes.txt").read_text() == "mine"
    plain = tmp_path / "plain.txt"
    plain.write_text("a file")
    for target in (out, plain):
        assert _run(capsys, "export", "--model", "gpt2-tiny", "-o", target, "--overwrite")[0] == 0
        assert (target / "model.safetensors").is_file() and not (target / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "plain.txt"]


def test_folder_rule(tmp_path):
    assert folder_problem(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert folder_problem(tmp_path / "empty") is None
    ours = tmp_path / "ours"
    ours.mkdir()
    for name in ("model.safetensors", "config.json", ".config.json.abc.tmp"):
        (ours / name).write_text("x")
    assert folder_problem(ours) is None
    only_config = tmp_path / "cfg"
    only_config.mkdir()
    (only_config / "config.json").write_text("{}")  # some program's settings: not a model folder
    assert "no weights" in folder_problem(only_config)
    (ours / "sub").mkdir()
    assert "not ours (sub)" in folder_problem(ours)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "empty")
    assert "symbolic link" in folder_problem(link)
    with pytest.raises(FolderInUse, match="overwrite=True"):
        check_replaceable(ours)
    check_replaceable(ours, overwrite=True)


def test_atomic_folder_refuses_before_the_body_runs_and_overwrite_replaces_a_link_not_its_target(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    ran = []
    with pytest.raises(UserError), atomic_folder(user) as tmp:
        ran.append(tmp)
    assert not ran and (user / "notes.txt").read_text() == "mine"
    link = tmp_path / "link"
    link.symlink_to(user)
    with atomic_folder(link, overwrite=True) as tmp:
        (tmp / "model.safetensors").write_bytes(b"x")
    assert not link.is_symlink() and (link / "model.safetensors").is_file()
    assert (user / "notes.txt").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == ["link", "user"]
