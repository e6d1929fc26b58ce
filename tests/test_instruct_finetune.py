"""Instruction fine-tuning end to end on a tiny model: the loss falls, the answers change, the tuned model loads."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from llmscratch.chat import ChatSession
from llmscratch.cli import main
from llmscratch.data.instruction import read_instruct_info
from llmscratch.generate import SamplingConfig
from llmscratch.model import LlamaConfig, build_model
from llmscratch.recipes.instruct import InstructConfig, plain_copy, run
from llmscratch.tokenizer import Tokenizer
from llmscratch.tokenizer.byte_level import bytes_to_unicode
from llmscratch.utils import UserError
from llmscratch.weights import load_model
from llmscratch.weights.ours import save_pretrained


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Llama with a byte tokenizer (saved as a model folder) and 40 entries of a simple pattern."""
    folder = tmp_path_factory.mktemp("instruct")
    specials = {"<|endoftext|>": 256}
    vocab = [bytes_to_unicode()[b] for b in range(256)] + list(specials)
    tok = Tokenizer.from_vocab_and_merges(vocab, [], specials, eos_id=256)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=257, context_length=256, emb_dim=48, n_layers=2, n_heads=4, n_kv_heads=2,
                         hidden_dim=96, head_dim=12)
    model = save_pretrained(build_model(config), tok, folder / "tiny")
    words = ["cat", "dog", "sun", "sea", "red", "big", "owl", "fox"]
    entries = [{"instruction": f"Repeat: {w}", "input": "", "output": f"{w} {w}."} for w in words * 5]
    (folder / "data.json").write_text(json.dumps(entries))
    return folder, str(model), str(folder / "data.json")


TRAIN_KEYS = ("epochs", "lr", "batch_size", "eval_every", "sample_tokens", "max_steps", "device", "progress")


def cfg(folder, model, data, out, **kw) -> InstructConfig:
    train = dict(epochs=6, lr=3e-3, batch_size=4, eval_every=0, sample_tokens=8, device="cpu", progress=False)
    train.update({k: kw.pop(k) for k in list(kw) if k in TRAIN_KEYS})
    base = InstructConfig.__dataclass_fields__["train"].default_factory()
    return InstructConfig(model=model, data=data, prompt_format="phi3",
                          train=dataclasses.replace(base, out_dir=str(folder / out), **train), **kw)


def test_loss_falls_and_answers_change(setup):
    folder, model, data = setup
    report = run(cfg(folder, model, data, "full", mask_prompt=True))
    t = report["train"]
    assert report["data"]["train"] == 34 and report["data"]["validation"] == 2  # 85% / 10% / 5% of 40
    assert t["steps"] == 6 * (34 // 4) and t["last_val_loss"] < 0.7 * t["first_val_loss"]
    before = [s["response"] for s in report["samples"]["before"]]
    after = [s["response"] for s in report["samples"]["after"]]
    assert len(after) == 2 and before != after
    tuned = load_model(report["files"]["model"])
    assert read_instruct_info(report["files"]["model"])["prompt_format"] == "phi3"
    assert tuned.chat_template is not None and "<|assistant|>" in tuned.chat_template
    metrics = [json.loads(line) for line in (folder / "full" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["type"] == "eval" for r in metrics) and (folder / "full" / "loss.png").is_file()
    # chat speaks the tuned format (the saved template writes phi3 turns); export keeps the template
    session = ChatSession(tuned.model, tuned.tokenizer, tuned.chat_template, SamplingConfig(max_new_tokens=8))
    assert session.reply(report["samples"]["after"][0]["instruction"]).startswith(after[0])
    main(["export", "--model", report["files"]["model"], "--format", "hf", "-o", str(folder / "hf")])
    assert "<|assistant|>" in load_model(folder / "hf").chat_template


def test_lora_model_folder_is_merged(setup):
    folder, model, data = setup
    c = cfg(folder, model, data, "lora", trainable="lora", lora_rank=4, lora_alpha=8, max_steps=3, epochs=1,
            eval_every=2)
    report = run(c)
    assert report["model"]["lora_layers"] > 0
    tuned = load_model(report["files"]["model"]).model
    # the saved folder holds plain weights with the adapters folded in: no LoRA tensor, and they changed
    base = load_model(model).model
    assert not any("lora" in n for n in tuned.state_dict())
    changed = [n for n, p in tuned.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert changed and all(n.startswith("blocks.") for n in changed)


def test_plain_copy_equals_the_adapted_model():
    from llmscratch.model.lora import apply_lora

    torch.manual_seed(1)
    m = build_model(LlamaConfig(vocab_size=50, context_length=16, emb_dim=16, n_layers=1, n_heads=2, n_kv_heads=1,
                                hidden_dim=32, head_dim=8)).eval()
    apply_lora(m, 2, 4.0)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("lora_B"):
                p.normal_()
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.allclose(plain_copy(m)(ids), m(ids), atol=1e-5)


def test_cli_errors_are_one_line(setup, capsys):
    folder, model, data = setup
    with pytest.raises(SystemExit) as e:
        main(["finetune", "instruct", "--model", model, "--data", data, "--prompt-format", "chat",
              "--out", str(folder / "x"), "--no-progress"])
    assert e.value.code == 2 and "this model has none" in capsys.readouterr().err
    with pytest.raises(UserError, match="trainable must be"):
        run(cfg(folder, model, data, "y", trainable="everything"))
    with pytest.raises(UserError, match="epochs must be >= 1"):
        cfg(folder, model, data, "y", epochs=0)
    with pytest.raises(SystemExit) as e:
        main(["finetune", "instruct", "--model", model, "--lora-rank", "0"])
    assert e.value.code == 2 and "--lora-rank must be >= 1" in capsys.readouterr().err


def test_answers_are_logged_at_each_evaluation(setup):
    folder, model, data = setup
    report = run(cfg(folder, model, data, "log", max_steps=4, epochs=1, eval_every=2, lr=1e-3))
    evals = [json.loads(line) for line in (folder / "log" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [1, 2, 4]
    assert all(len(r["responses"]) == 2 and r["responses"][0]["instruction"] == "Repeat: owl" for r in evals)
    assert report["train"]["steps"] == 4


def test_resume_continues_the_run(setup):
    folder, model, data = setup
    first = run(cfg(folder, model, data, "resume", trainable="lora", lora_rank=2, max_steps=2, epochs=1,
                    eval_every=2))
    assert first["train"]["steps"] == 2
    with pytest.raises(UserError, match="already holds checkpoints"):
        run(cfg(folder, model, data, "resume", trainable="lora", lora_rank=2, max_steps=4, epochs=1, eval_every=2))
    again = run(cfg(folder, model, data, "resume", trainable="lora", lora_rank=2, max_steps=4, epochs=1,
                    eval_every=2, resume=True))
    assert again["train"]["steps"] == 4 and again["train"]["resumed_from"].endswith("step-00000002")
    assert again["samples"]["before"] == []  # a resumed run does not answer "before" again


def test_a_preset_with_a_short_context_trains(setup, tmp_path):
    """The sample answers shown at each evaluation only use instructions that fit the model's context (here 64
    tokens: none of the book's alpaca prompts fit), so a small model still trains."""
    _, _, data = setup
    main(["finetune", "instruct", "--model", "gemma3-tiny", "--data", data, "--max-steps", "2",
          "--out", str(tmp_path / "run"), "--no-progress"])
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["train"]["steps"] == 2
