"""`llmscratch finetune dpo` end to end on a tiny model folder: both references, LoRA, bad input before training."""

from __future__ import annotations

import json
import random

import pytest
import torch

from llmscratch.cli import main
from llmscratch.model import GPTConfig, build_model
from llmscratch.recipes.dpo import DPOConfig, run
from llmscratch.tokenizer import Tokenizer
from llmscratch.train.config import TrainConfig
from llmscratch.utils import UserError
from llmscratch.weights import load_model
from llmscratch.weights.ours import save_pretrained


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A random tiny GPT-2 with a byte tokenizer (256 bytes + end of text), context 128."""
    tok = Tokenizer({i: bytes([i]) for i in range(256)}, [], {"<|endoftext|>": 256}, eos_id=256)
    torch.manual_seed(0)
    model = build_model(GPTConfig(vocab_size=257, context_length=128, emb_dim=32, n_layers=2, n_heads=4))
    return save_pretrained(model, tok, tmp_path_factory.mktemp("base") / "tiny")


def pairs_file(path, n=40, **extra):
    rng = random.Random(0)
    with open(path, "w") as f:
        for _ in range(n):
            w = rng.choice(["cat", "dog", "sun", "tea"])
            f.write(json.dumps({"question": f"give {w}", "good": f"please, {w}", "bad": f"no {w}!", **extra}) + "\n")
    return path


TRAIN = {"lr", "epochs", "batch_size", "eval_every", "eval_batches", "progress", "device", "max_steps"}


def cfg(tmp_path, folder, data, **kw) -> DPOConfig:
    kw = {"prompt_field": "question", "chosen_field": "good", "rejected_field": "bad", "prompt_format": "phi3",
          "lr": 3e-3, "epochs": 3, "batch_size": 4, "beta": 0.5, "eval_every": 10, "eval_batches": None,
          "progress": False, "device": "cpu", "lora_rank": 4, "lora_alpha": 8, "train_metrics_batches": 2, **kw}
    train = TrainConfig(out_dir=str(tmp_path / "run"), schedule="constant", weight_decay=0.0, keep_last=1,
                        export_models=False, sample_prompt=None, **{k: v for k, v in kw.items() if k in TRAIN})
    return DPOConfig(model=str(folder), data=str(data), train=train, **{k: v for k, v in kw.items() if k not in TRAIN})


@pytest.mark.parametrize("trainable,reference", [("all", "live"), ("lora", "precomputed")])
def test_preferences_are_learned_and_the_model_is_saved(tmp_path, tiny_folder, trainable, reference):
    data = pairs_file(tmp_path / "pairs.jsonl")
    report = run(cfg(tmp_path, tiny_folder, data, trainable=trainable, reference=reference), echo=lambda s: None)
    assert report["data"]["train"]["pairs"] == 34 and report["data"]["val"]["pairs"] == 2
    before, after = report["before"]["test"], report["after"]["test"]
    assert before["loss"] == pytest.approx(0.6931, abs=1e-3) and before["margin"] == 0 and before["accuracy"] == 0
    assert after["accuracy"] == 1.0 and after["margin"] > 0.2 and after["loss"] < 0.6
    out = tmp_path / "run"
    assert (out / "dpo.png").is_file() and (out / "report.json").is_file()
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    metrics = {"margin", "accuracy", "chosen_reward", "rejected_reward"}
    assert metrics | {f"train_{m}" for m in metrics} | {"eval_train_loss"} <= set(evals[-1])
    assert evals[-1]["train_accuracy"] == 1.0
    assert (out / "reference_logprobs.safetensors").is_file() == (reference == "precomputed")
    # each test pair, in file order, with its rewards: the same figures as the split's means
    pairs = [json.loads(line) for line in (out / "test_pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == after["pairs"] == 4 and [p["where"] for p in pairs] == sorted(
        (p["where"] for p in pairs), key=lambda w: int(w.split()[-1]))
    assert {"instruction", "chosen", "rejected", "chosen_reward", "rejected_reward", "margin"} <= set(pairs[0])
    assert sum(p["margin"] for p in pairs) / 4 == pytest.approx(after["margin"], abs=1e-6)
    # the figures after training are those of the training loop's own last evaluation (same weights, all pairs)
    val = report["after"]["val"]
    assert val["accuracy"] == evals[-1]["accuracy"] and val["margin"] == pytest.approx(evals[-1]["margin"], abs=1e-5)
    assert report["test_pairs_wrong"] == sum(p["margin"] <= 0 for p in pairs) == 0
    # the final folder is a plain model (LoRA merged into its weights), trained away from the start
    final, start = load_model(out / "final").model, load_model(tiny_folder).model
    assert not any("lora" in n for n, _ in final.named_parameters())
    from llmscratch.data.instruction import read_instruct_info

    assert read_instruct_info(out / "final")["prompt_format"] == "phi3"  # evaluate generate picks it up
    name = "blocks.0.attn.qkv.weight"
    assert not torch.allclose(final.get_parameter(name), start.get_parameter(name))


def test_bad_input_fails_before_training(tmp_path, tiny_folder):
    data = pairs_file(tmp_path / "same.jsonl")
    rows = [json.loads(s) for s in data.read_text().splitlines()]
    for r in rows[:5]:
        r["bad"] = r["good"]
    rows[5]["good"] = ""
    rows[6]["question"] = "x" * 200  # no room within the context of 128
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    messages = []
    report = run(cfg(tmp_path, tiny_folder, data, max_steps=1), echo=messages.append)
    assert any("skipped 7 pairs: 5 with equal chosen and rejected answers; 1 with an empty answer; 1 whose "
               "prompt leaves no room" in m and m.endswith("max_length is 128 tokens") for m in messages)
    assert report["data"]["train"] == {"pairs": 27, "skipped": 7}
    with pytest.raises(UserError, match="no chosen field 'nope'"):
        run(cfg(tmp_path, tiny_folder, data, chosen_field="nope", overwrite=True))


def test_cli(tmp_path, tiny_folder, capsys):
    data = pairs_file(tmp_path / "pairs.jsonl")
    base = ["finetune", "dpo", "--model", str(tiny_folder), "--data", str(data), "--prompt-field", "question",
            "--chosen-field", "good", "--rejected-field", "bad", "--prompt-format", "phi3", "--device", "cpu",
            "--no-progress", "--out", str(tmp_path / "run")]
    main(base + ["--max-steps", "2", "--trainable", "lora", "--lr", "1e-3", "--reference", "precomputed"])
    out = capsys.readouterr().out
    assert "reward accuracy" in out and "test (after)" in out
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["steps"] == 2 and "--trainable lora" in report["command"]
    with pytest.raises(SystemExit) as e:
        main(base + ["--max-steps", "1"])  # the folder holds a run
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "already holds checkpoints (step-00000002); --resume continues that run, --overwrite starts again" in err
    with pytest.raises(SystemExit) as e:
        main(base + ["--beta", "0", "--overwrite"])
    assert e.value.code == 2 and "beta must be > 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(base + ["--reference-model", "gpt2-tiny", "--overwrite"])  # vocabulary 512, the policy's 257
    assert e.value.code == 2 and "vocabulary" in capsys.readouterr().err
