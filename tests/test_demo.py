"""`llmscratch demo --quick`: every step runs (corpus, tokenizer, training, generation with and without cache)."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from llmscratch.cli import main
from llmscratch.recipes.demo import DemoSettings, load_corpus, run


def test_quick_demo_runs_every_step(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LLMSCRATCH_DATA_MIRROR", raising=False)  # the built-in corpus, no data files needed
    settings = dataclasses.replace(DemoSettings.quick_run(), progress=False, out=str(tmp_path / "demo"))
    res = run(settings)
    out = capsys.readouterr().out
    for n in range(1, 5):
        assert f"=== Step {n}:" in out
    assert "pydoc_data.topics" in out and "same tokens: yes" in out and str(tmp_path / "demo") in out
    assert res.cached_tokens == res.uncached_tokens and len(res.cached_tokens) > 0
    assert res.speedup is not None and res.speedup > 0
    assert res.last_train_loss < res.first_train_loss
    for name in ("tokenizer", "plot", "metrics", "model", "sample"):
        assert res.outputs[name].exists(), name

    from llmscratch.weights import load_model

    loaded = load_model(res.outputs["model"])  # the demo's model folder is a regular model folder
    assert loaded.tokenizer is not None and loaded.tokenizer.vocab_size == settings.vocab_size
    assert loaded.model.config.context_length == settings.context

    # The command the demo suggests at the end works on its small model (its context is 32 tokens).
    assert f"Try: {res.hint}" in out and "--max-new-tokens" in res.hint
    capsys.readouterr()
    argv = shlex.split(res.hint)[1:]
    main(argv)
    room = argv[argv.index("--max-new-tokens") + 1]
    assert f"{room} tokens in" in capsys.readouterr().err  # the prompt and the new tokens fill the context


def test_demo_cli_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LLMSCRATCH_DATA_MIRROR", raising=False)
    main(["demo", "--quick", "--steps", "2", "--no-progress", "--out", str(tmp_path / "d")])
    assert "for 2 steps" in capsys.readouterr().out


def test_corpus_choice(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMSCRATCH_DATA_MIRROR", raising=False)
    text, description = load_corpus("auto")
    assert len(text) > 100_000 and "pydoc" in description
    (tmp_path / "c.txt").write_text("hello")
    assert load_corpus(str(tmp_path / "c.txt"))[0] == "hello"


def test_demo_keeps_a_users_files(tmp_path, capsys):
    """--out over a folder that is not an earlier demo's is refused before any work; an earlier demo's is reused."""
    user = tmp_path / "mine"
    (user / "train" / "final").mkdir(parents=True)
    (user / "train" / "final" / "notes.txt").write_text("mine")
    (user / "sample.txt").write_text("notes")
    with pytest.raises(SystemExit) as e:
        main(["demo", "--quick", "--no-progress", "--out", str(user)])
    assert e.value.code == 2 and "is not an earlier demo's output folder" in capsys.readouterr().err
    assert (user / "sample.txt").read_text() == "notes" and (user / "train" / "final" / "notes.txt").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("x")
    with pytest.raises(SystemExit):
        main(["demo", "--quick", "--no-progress", "--out", str(tmp_path / "other")])
    assert "holds thesis.tex" in capsys.readouterr().err
    main(["demo", "--quick", "--no-progress", "--out", str(tmp_path / "d")])
    main(["demo", "--quick", "--no-progress", "--out", str(tmp_path / "d")])  # an earlier demo: run again there
