"""GGUF loading on small synthetic files written with gguf.GGUFWriter: un-permuting Q/K, every supported tensor
type, config and tokenizer from metadata, and clear errors for what we do not support."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmscratch.model.attention import apply_rotary
from llmscratch.model.llama import LlamaConfig, rotary_tables
from llmscratch.tokenizer.byte_level import bytes_to_unicode
from llmscratch.utils import UserError
from llmscratch.weights.gguf import load_gguf, unpermute_qk
from llmscratch.weights.hf_llama import state_dict_from_hf
from llmscratch.weights.ours import model_from_state_dict

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

CONFIG = LlamaConfig(
    vocab_size=263, context_length=32, emb_dim=256, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=256,
    rope_theta=10000.0, rms_norm_eps=1e-5, tie_embeddings=True,
)
MERGES = ["h e", "l l", "he ll", "hell o"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: interleave each head's two rotary halves."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llama_cpp_permute():
    rows, cols = 4 * 8, 3
    w = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    for n_head, n_kv in [(4, 4), (8, 4)]:  # query weights, and key weights of a GQA model (4 kv heads)
        permuted = llama_cpp_permute(w, n_head, n_kv)
        assert not np.array_equal(permuted, w)
        back = unpermute_qk(torch.from_numpy(permuted), n_kv)
        assert torch.equal(back, torch.from_numpy(w))


def test_interleaved_rope_on_permuted_rows_equals_rotate_half_on_ours():
    """Why the permutation exists: llama.cpp's interleaved RoPE on permuted q == rotate-half RoPE on HF-order q."""
    hd, T, theta = 8, 6, 10000.0
    q = torch.randn(1, 1, T, hd)
    cos, sin = rotary_tables(hd, T, theta)
    ours = apply_rotary(q, cos[None, None], sin[None, None])
    perm = torch.from_numpy(llama_cpp_permute(np.arange(hd), 1, 1))  # row order inside one head
    qp = q[..., perm]  # (1, 1, T, hd), pairs (2i, 2i+1) are HF dims (i, i + hd/2)
    angle = torch.arange(T)[:, None] * theta ** (-torch.arange(0, hd, 2) / hd)  # (T, hd/2)
    x0, x1 = qp[..., 0::2], qp[..., 1::2]
    inter = torch.stack([x0 * angle.cos() - x1 * angle.sin(), x0 * angle.sin() + x1 * angle.cos()], -1).flatten(-2)
    torch.testing.assert_close(inter, ours[..., perm], atol=1e-6, rtol=1e-6)


def gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, i, rest = hf.split(".", 3)
    block = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
             "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
             "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
             "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
             "mlp.down_proj.weight": "ffn_down.weight"}
    return f"blk.{i}.{block[rest]}"


def random_k_blocks(rows: int, cols: int, qtype, rng) -> np.ndarray:
    """Random K-quant blocks (gguf can only dequantize these) with sane fp16 scales."""
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block_size, type_size), dtype=np.uint8)
    d = np.array([0.01], dtype=np.float16).view(np.uint8)
    if qtype == Q.Q4_K:  # d, dmin at bytes 0..3
        raw[..., 0:2], raw[..., 2:4] = d, d
    else:  # Q6_K: d at the last two bytes, int8 scales before
        raw[..., -2:] = d
    return raw.reshape(rows, -1)


def write_gguf(path, tensors_hf: dict[str, np.ndarray], types: dict[str, object], arch: str = "llama",
               cfg: LlamaConfig = CONFIG, rng=None) -> dict[str, np.ndarray]:
    """Write a Llama GGUF the way llama.cpp's converter does; return the float weights a reader should get."""
    writer = gguf.GGUFWriter(path, arch)
    writer.add_context_length(cfg.context_length)
    writer.add_embedding_length(cfg.emb_dim)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.hidden_dim)
    writer.add_head_count(cfg.n_heads)
    writer.add_head_count_kv(cfg.n_kv_heads)
    writer.add_rope_freq_base(cfg.rope_theta)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(cfg.head_dim)
    writer.add_vocab_size(cfg.vocab_size)
    byte_tokens = [bytes_to_unicode()[b] for b in range(256)]
    merged = ["he", "ll", "hell", "hello"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(byte_tokens + merged + SPECIALS)
    writer.add_token_merges(MERGES)
    writer.add_token_types([1] * (256 + len(merged)) + [3] * len(SPECIALS))
    writer.add_bos_token_id(261)
    writer.add_eos_token_id(262)
    writer.add_chat_template(TEMPLATE)
    expected = {}
    for name, w in tensors_hf.items():
        g = gguf_name(name)
        qtype = types.get(g, Q.F32)
        expected[name] = w
        if g.endswith("attn_q.weight"):
            w = llama_cpp_permute(w, cfg.n_heads, cfg.n_heads)
        elif g.endswith("attn_k.weight"):
            w = llama_cpp_permute(w, cfg.n_heads, cfg.n_kv_heads)
        if qtype in (Q.Q4_K, Q.Q6_K):
            raw = random_k_blocks(*w.shape, qtype, rng)
            writer.add_tensor(g, raw, raw_dtype=qtype)
            expected[name] = gguf.quants.dequantize(raw, qtype)  # no permutation on ffn weights
        elif qtype == Q.F32:
            writer.add_tensor(g, w.astype(np.float32))
        elif qtype == Q.F16:
            writer.add_tensor(g, w.astype(np.float16))
            expected[name] = expected[name].astype(np.float16).astype(np.float32)
        elif qtype == Q.I32:
            writer.add_tensor(g, w.astype(np.int32))
        else:
            writer.add_tensor(g, gguf.quants.quantize(w, qtype), raw_dtype=qtype)
            # Rows are quantized one by one, so quantizing the un-permuted rows gives the same values.
            expected[name] = gguf.quants.dequantize(gguf.quants.quantize(expected[name], qtype), qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def random_hf_weights(cfg: LlamaConfig, rng) -> dict[str, np.ndarray]:
    from llmscratch.weights.hf_llama import expected_shapes

    out = {}
    for name, shape in expected_shapes(cfg).items():
        scale = 1.0 if len(shape) == 1 else 0.2
        out[name] = (rng.standard_normal(shape) * scale + (1.0 if len(shape) == 1 else 0.0)).astype(np.float32)
    return out


TYPES = {
    "token_embd.weight": Q.Q8_0,
    "blk.0.attn_q.weight": Q.F16, "blk.0.attn_k.weight": Q.Q4_0, "blk.0.attn_v.weight": Q.Q4_1,
    "blk.0.attn_output.weight": Q.BF16, "blk.0.ffn_gate.weight": Q.Q4_K, "blk.0.ffn_up.weight": Q.Q6_K,
    "blk.0.ffn_down.weight": Q.Q5_0,
    "blk.1.attn_q.weight": Q.Q8_0, "blk.1.attn_k.weight": Q.Q5_1, "blk.1.ffn_up.weight": Q.Q4_K,
}


@pytest.mark.parametrize("tied", [True, False])
def test_synthetic_gguf_loads_every_type_exactly(tmp_path, tied, capsys):
    rng = np.random.default_rng(0)
    cfg = LlamaConfig(**{**CONFIG.__dict__, "tie_embeddings": tied})
    types = dict(TYPES, **({} if tied else {"output.weight": Q.Q6_K}))
    expected = write_gguf(tmp_path / "tiny.gguf", random_hf_weights(cfg, rng), types, cfg=cfg, rng=rng)
    loaded = load_gguf(tmp_path / "tiny.gguf", progress=False)
    assert loaded.model.config == cfg
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in expected.items()}
    ref = model_from_state_dict(cfg, state_dict_from_hf(tensors, cfg))
    for (name, mine), (_, want) in zip(loaded.model.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(mine, want), name
    ids = torch.randint(0, cfg.vocab_size, (1, 12))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids), ref(ids))
    # Tokenizer and template from the metadata.
    tok = loaded.tokenizer
    assert tok.encode("hello") == [259]
    assert tok.encode("<|im_start|>hel", allowed_special="all") == [261, 256, 108]
    assert (tok.bos_id, tok.eos_id) == (261, 262)
    assert loaded.chat_template == TEMPLATE
    if tied:  # `model info` names the file's tensor types, as it holds them
        from llmscratch.cli import main

        main(["model", "info", str(tmp_path / "tiny.gguf")])
        shown = capsys.readouterr().out
        assert "stored as GGUF: " in shown and "Q4_K x 2" in shown and "BF16 x 1" in shown


def test_unsupported_tensor_type_is_named(tmp_path):
    rng = np.random.default_rng(1)
    weights = random_hf_weights(CONFIG, rng)
    write_gguf(tmp_path / "bad.gguf", weights, {"blk.1.ffn_norm.weight": Q.I32}, rng=rng)
    with pytest.raises(UserError, match=r"blk\.1\.ffn_norm\.weight has type I32, which is not supported"):
        load_gguf(tmp_path / "bad.gguf", progress=False)


def test_unsupported_architecture_is_named(tmp_path):
    rng = np.random.default_rng(2)
    write_gguf(tmp_path / "falcon.gguf", random_hf_weights(CONFIG, rng), {}, arch="falcon", rng=rng)
    with pytest.raises(UserError, match=r"architecture 'falcon' is not supported"):
        load_gguf(tmp_path / "falcon.gguf", progress=False)


def test_not_a_gguf_file(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match="not a readable GGUF"):
        load_gguf(tmp_path / "x.gguf")
    with pytest.raises(UserError, match="not found"):
        load_gguf(tmp_path / "missing.gguf")


def test_a_cut_gguf_file_is_one_clear_error(tmp_path):
    """Our reader on a file cut anywhere (metadata, tensor table, tensor data): a UserError, never a crash."""
    rng = np.random.default_rng(3)
    write_gguf(tmp_path / "whole.gguf", random_hf_weights(CONFIG, rng), {}, rng=rng)
    whole = (tmp_path / "whole.gguf").read_bytes()
    for cut in (3, 16, 40, 200, len(whole) // 2, len(whole) - 1):
        (tmp_path / "cut.gguf").write_bytes(whole[:cut])
        with pytest.raises(UserError, match="not a readable GGUF"):
            load_gguf(tmp_path / "cut.gguf", progress=False)
    (tmp_path / "v1.gguf").write_bytes(b"GGUF" + (1).to_bytes(4, "little") + whole[8:])
    with pytest.raises(UserError, match="version 1 is not supported"):
        load_gguf(tmp_path / "v1.gguf", progress=False)
    (tmp_path / "big.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "big") + whole[8:])
    with pytest.raises(UserError, match="big-endian GGUF files are not supported"):
        load_gguf(tmp_path / "big.gguf", progress=False)
