"""GGUF blocks loaded straight into quantized layers (weights/gguf_quant.py, `--quantize gguf`): each type's
re-layout against gguf's own dequantization, synthetic files against the float load, and the real files when
cached."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmscratch.model import quant_kernel
from llmscratch.model.quant import QuantLinear, dequantize_int4, dequantize_int8
from llmscratch.weights.gguf import load_gguf
from llmscratch.weights.gguf_quant import quant_linear, quant_tensors

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
from tests.test_gguf import CONFIG, TYPES, random_hf_weights, random_k_blocks, write_gguf  # noqa: E402


class FakeTensor:
    """What quant_tensors reads of a GGUFReader tensor: type, GGUF-order shape, raw bytes (rows, row bytes)."""

    def __init__(self, raw: np.ndarray, qtype, rows: int, cols: int):
        self.tensor_type, self.shape, self.name = qtype, np.array([cols, rows]), "t"
        self.data = raw.reshape(rows, -1)


def blocks_of(qtype, rows=6, cols=512, seed=0) -> FakeTensor:
    rng = np.random.default_rng(seed)
    if qtype in (Q.Q4_K, Q.Q6_K):
        return FakeTensor(random_k_blocks(rows, cols, qtype, rng), qtype, rows, cols)
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    return FakeTensor(gguf.quants.quantize(w, qtype), qtype, rows, cols)


def ours(fmt, group, q, s, m) -> torch.Tensor:
    return dequantize_int8(q, s) if fmt == "int8" else dequantize_int4(q, s, m, group)


@pytest.mark.parametrize("qtype,fmt,group,exact", [
    (Q.Q4_0, "int4", 32, True), (Q.Q4_1, "int4", 32, True), (Q.Q8_0, "int8", 32, True), (Q.Q5_0, "int8", 32, True),
    (Q.Q4_K, "int4", 32, False), (Q.Q6_K, "int8", 16, False), (Q.Q5_1, "int8", 32, False)])
def test_direct_load_equals_gguf_dequantization(qtype, fmt, group, exact):
    t = blocks_of(qtype)
    want = torch.from_numpy(gguf.quants.dequantize(t.data, qtype).reshape(6, 512).astype(np.float32))
    got_fmt, got_group, q, s, m = quant_tensors(t)
    assert (got_fmt, got_group) == (fmt, group)
    got = ours(fmt, group, q, s, m)
    if exact:  # a re-layout: the same numbers
        assert torch.equal(got, want)
    else:  # Q4_K / Q6_K: scales d * sc rounded to float16; Q5_1: requantized to int8
        assert (got - want).norm() / want.norm() < (6e-3 if qtype == Q.Q5_1 else 1.5e-3)


def test_row_concatenation_is_a_cat_and_mixed_formats_become_int8():
    a, b = quant_tensors(blocks_of(Q.Q4_1, seed=1)), quant_tensors(blocks_of(Q.Q4_1, rows=4, seed=2))
    lin = quant_linear([a, b])
    assert lin.fmt == "int4" and torch.equal(lin.qweight, torch.cat([a[2], b[2]]))
    assert torch.equal(lin.dequantized_weight(), torch.cat([ours(*a), ours(*b)]))
    c = quant_tensors(blocks_of(Q.Q8_0, rows=4, seed=3))
    mixed = quant_linear([a, c])
    assert mixed.fmt == "int8" and mixed.int8_group == 32
    want = torch.cat([ours(*a), ours(*c)])
    assert (mixed.dequantized_weight() - want).norm() / want.norm() < 6e-3


@pytest.mark.parametrize("tied", [True, False])
def test_synthetic_file_kept_quantized_matches_the_float_load(tmp_path, tied):
    from llmscratch.model.llama import LlamaConfig

    rng = np.random.default_rng(0)
    cfg = LlamaConfig(**{**CONFIG.__dict__, "tie_embeddings": tied})
    types = dict(TYPES, **({} if tied else {"output.weight": Q.Q6_K}))
    write_gguf(tmp_path / "tiny.gguf", random_hf_weights(cfg, rng), types, cfg=cfg, rng=rng)
    flt = load_gguf(tmp_path / "tiny.gguf", progress=False).model
    qm = load_gguf(tmp_path / "tiny.gguf", progress=False, keep_quantized=True).model
    assert qm.quantization["format"] == "gguf"
    layers = dict(qm.named_modules())
    assert type(layers["blocks.0.attn.qkv"]) is quant_kernel.Linear  # attn_q is F16: the layer stays float
    kinds = {n: (layers[f"blocks.{n}"].fmt, layers[f"blocks.{n}"].group) for n in ("0.ffn.gate_up", "0.ffn.down")}
    assert kinds == {"0.ffn.gate_up": ("int8", 32), "0.ffn.down": ("int8", 32)}  # Q4_K + Q6_K: mixed; Q5_0
    assert type(layers["blocks.1.ffn.gate_up"]) is quant_kernel.Linear  # F32 gate + Q4_K up: float
    assert (qm.head.fmt, qm.head.group) == (("int8", 32) if tied else ("int8", 16))  # Q8_0 embedding; Q6_K output
    for name, mod in layers.items():
        want = flt.get_submodule(name).weight.detach() if isinstance(mod, QuantLinear) else None
        if want is not None:
            assert (mod.dequantized_weight() - want).norm() / want.norm() < 6e-3, name
    assert type(qm.tok_emb).__name__ == ("QuantEmbedding" if tied else "Embedding")
    ids = torch.randint(0, cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = qm(ids), flt(ids)
        assert (a - b).abs().max() < 0.02 * b.abs().max()
        assert torch.equal(qm.tok_emb(ids), flt.tok_emb(ids))  # Q8_0 rows: the same numbers


def test_a_model_kept_quantized_saves_and_loads_back(tmp_path):
    from llmscratch.weights.ours import load_checkpoint, save_pretrained

    rng = np.random.default_rng(0)
    write_gguf(tmp_path / "tiny.gguf", random_hf_weights(CONFIG, rng), TYPES, cfg=CONFIG, rng=rng)
    qm = load_gguf(tmp_path / "tiny.gguf", progress=False, keep_quantized=True).model
    save_pretrained(qm, None, tmp_path / "saved")
    back, _, _ = load_checkpoint(tmp_path / "saved")
    assert back.quantization["format"] == "gguf" and back.quantization["layers"] == qm.quantization["layers"]
    ids = torch.randint(0, CONFIG.vocab_size, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(back(ids), qm(ids))


def test_quantize_gguf_on_another_source_is_refused():
    from llmscratch.utils import UserError
    from llmscratch.weights import load_model

    with pytest.raises(UserError, match="give a .gguf file"):
        load_model("llama-tiny", quantize="gguf")


def test_generate_and_serve_take_quantize_gguf(tmp_path, capsys):
    from llmscratch.cli import main
    from llmscratch.serve.app import load_served_model
    from llmscratch.serve.config import ServeConfig

    rng = np.random.default_rng(0)
    write_gguf(tmp_path / "tiny.gguf", random_hf_weights(CONFIG, rng), TYPES, cfg=CONFIG, rng=rng)
    main(["generate", "--model", str(tmp_path / "tiny.gguf"), "--prompt", "hello", "--max-new-tokens", "3",
          "--quantize", "gguf"])
    assert capsys.readouterr().out.strip()
    loaded = load_served_model(ServeConfig(model=str(tmp_path / "tiny.gguf"), quantize="gguf"))
    assert loaded.model.quantization["format"] == "gguf"
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", "llama-tiny", "--prompt", "hi", "--quantize", "gguf"])
    assert e.value.code == 2 and "give a .gguf file" in capsys.readouterr().err
