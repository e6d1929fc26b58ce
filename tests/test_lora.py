"""LoRA: exact identity at start, merge/unmerge algebra, parameter counts, adapter files, errors."""

from __future__ import annotations

import pytest
import torch

from llmscratch.model import build_model, get_config
from llmscratch.model.lora import (
    LoRALinear,
    apply_lora,
    count_lora_params,
    lora_layers,
    lora_state_dict,
    merge_lora,
    name_matches,
    unmerge_lora,
)
from llmscratch.utils import UserError
from llmscratch.weights.lora import load_lora, save_lora

# gpt2-tiny: emb 32, 2 layers, 4 heads, vocab 512, context 64.
EMB, LAYERS = 32, 2


def tiny(seed: int = 0, preset: str = "gpt2-tiny"):
    torch.manual_seed(seed)
    return build_model(get_config(preset)).eval()


def ids(batch: int = 2, T: int = 10):
    return torch.randint(0, 512, (batch, T), generator=torch.Generator().manual_seed(1))


def randomize_b(model, seed: int = 2):
    """Give every B a non-zero value, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in lora_layers(model).values():
            m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


LINEARS = {"gpt2-tiny": ("attn.qkv", "attn.proj", "ffn.fc", "ffn.proj"),
           "llama-tiny": ("attn.qkv", "attn.proj", "ffn.gate_up", "ffn.down")}


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_wrapping_keeps_the_output_exactly(preset):
    model = tiny(preset=preset)
    x = ids()
    with torch.no_grad():
        before = model(x)
        names = apply_lora(model, rank=4, alpha=8)
        after = model(x)
    assert names == [f"blocks.{i}.{n}" for i in range(LAYERS) for n in LINEARS[preset]]
    assert all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    assert torch.equal(before, after)


def test_state_dict_names_stay_those_of_the_base_model():
    base_keys = set(tiny().state_dict())
    model = tiny()
    apply_lora(model, rank=2, alpha=2)
    keys = set(model.state_dict())
    assert base_keys <= keys
    assert keys - base_keys == {f"{n}.lora_{ab}" for n in lora_layers(model) for ab in "AB"}


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_merge_equals_w_plus_scaled_ab_and_keeps_outputs(preset):
    model = tiny(preset=preset)
    apply_lora(model, rank=4, alpha=16)
    randomize_b(model)
    x = ids()
    with torch.no_grad():
        unmerged_out = model(x)
        w0 = {n: m.weight.detach().clone() for n, m in lora_layers(model).items()}
        merge_lora(model)
        for n, m in lora_layers(model).items():
            expected = w0[n] + (16 / 4) * (m.lora_A @ m.lora_B).T
            torch.testing.assert_close(m.weight, expected)
            assert m.merged
        merged_out = model(x)
        torch.testing.assert_close(merged_out, unmerged_out, rtol=1e-5, atol=1e-5)
        assert not torch.equal(unmerged_out, tiny(preset=preset)(x))  # B != 0 really changed the model
        merge_lora(model)  # idempotent
        unmerge_lora(model)
        for n, m in lora_layers(model).items():
            torch.testing.assert_close(m.weight, w0[n], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(model(x), unmerged_out, rtol=1e-5, atol=1e-5)


def test_trainable_counts_by_hand():
    # Per block: qkv 32 -> 96, proj 32 -> 32, fc 32 -> 128, ffn.proj 128 -> 32; A (in, r) + B (r, out).
    r = 4
    per_block = r * ((32 + 96) + (32 + 32) + (32 + 128) + (128 + 32))
    model = tiny()
    model.requires_grad_(False)
    apply_lora(model, rank=r, alpha=r)
    assert model.num_params(trainable_only=True) == LAYERS * per_block == 4096
    assert count_lora_params(model) == 4096

    model = tiny()
    model.requires_grad_(False)
    apply_lora(model, rank=r, alpha=r, targets=["attn.*"])
    assert model.num_params(trainable_only=True) == LAYERS * r * ((32 + 96) + (32 + 32)) == 1536

    model = tiny()
    model.requires_grad_(False)
    apply_lora(model, rank=8, alpha=8, targets=["blocks.1.ffn.fc"])
    assert model.num_params(trainable_only=True) == 8 * (32 + 128)

    # llama-tiny: emb 32, 4 heads of 8, 2 kv heads -> qkv 32 -> (4 + 2 * 2) * 8 = 64; proj 32 -> 32;
    # gate_up 32 -> 2 * 64 (one adapter for both); down 64 -> 32.
    model = tiny(preset="llama-tiny")
    model.requires_grad_(False)
    apply_lora(model, rank=r, alpha=r)
    per_block = (32 + 64) + (32 + 32) + (32 + 128) + (64 + 32)
    assert model.num_params(trainable_only=True) == LAYERS * r * per_block == 3328


def test_only_the_adapter_gets_gradients():
    model = tiny()
    apply_lora(model, rank=2, alpha=4)
    layer = model.get_submodule("blocks.0.attn.qkv")
    model(ids()).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0
    # With B = 0, A receives a zero gradient at the first step (as in the LoRA paper).
    assert torch.count_nonzero(layer.lora_A.grad) == 0


def test_adapter_file_round_trip(tmp_path):
    model = tiny()
    apply_lora(model, rank=3, alpha=6, targets=["qkv", "ffn.fc"])
    randomize_b(model)
    path = save_lora(model, tmp_path / "adapter.safetensors", include=())
    assert set(lora_state_dict(model, include=())) == {
        f"blocks.{i}.{n}.lora_{ab}" for i in range(LAYERS) for n in ("attn.qkv", "ffn.fc") for ab in "AB"
    }
    fresh = tiny()  # same base weights, no LoRA yet: load_lora applies it from the file's metadata
    loaded = load_lora(fresh, path)
    assert len(loaded) == 8
    assert set(lora_layers(fresh)) == set(lora_layers(model))
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_state_dict_includes_named_modules():
    model = tiny()
    apply_lora(model, rank=2, alpha=2)
    sd = lora_state_dict(model, include=("final_norm",))
    assert {"final_norm.weight", "final_norm.bias"} <= set(sd)
    assert not any(k.startswith("blocks.0.norm1") for k in sd)


def test_pattern_matching():
    assert name_matches("blocks.3.attn.qkv", ["qkv"])
    assert name_matches("blocks.3.attn.qkv", ["attn.*"])
    assert name_matches("blocks.3.attn.qkv", ["blocks.3.*"])
    assert not name_matches("blocks.13.attn.qkv", ["blocks.3.*"])
    assert not name_matches("blocks.3.attn.qkv", ["proj"])


def test_errors(tmp_path):
    with pytest.raises(UserError, match="no linear layer matches"):
        apply_lora(tiny(), rank=2, alpha=2, targets=["nothing_here"])
    with pytest.raises(UserError, match="tied"):
        apply_lora(tiny(), rank=2, alpha=2, targets=["head"])  # GPT-2's head is tied to the embedding
    with pytest.raises(UserError, match="rank"):
        apply_lora(tiny(), rank=0, alpha=2)
    model = tiny()
    apply_lora(model, rank=2, alpha=2)
    with pytest.raises(UserError, match="already"):
        apply_lora(model, rank=2, alpha=2)
    path = save_lora(model, tmp_path / "a.safetensors")
    other = tiny()
    apply_lora(other, rank=4, alpha=2)
    with pytest.raises(UserError, match="shape"):
        load_lora(other, path)
    with pytest.raises(UserError, match="not found"):
        load_lora(tiny(), tmp_path / "missing.safetensors")
    merge_lora(model)
    with pytest.raises(UserError, match="unmerge"):
        lora_state_dict(model)
