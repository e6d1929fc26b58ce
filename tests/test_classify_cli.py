"""`llmscratch finetune classify` and `llmscratch classify` on a tiny model folder loaded through load_model."""

from __future__ import annotations

import csv
import json
import os
import random

import pytest
import torch
from conftest import byte_gpt

from llmscratch.cli import main
from llmscratch.tokenizer import Tokenizer
from llmscratch.weights.ours import save_pretrained


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """One of our model folders: a random tiny GPT-2 with a byte tokenizer (256 bytes + end of text)."""
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], {"<|endoftext|>": 256}, eos_id=256)
    return save_pretrained(byte_gpt(0), tok, tmp_path_factory.mktemp("base") / "tiny")


def spam_table(path, n=48):
    rng = random.Random(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["message", "kind"])
        for i in range(n):
            words = [rng.choice(["ok", "see", "you", "at", "home", "later"]) for _ in range(rng.randint(2, 5))]
            if i % 2:
                words.insert(rng.randrange(len(words) + 1), "$")
            w.writerow([" ".join(words), "spam" if i % 2 else "ham"])
    return path


def test_finetune_then_classify(tiny_folder, tmp_path, capsys):
    data = spam_table(tmp_path / "msgs.tsv")
    out = tmp_path / "clf"
    main(["finetune", "classify", "--model", str(tiny_folder), "--data", str(data), "--text-column", "message",
          "--label-column", "kind", "--trainable", "lora", "--lora-rank", "4", "--lora-alpha", "8", "--epochs", "8",
          "--lr", "1e-2", "--eval-every", "0", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert "train accuracy:" in text and "test accuracy:" in text and "training time:" in text
    report = json.loads((out / "report.json").read_text())
    assert report["command"].startswith("llmscratch finetune classify --model")
    assert report["model"]["base"] == str(tiny_folder.resolve())
    assert report["accuracy"]["train"] > 0.8
    info = json.loads((out / "classifier.json").read_text())
    assert info["label_names"] == ["ham", "spam"] and info["trainable"]["mode"] == "lora"

    main(["classify", "--model", str(out), "--text", "ok $ see you", "--text", "see you at home"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert all(line.split("\t")[0] in ("ham", "spam") for line in lines)
    assert lines[0].split("\t")[2] == "ok $ see you"

    messages = tmp_path / "in.txt"
    messages.write_text("ok $ see you\n\nsee you at home\nlater $\n")
    main(["classify", "--model", str(out), "--input", str(messages), "--json"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [r["text"] for r in rows] == ["ok $ see you", "see you at home", "later $"]
    assert all(set(r["probabilities"]) == {"ham", "spam"} for r in rows)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["finetune", "classify", "--model", "MODEL", "--data", "DATA", "--label-column", "nope"], "no label column"),
        (["finetune", "classify", "--model", "MODEL", "--data", "DATA", "--text-column", "message",
          "--label-column", "kind", "--labels", "ham,eggs"], "not one of"),
        (["finetune", "classify", "--model", "MODEL", "--data", "DATA", "--trainable", "last-9"], "only 2 blocks"),
        (["classify", "--model", "OUT", "--text", "hello"], "not a classifier folder"),
        (["classify", "--model", "OUT", "--input", "OUT/missing.txt"], "not found"),
    ],
)
def test_user_errors_exit_2(tiny_folder, tmp_path, capsys, argv, message):
    data = spam_table(tmp_path / "msgs.tsv")
    argv = [a.replace("MODEL", str(tiny_folder)).replace("DATA", str(data)).replace("OUT", str(tmp_path))
            for a in argv]
    if argv[0] == "finetune":
        argv += ["--text-column", "message"] if "--text-column" not in argv else []
        argv += ["--label-column", "kind"] if "--label-column" not in argv else []
        argv += ["--out", str(tmp_path / "run"), "--no-progress"]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_gpt2_from_the_hub_cache_fine_tunes_with_the_same_command(tmp_path, capsys):
    """`--model gpt2` as a user with the hub runs it: a transformers-written GPT-2 folder in the registry's cache.

    The weights are random and tiny (the real 124M ones cannot be downloaded here); the tokenizer is GPT-2's own.
    """
    from conftest import mirror_file
    from transformers import GPT2Config, GPT2LMHeadModel

    from llmscratch.weights.registry import _COMPLETE, get_entry, models_root

    encoder, merges = mirror_file("gpt2/encoder.json"), mirror_file("gpt2/vocab.bpe")
    assert models_root().is_relative_to(os.environ["LLMSCRATCH_CACHE"])  # the tests' private cache, not ~/.cache
    hub = models_root() / get_entry("gpt2").name / "hub"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64)).save_pretrained(hub)
    (hub / "vocab.json").write_bytes(encoder.read_bytes())
    (hub / "merges.txt").write_bytes(merges.read_bytes())
    (hub / _COMPLETE).write_text("")

    data = spam_table(tmp_path / "msgs.tsv")
    out = tmp_path / "clf"
    main(["finetune", "classify", "--model", "gpt2", "--data", str(data), "--text-column", "message",
          "--label-column", "kind", "--epochs", "6", "--lr", "1e-2", "--eval-every", "0", "--out", str(out),
          "--no-progress"])
    assert "test accuracy:" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["base"] == "gpt2" and report["model"]["family"] == "gpt2"
    assert report["model"]["trainable"] == "last-block"
    main(["classify", "--model", str(out), "--text", "ok $ see you"])
    assert capsys.readouterr().out.split("\t")[0] in ("ham", "spam")


def test_max_steps_and_max_seconds_shorten_a_run(tiny_folder, tmp_path, capsys):
    data = spam_table(tmp_path / "msgs.tsv")
    common = ["finetune", "classify", "--model", str(tiny_folder), "--data", str(data), "--text-column", "message",
              "--label-column", "kind", "--epochs", "5", "--eval-every", "0", "--no-progress"]
    main([*common, "--max-steps", "2", "--out", str(tmp_path / "steps")])
    assert "(2 steps)" in capsys.readouterr().out
    report = json.loads((tmp_path / "steps" / "report.json").read_text())
    assert report["train"]["steps"] == 2 and "--max-steps 2" in report["command"]
    main([*common, "--max-seconds", "1e-6", "--out", str(tmp_path / "seconds")])
    assert "(1 step, stopped: time limit)" in capsys.readouterr().out
