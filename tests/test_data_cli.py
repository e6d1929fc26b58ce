"""`llmscratch data ...` commands."""

from __future__ import annotations

import pytest
from conftest import mirror_file

from llmscratch.cli import main
from llmscratch.data.pretrain import TokenFile


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_list_path_fetch(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path / "cache"))
    mirror_file("the-verdict.txt")
    code, out, _ = _run(capsys, "data", "list")
    assert code == 0 and "the-verdict" in out and "sms-spam" in out and "cached" not in out
    code, out, _ = _run(capsys, "data", "path", "gpt2-bpe")
    assert out.strip() == str(tmp_path / "cache" / "data" / "gpt2")
    code, out, _ = _run(capsys, "data", "fetch", "the-verdict", "--quiet")
    assert code == 0 and out.strip() == str(tmp_path / "cache" / "data" / "the-verdict.txt")
    assert "cached" in _run(capsys, "data", "list")[1]


def test_user_errors_exit_2_without_traceback(capsys, tmp_path):
    code, _, err = _run(capsys, "data", "fetch", "nope")
    assert code == 2 and err.startswith("llmscratch: error: unknown data set 'nope'") and "Traceback" not in err
    code, _, err = _run(capsys, "data", "tokenize", "sms-spam", "-o", str(tmp_path / "t.bin"))
    assert code == 2 and "not a text corpus" in err
    code, _, err = _run(capsys, "data", "tokenize", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "t.bin"))
    assert code == 2 and "neither a data set name nor a file" in err


def test_tokenize_registry_corpus(capsys, tmp_path, monkeypatch):
    tokenizer = pytest.importorskip("llmscratch.tokenizer")
    if not hasattr(tokenizer, "load_tokenizer"):
        pytest.skip("llmscratch.tokenizer.load_tokenizer not available yet")
    mirror_file("the-verdict.txt")
    mirror_file("gpt2/vocab.bpe")
    out_path = tmp_path / "tokens.bin"
    code, out, _ = _run(capsys, "data", "tokenize", "the-verdict", "-o", str(out_path), "--quiet")
    assert code == 0 and "5,145 tokens (uint16)" in out
    assert len(TokenFile(out_path)) == 5145
