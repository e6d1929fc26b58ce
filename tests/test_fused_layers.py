"""gate and up fused into one Linear `ffn.gate_up` (Llama, Gemma): older folders, adapters, targets and
classifier fingerprints that name them apart keep working (or are refused with a clear message)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from llmscratch.model import build_model, get_config
from llmscratch.model.lora import apply_lora
from llmscratch.model.quant import quantize_model
from llmscratch.utils import UserError
from llmscratch.weights import load_model
from llmscratch.weights.classifier import base_fingerprint
from llmscratch.weights.lora import load_lora
from llmscratch.weights.ours import read_weights, save_pretrained, upgrade_layer_names, upgrade_state_dict


def tiny(preset: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(get_config(preset)).eval()


def as_stored_apart(state: dict) -> dict:
    """A state dict in the layout before fusing: every ffn.gate_up.* split into ffn.gate.* and ffn.up.*."""
    out = {}
    for name, t in state.items():
        if ".ffn.gate_up." not in name:
            out[name] = t
            continue
        gate, up = t.chunk(2, dim=0)
        out[name.replace(".gate_up.", ".gate.")] = gate.contiguous()
        out[name.replace(".gate_up.", ".up.")] = up.contiguous()
    return out


def rewrite_as_older_layout(folder) -> None:
    """Turn one of our folders into what the llmscratch before fusing wrote (tensors and quantized layer list)."""
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        meta, tensors = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    save_file(as_stored_apart(tensors), str(folder / "model.safetensors"), metadata=meta)
    data = json.loads((folder / "config.json").read_text())
    if "quantization" in data:
        layers = []
        for name in data["quantization"]["layers"]:
            layers += [name[: -len("gate_up")] + "gate", name[: -len("gate_up")] + "up"] if name.endswith(
                "ffn.gate_up") else [name]
        data["quantization"]["layers"] = layers
    (folder / "config.json").write_text(json.dumps(data))


@pytest.mark.parametrize("preset", ["llama-tiny", "gemma3-tiny"])
@pytest.mark.parametrize("fmt", [None, "int8", "int4"])
def test_a_folder_saved_before_fusing_loads_and_computes_the_same(tmp_path, preset, fmt):
    model = tiny(preset)
    if fmt:
        quantize_model(model, fmt, group=32, head=True)
    save_pretrained(model, None, tmp_path / "m")
    rewrite_as_older_layout(tmp_path / "m")
    assert any(".ffn.up." in n for n in read_weights(tmp_path / "m" / "model.safetensors"))
    loaded = load_model(tmp_path / "m").model
    if fmt:
        assert loaded.quantization["layers"] == model.quantization["layers"]
    ids = torch.randint(0, 512, (2, 9))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_upgrading_leaves_todays_layout_and_lone_parts_alone():
    state = {"blocks.0.ffn.gate_up.weight": torch.ones(4, 2), "blocks.1.ffn.gate.weight": torch.ones(2, 2),
             "blocks.2.ffn.gate.lora_A": torch.ones(2, 1), "blocks.2.ffn.up.lora_A": torch.ones(2, 1)}
    assert upgrade_state_dict(state).keys() == state.keys()
    assert upgrade_layer_names(["blocks.0.ffn.gate", "blocks.0.ffn.up", "blocks.0.ffn.down", "blocks.1.ffn.gate"]) \
        == ["blocks.0.ffn.gate_up", "blocks.0.ffn.down", "blocks.1.ffn.gate"]


def test_older_lora_targets_select_the_fused_layer():
    model = tiny("llama-tiny")
    assert apply_lora(model, rank=2, alpha=2, targets=["ffn.up"]) == ["blocks.0.ffn.gate_up", "blocks.1.ffn.gate_up"]
    model = tiny("llama-tiny")
    assert apply_lora(model, rank=2, alpha=2, targets=["blocks.1.ffn.gate"]) == ["blocks.1.ffn.gate_up"]


def test_an_adapter_of_separate_gate_and_up_is_refused_clearly(tmp_path):
    path = tmp_path / "old.safetensors"
    meta = {"llmscratch.lora": json.dumps({"rank": 2, "alpha": 2, "layers": ["blocks.0.ffn.gate"]})}
    save_file({"blocks.0.ffn.gate.lora_A": torch.zeros(32, 2), "blocks.0.ffn.gate.lora_B": torch.zeros(2, 64)},
              str(path), metadata=meta)
    with pytest.raises(UserError, match="written before they were fused into ffn.gate_up"):
        load_lora(tiny("llama-tiny"), path)


def fingerprint_before_fusing(state: dict, exclude: set) -> str:
    """base_fingerprint as the llmscratch before fusing computed it, over a state dict stored apart."""
    h = hashlib.sha256()
    for name, p in sorted(state.items()):
        if name in exclude:
            continue
        flat = p.reshape(-1)
        h.update(f"{name}:{tuple(p.shape)}".encode())
        h.update(flat[:: max(1, flat.numel() // 4096)].numpy().tobytes())
    return h.hexdigest()


def test_classifier_fingerprints_stay_what_they_were_before_fusing():
    model = tiny("llama-tiny")
    params = {n: p.detach() for n, p in model.named_parameters()}  # the tied head once, as named_parameters gives
    exclude = {"blocks.1.norm2.weight"}
    assert base_fingerprint(model, exclude) == fingerprint_before_fusing(as_stored_apart(params), exclude)
