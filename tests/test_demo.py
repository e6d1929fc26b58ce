"""`llmscratch demo --quick`: every step runs (corpus, tokenizer, training, generation with and without cache)."""

from __future__ import annotations

from llmscratch.cli import main
from llmscratch.cli.demo import DemoSettings, load_corpus, run_demo


def test_quick_demo_runs_every_step(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LLMSCRATCH_DATA_MIRROR", raising=False)  # the built-in corpus, no data files needed
    settings = DemoSettings.quick()
    settings.progress = False
    res = run_demo(tmp_path / "demo", settings)
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
