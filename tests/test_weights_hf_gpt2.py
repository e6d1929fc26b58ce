"""GPT-2 weights: Hugging Face import/export with transformers as the oracle, our own folders, load_model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from conftest import mirror_file
from safetensors.torch import load_file, save_file

from llmscratch.generate import SamplingConfig, generate
from llmscratch.model import build_model, get_config
from llmscratch.tokenizer.hf_json import hf_tokenizer_json, write_hf_tokenizer
from llmscratch.utils import UserError
from llmscratch.weights import load_model
from llmscratch.weights.hf import export_hf
from llmscratch.weights.ours import save_pretrained

transformers = pytest.importorskip("transformers")
slow = pytest.mark.skipif(os.environ.get("LLMSCRATCH_SLOW") != "1", reason="slow test: set LLMSCRATCH_SLOW=1")


def hf_tiny(tied: bool = True, **overrides):
    """A small random transformers GPT-2 with weights large enough to keep greedy choices apart."""
    config = transformers.GPT2Config(
        vocab_size=300, n_positions=48, n_embd=32, n_layer=2, n_head=4, tie_word_embeddings=tied,
        layer_norm_epsilon=1e-5, **overrides,
    )
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 0.1)
            if "ln" in name and name.endswith("weight"):
                p.add_(1.0)
    return model


def ours_tiny(seed: int = 1, **overrides):
    torch.manual_seed(seed)
    model = build_model(get_config("gpt2-tiny", context_length=48, **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def gpt2_tokenizer():
    from llmscratch.tokenizer.files import read_gpt2_files

    return read_gpt2_files(mirror_file("gpt2/encoder.json"), mirror_file("gpt2/vocab.bpe"))


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def our_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)


@pytest.mark.parametrize("tied", [True, False])
def test_import_from_transformers_gives_equal_logits_and_generations(tmp_path, tied):
    hf = hf_tiny(tied)
    hf.save_pretrained(tmp_path / "hf")
    loaded = load_model(tmp_path / "hf")
    assert loaded.source.startswith("hf:") and loaded.tokenizer is None
    c = loaded.model.config
    assert (c.vocab_size, c.context_length, c.emb_dim, c.n_layers, c.n_heads, c.tie_embeddings) == (
        300, 48, 32, 2, 4, tied
    )
    ids = torch.randint(0, 300, (2, 17), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(our_logits(loaded.model, ids), hf_logits(hf, ids), atol=1e-5, rtol=1e-5)
    prompt = ids[0, :5]
    theirs = hf.generate(prompt[None], attention_mask=torch.ones(1, 5, dtype=torch.long), max_new_tokens=20,
                         min_new_tokens=20, do_sample=False, pad_token_id=0)[0, 5:].tolist()
    ours = generate(loaded.model, [prompt.tolist()], SamplingConfig(max_new_tokens=20))[0]
    assert ours == theirs


def test_export_loads_in_transformers_with_equal_logits(tmp_path):
    for i, overrides in enumerate([{}, {"tie_embeddings": False}, {"qkv_bias": False}]):
        model = ours_tiny(i, **overrides)
        export_hf(model, None, tmp_path / f"out{i}")
        hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / f"out{i}").eval()
        ids = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(hf_logits(hf, ids), our_logits(model, ids), atol=1e-5, rtol=1e-5)
        # and back again
        back = load_model(tmp_path / f"out{i}").model
        torch.testing.assert_close(our_logits(back, ids), our_logits(model, ids), atol=1e-6, rtol=1e-6)


def test_export_with_gpt2_tokenizer_loads_in_transformers(tmp_path):
    tok = gpt2_tokenizer()
    model = ours_tiny(0, vocab_size=50257)
    export_hf(model, tok, tmp_path / "out")
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "vocab.json", "merges.txt"} <= names
    # vocab.json and merges.txt are GPT-2's encoder.json and vocab.bpe
    assert json.loads((tmp_path / "out/vocab.json").read_text()) == json.loads(
        mirror_file("gpt2/encoder.json").read_text()
    )
    ours_merges = (tmp_path / "out/merges.txt").read_text().split("\n")[1:]
    theirs = mirror_file("gpt2/vocab.bpe").read_text().split("\n")[1:]
    assert [m for m in ours_merges if m] == [m for m in theirs if m]
    text = "Hello world, it's 2024!  Ünïcödé 😀 <|endoftext|> end"
    expected = tok.encode(text, allowed_special="all")
    fast = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert fast(text)["input_ids"] == expected
    assert fast.eos_token == "<|endoftext|>"
    (tmp_path / "out/tokenizer.json").unlink()  # GPT-2's own two files alone give the same ids
    assert transformers.GPT2Tokenizer.from_pretrained(tmp_path / "out")(text)["input_ids"] == expected


@pytest.mark.parametrize("pre", ["gpt2", "smollm"])
def test_trained_tokenizer_exports_as_tokenizer_json(tmp_path, pre):
    from llmscratch.tokenizer import train

    text = mirror_file("the-verdict.txt").read_text()[:6000]
    tok = train(text, 400, special_tokens=["<|endoftext|>"], pre=pre)
    write_hf_tokenizer(tok, tmp_path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    sample = text[3000:4500] + " 12345 <|endoftext|> Ünïcödé"
    assert fast(sample)["input_ids"] == tok.encode(sample, allowed_special="all")
    assert fast.decode(tok.encode(sample, allowed_special="all")) == sample
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert auto(sample)["input_ids"] == tok.encode(sample, allowed_special="all")
    assert auto.eos_token == "<|endoftext|>"


def test_duplicate_token_bytes_cannot_be_tokenizer_json():
    from llmscratch.tokenizer import Tokenizer

    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b"ab"}
    tok = Tokenizer(vocab, [(97, 98)])
    with pytest.raises(UserError, match="256 and 257"):
        hf_tokenizer_json(tok)


def _damaged_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_wrong_or_missing_tensors_are_named(tmp_path):
    hf_tiny().save_pretrained(tmp_path / "hf")
    keys = load_file(tmp_path / "hf/model.safetensors").keys()
    qkv = next(k for k in keys if k.endswith("h.1.attn.c_attn.weight"))
    missing = _damaged_copy(tmp_path / "hf", tmp_path / "missing", lambda t: t.pop(qkv))
    with pytest.raises(UserError, match=r"tensor h\.1\.attn\.c_attn\.weight is missing"):
        load_model(missing)

    def transpose(t):  # a Linear-layout (out, in) matrix where Conv1D (in, out) is expected
        t[qkv] = t[qkv].t().contiguous()

    wrong = _damaged_copy(tmp_path / "hf", tmp_path / "wrong", transpose)
    with pytest.raises(UserError, match=r"h\.1\.attn\.c_attn\.weight has shape \(96, 32\), expected \(32, 96\)"):
        load_model(wrong)
    extra = _damaged_copy(
        tmp_path / "hf", tmp_path / "extra", lambda t: t.update({"h.9.mlp.c_fc.weight": t[qkv].clone()})
    )
    with pytest.raises(UserError, match=r"unexpected tensors .*h\.9\.mlp\.c_fc\.weight"):
        load_model(extra)


def test_unsupported_configs_and_pickles_are_refused(tmp_path):
    hf_tiny().save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf/config.json").read_text())
    shutil.copytree(tmp_path / "hf", tmp_path / "relu")
    (tmp_path / "relu/config.json").write_text(json.dumps({**config, "activation_function": "relu"}))
    with pytest.raises(UserError, match="activation 'relu' is not supported"):
        load_model(tmp_path / "relu")
    shutil.copytree(tmp_path / "hf", tmp_path / "bin")
    (tmp_path / "bin/model.safetensors").rename(tmp_path / "bin/pytorch_model.bin")
    with pytest.raises(UserError, match="pytorch_model.bin is pickled"):
        load_model(tmp_path / "bin")
    (tmp_path / "other").mkdir()
    (tmp_path / "other/config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "other/model.safetensors").write_bytes((tmp_path / "hf/model.safetensors").read_bytes())
    with pytest.raises(UserError, match="model_type 'bert' is not supported"):
        load_model(tmp_path / "other")


def test_hf_folder_with_gpt2_tokenizer_files(tmp_path):
    hf_tiny().save_pretrained(tmp_path / "hf")
    shutil.copy(mirror_file("gpt2/encoder.json"), tmp_path / "hf/vocab.json")
    shutil.copy(mirror_file("gpt2/vocab.bpe"), tmp_path / "hf/merges.txt")
    tok = load_model(tmp_path / "hf").tokenizer
    assert tok.encode("Hello world") == [15496, 995] and tok.eos_id == 50256


def test_our_folder_round_trip_is_exact_and_atomic(tmp_path):
    from llmscratch.tokenizer import train

    tok = train(mirror_file("the-verdict.txt").read_text()[:3000], 300, special_tokens=["<|endoftext|>"])
    model = ours_tiny(3)
    folder = tmp_path / "ckpt"
    save_pretrained(model, tok, folder, chat_template="{{ messages }}")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["chat_template.jinja", "config.json", "model.safetensors", "tokenizer.json"]
    loaded = load_model(folder)
    assert loaded.source.startswith("ours:") and loaded.name == "ckpt" and loaded.chat_template == "{{ messages }}"
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), n
    assert loaded.model.head.weight is loaded.model.tok_emb.weight  # still tied
    text = "I had always thought Jack Gisburn rather a cheap genius<|endoftext|>"
    assert loaded.tokenizer.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    # saving again replaces the folder; a tokenizer given by name is stored as a reference
    other = ours_tiny(4)
    save_pretrained(other, "gpt2", folder)
    assert json.loads((folder / "tokenizer.ref.json").read_text()) == {"tokenizer": "gpt2"}
    assert not (folder / "tokenizer.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary folders left
    save_pretrained(other, None, folder)
    again = load_model(folder, dtype=torch.bfloat16)
    assert again.tokenizer is None and again.model.tok_emb.weight.dtype == torch.bfloat16
    torch.testing.assert_close(again.model.tok_emb.weight.float(), other.tok_emb.weight, atol=1e-2, rtol=1e-2)


def test_damaged_our_folder_is_a_user_error(tmp_path):
    save_pretrained(ours_tiny(), None, tmp_path / "m")
    tensors = load_file(tmp_path / "m/model.safetensors")
    tensors["blocks.0.ffn.fc.weight"] = tensors["blocks.0.ffn.fc.weight"][:, :5].contiguous()
    save_file(tensors, tmp_path / "m/model.safetensors")
    with pytest.raises(UserError, match=r"blocks\.0\.ffn\.fc\.weight has shape \(128, 5\), expected \(128, 32\)"):
        load_model(tmp_path / "m")
    (tmp_path / "m/model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="not a readable safetensors file"):
        load_model(tmp_path / "m")


def test_presets_and_unknown_specs():
    a, b = load_model("gpt2-tiny"), load_model("gpt2-tiny")
    assert a.random_weights and a.tokenizer.decode(a.tokenizer.encode("héllo")) == "héllo"  # one token per byte
    assert a.tokenizer.vocab_size == a.model.config.vocab_size and a.tokenizer.decode([300, 104]) == "<|300|>h"
    assert torch.equal(a.model.tok_emb.weight, b.model.tok_emb.weight)  # fixed seed
    with pytest.raises(UserError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")


def test_hub_id_uses_the_huggingface_cache_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    hf_tiny().save_pretrained(tmp_path / "hf")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--openai-community--gpt2-medium"
    shutil.copytree(tmp_path / "hf", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_model("openai-community/gpt2-medium")
    assert loaded.source == "hub:openai-community/gpt2-medium" and loaded.model.config.emb_dim == 32
    with pytest.raises(UserError, match="not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
        load_model("openai-community/gpt2-xl")


@slow
def test_gpt2_124m_sized_round_trip(tmp_path):
    config = transformers.GPT2Config()  # GPT-2 small: 12 layers, 768 wide, 50257 tokens, 1024 positions
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").model
    assert ours.num_params() == 124_439_808
    ids = torch.randint(0, 50257, (1, 64), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(our_logits(ours, ids), hf_logits(hf, ids), atol=1e-4, rtol=1e-4)
    export_hf(ours, None, tmp_path / "out")
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(hf_logits(back, ids), hf_logits(hf, ids), atol=1e-5, rtol=1e-5)


def test_export_cli_writes_a_transformers_folder(tmp_path, capsys):
    from llmscratch.cli import main

    save_pretrained(ours_tiny(5), None, tmp_path / "m")
    main(["export", "--model", str(tmp_path / "m"), "--format", "hf", "-o", str(tmp_path / "hf")])
    assert "exported m" in capsys.readouterr().out
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(hf_logits(hf, ids), our_logits(load_model(tmp_path / "m").model, ids),
                               atol=1e-5, rtol=1e-5)
    main(["export", "--model", str(tmp_path / "hf"), "--format", "ours", "-o", str(tmp_path / "back")])
    assert load_model(tmp_path / "back").source.startswith("ours:")
    # --dtype bfloat16: half the bytes, the config says so, transformers loads it as bfloat16 with the same weights
    main(["export", "--model", str(tmp_path / "m"), "--dtype", "bfloat16", "-o", str(tmp_path / "bf16")])
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    size = (tmp_path / "bf16" / "model.safetensors").stat().st_size
    assert size < 0.55 * (tmp_path / "hf" / "model.safetensors").stat().st_size
    half = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "bf16", dtype=torch.bfloat16)
    torch.testing.assert_close(half.transformer.wte.weight, hf.transformer.wte.weight.to(torch.bfloat16))
    # a licence file in the model's folder travels with the export, and a later export replaces that folder
    (tmp_path / "m" / "LICENSE").write_text("the terms")
    for _ in range(2):
        main(["export", "--model", str(tmp_path / "m"), "-o", str(tmp_path / "hf")])
    assert (tmp_path / "hf" / "LICENSE").read_text() == "the terms"
