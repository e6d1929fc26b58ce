"""`llmscratch pretrain`: config files under command-line flags, user errors, and a real SIGKILL + --resume."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import pytest

from llmscratch.cli import build_parser, main
from llmscratch.config import from_args
from llmscratch.recipes.pretrain import PretrainConfig
from llmscratch.train.plots import read_metrics
from llmscratch.utils import UserError


def args_for(corpus, out, *extra) -> list[str]:
    return ["pretrain", "--data", str(corpus / "corpus.txt"), "--tokenizer", str(corpus / "tok.json"),
            "--model", "gpt2-tiny", "--context", "16", "--batch-size", "4", "--epochs", "1", "--max-steps", "8",
            "--eval-every", "4", "--save-every", "3", "--dropout", "0.1", "--lr", "3e-3", "--device", "cpu",
            "--no-progress", "--sample-prompt", "the cat", "--sample-tokens", "4", "--out", str(out), *extra]


def parse(argv) -> PretrainConfig:
    return from_args(PretrainConfig, build_parser().parse_args(argv))


def test_config_file_sits_between_defaults_and_flags(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data: the-verdict\nlr: 4e-4\nbatch-size: 2\nno_qkv_bias: true\nepochs: '10'\n")
    cfg = parse(["pretrain", "--config", str(cfg), "--batch-size", "8"])
    assert cfg.data == "the-verdict" and cfg.train.lr == 4e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.batch_size == 8  # the flag wins over the file
    assert cfg.no_qkv_bias is True and cfg.train.epochs == 10
    assert cfg.model == "gpt2-124m" and cfg.train.out_dir == "runs/pretrain"  # untouched defaults
    js = tmp_path / "run.json"
    js.write_text('{"data": "x.txt", "batch_size": 3, "out": "o", "no_progress": true}')
    cfg = parse(["pretrain", "--config", str(js)])
    assert cfg.train.batch_size == 3 and cfg.train.out_dir == "o" and cfg.train.progress is False


def test_config_file_mistakes_are_user_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: x\nlearning_rate: 1\n")
    with pytest.raises(UserError, match="unknown setting 'learning_rate'"):
        parse(["pretrain", "--config", str(bad)])
    bad.write_text("data: x\nepochs: many\n")
    with pytest.raises(UserError, match="epochs must be an integer, got 'many'"):
        parse(["pretrain", "--config", str(bad)])
    with pytest.raises(UserError, match="not found"):
        parse(["pretrain", "--config", str(tmp_path / "none.yaml")])
    with pytest.raises(UserError, match=r"--data is required \(on the command line or in the config file\)"):
        parse(["pretrain"])


def test_cli_errors_print_one_line(tmp_path, corpus, capsys):
    with pytest.raises(SystemExit) as e:
        main(args_for(corpus, tmp_path / "o", "--model", "gpt2-huge"))
    assert e.value.code == 2
    assert "unknown model preset 'gpt2-huge'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(args_for(corpus, tmp_path / "o", "--context", "4000"))
    assert "fewer than one window" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["pretrain", "--data", str(tmp_path / "missing.txt")])
    assert "neither a file nor a data set name" in capsys.readouterr().err


def test_an_earlier_model_or_a_users_files_in_out_are_kept(tmp_path, corpus, capsys):
    """A folder whose train_config.json is not ours, or that holds a trained model of an earlier run (no
    checkpoints left), is not started over without --overwrite."""
    users = tmp_path / "users"
    users.mkdir()
    for name, text in (("train_config.json", "keep"), ("metrics.jsonl", '{"mine": 1}\n'), ("loss.png", "x")):
        (users / name).write_text(text)
    with pytest.raises(SystemExit) as e:
        main(args_for(corpus, users, "--max-steps", "1"))
    assert e.value.code == 2 and "train_config.json is not from one of our runs" in capsys.readouterr().err
    assert (users / "train_config.json").read_text() == "keep" and (users / "loss.png").read_text() == "x"
    run = tmp_path / "run"
    main(args_for(corpus, run, "--max-steps", "2", "--sample-tokens", "0"))
    import shutil

    shutil.rmtree(run / "checkpoints")  # e.g. a run stopped before its first checkpoint: best/ and final/ stay
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(args_for(corpus, run, "--max-steps", "1"))
    assert "already holds a trained model (final/)" in capsys.readouterr().err and (run / "final").is_dir()
    main(args_for(corpus, run, "--max-steps", "1", "--overwrite"))


def test_a_token_file_of_another_tokenizer_is_refused(tmp_path, corpus, capsys):
    """Same vocabulary size, other tokens: the ids would mean other tokens, so pretrain refuses before training."""
    from llmscratch.tokenizer import train as train_bpe

    other = tmp_path / "other.json"
    train_bpe("a b c d e f g " * 300 + (corpus / "corpus.txt").read_text()[:3000], 300,
              special_tokens=["<|endoftext|>"]).save(other)
    tokens = tmp_path / "tokens.bin"
    main(["data", "tokenize", str(corpus / "corpus.txt"), "-o", str(tokens), "--tokenizer", str(corpus / "tok.json")])
    capsys.readouterr()
    argv = args_for(corpus, tmp_path / "o", "--data", str(tokens), "--max-steps", "1", "--sample-tokens", "0")
    with pytest.raises(SystemExit) as e:
        main([*argv, "--tokenizer", str(other)])
    assert e.value.code == 2 and "was tokenized with another tokenizer" in capsys.readouterr().err
    main(argv)  # the tokenizer it was made with


def test_resume_on_other_data_says_so(tmp_path, corpus, capsys):
    main(args_for(corpus, tmp_path / "o", "--max-steps", "2", "--sample-tokens", "0"))
    other = tmp_path / "other.txt"
    other.write_text((corpus / "corpus.txt").read_text()[::-1])
    capsys.readouterr()
    main(args_for(corpus, tmp_path / "o", "--max-steps", "3", "--sample-tokens", "0", "--resume", "--data",
                  str(other)))
    assert "warning: the data was" in capsys.readouterr().out


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, corpus, capsys, kill_script):
    main(args_for(corpus, tmp_path / "full"))
    full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert "trained 8 steps" in capsys.readouterr().out
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(kill_script), "5", *args_for(corpus, tmp_path / "cut")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert "step 4/8" in proc.stdout and "step 8/8" not in proc.stdout
    main(args_for(corpus, tmp_path / "cut", "--resume"))
    out = capsys.readouterr().out
    assert "resumed from" in out and "step-00000003" in out
    resumed = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    train_full = [r["loss"] for r in full if r["type"] == "train"]
    train_resumed = [r["loss"] for r in resumed if r["type"] == "train"]
    assert len(train_full) == 8 and train_resumed == pytest.approx(train_full, abs=1e-6)
    evals = [r for r in full if r["type"] == "eval"]
    assert evals and all(r["val_ppl"] == pytest.approx(math.exp(r["val_loss"])) for r in evals)
    keys = ("step", "tokens", "train_loss", "val_loss", "sample")
    evals = [[r.get(k) for k in keys] for r in resumed if r["type"] == "eval"]
    assert evals == [[r.get(k) for k in keys] for r in full if r["type"] == "eval"]


def test_book_style_model_untied_with_torch_init(tmp_path, corpus, capsys):
    from llmscratch.weights import load_model

    main(args_for(corpus, tmp_path / "book", "--no-tie-embeddings", "--init", "torch", "--max-steps", "2"))
    loaded = load_model(tmp_path / "book" / "final")
    m = loaded.model
    assert m.config.tie_embeddings is False and m.head.weight is not m.tok_emb.weight
    assert 0.8 < float(m.tok_emb.weight.detach().std()) < 1.2  # N(0, 1) embeddings, PyTorch's default
    assert loaded.tokenizer is not None and loaded.tokenizer.vocab_size == m.config.vocab_size
    with pytest.raises(SystemExit):
        main(args_for(corpus, tmp_path / "bad", "--init", "xavier"))
    assert "--init must be one of gpt2, torch" in capsys.readouterr().err


def test_llama_preset_trains_and_resume_checks_the_model(tmp_path, corpus, capsys):
    main(args_for(corpus, tmp_path / "llama", "--model", "llama-tiny", "--max-steps", "2", "--no-qkv-bias"))
    assert "trained 2 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(args_for(corpus, tmp_path / "llama", "--max-steps", "3", "--resume"))  # gpt2-tiny now
    assert e.value.code == 2
    assert "holds another model (family 'llama' there, 'gpt2' now)" in capsys.readouterr().err


def test_one_step_is_said_as_one_step(tmp_path, corpus, capsys):
    main(args_for(corpus, tmp_path / "one", "--max-steps", "1", "--sample-tokens", "0"))
    out = capsys.readouterr().out
    assert "1 step (" in out and "trained 1 step (" in out and "1 steps" not in out
