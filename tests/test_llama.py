"""The Llama model: rotary embeddings, RMSNorm, presets, and parity with transformers' LlamaForCausalLM."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from llmscratch.generate import SamplingConfig, generate
from llmscratch.model import build_model, config_from_dict, config_to_dict, get_config
from llmscratch.model.attention import apply_rotary
from llmscratch.model.base import empty_model
from llmscratch.model.llama import Llama, RMSNorm, rotary_tables
from llmscratch.utils import UserError
from llmscratch.weights.hf_llama import config_from_hf, config_to_hf, state_dict_from_hf, state_dict_to_hf
from llmscratch.weights.ours import model_from_state_dict

transformers = pytest.importorskip("transformers")

VOCAB = 96


def hf_tiny(tied: bool, seed: int = 0, vocab: int = VOCAB):
    """A tiny random transformers LlamaForCausalLM with grouped-query attention (4 query heads, 2 kv heads)."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rope_theta=500.0, rms_norm_eps=1e-5,
        tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # weights larger than the default init, so that greedy picks are far from ties
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    return model


def load_hf_tensors(config, tensors) -> Llama:
    """Our Llama holding Hugging Face tensors, the way every loader builds one."""
    return model_from_state_dict(config, state_dict_from_hf(tensors, config))


def ours_from_hf(ref) -> Llama:
    return load_hf_tensors(config_from_hf(ref.config.to_dict()), dict(ref.state_dict()))


def test_rotary_matches_reference_formula():
    """Rotate-half RoPE: dims i and i + hd/2 form a pair rotated by angle pos * theta^(-2i/hd)."""
    hd, T, theta = 8, 5, 500.0
    x = torch.randn(1, 2, T, hd, dtype=torch.float64)
    cos, sin = rotary_tables(hd, T, theta)
    got = apply_rotary(x, cos[None, None].double(), sin[None, None].double())
    want = torch.empty_like(x)
    for p in range(T):
        for i in range(hd // 2):
            a = p * theta ** (-2 * i / hd)
            x1, x2 = x[..., p, i], x[..., p, i + hd // 2]
            want[..., p, i] = x1 * math.cos(a) - x2 * math.sin(a)
            want[..., p, i + hd // 2] = x1 * math.sin(a) + x2 * math.cos(a)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_rmsnorm_matches_formula():
    norm = RMSNorm(6, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
    x = torch.randn(3, 6)
    want = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * torch.arange(1.0, 7.0)
    torch.testing.assert_close(norm(x), want)


def test_smollm2_preset_parameter_counts():
    with torch.device("meta"):
        small = build_model(get_config("smollm2-135m"))
        medium = build_model(get_config("smollm2-360m"))
    assert small.num_params() == 134_515_008  # transformers' count for HuggingFaceTB/SmolLM2-135M (tied)
    assert medium.num_params() == 361_821_120  # and for SmolLM2-360M


def test_config_round_trip_and_tiny_preset():
    cfg = get_config("llama-tiny")
    assert cfg.family == "llama" and cfg.head_dim == cfg.emb_dim // cfg.n_heads and cfg.n_kv_heads < cfg.n_heads
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg


@pytest.mark.parametrize("tied", [True, False])
def test_logits_match_transformers(tied):
    ref = hf_tiny(tied)
    ours = ours_from_hf(ref)
    assert (ours.head.weight is ours.tok_emb.weight) == tied
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():  # float32 sums in other orders: up to 1.04e-5 apart on an AMD EPYC
        torch.testing.assert_close(ours(ids), ref(ids).logits, atol=3e-5, rtol=0)
    for block in ours.blocks:  # the written-out attention path too
        block.attn.fused = False
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, atol=3e-5, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
def test_greedy_generation_matches_transformers_with_and_without_cache(tied):
    ref = hf_tiny(tied, seed=1)
    ours = ours_from_hf(ref)
    prompt = [5, 17, 33, 8, 61]
    cfg = SamplingConfig(max_new_tokens=20)
    cached = generate(ours, [prompt], cfg, use_cache=True)[0]
    uncached = generate(ours, [prompt], cfg, use_cache=False)[0]
    with torch.no_grad():
        want = ref.generate(
            torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None,
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        )[0, len(prompt):].tolist()
    assert cached == uncached == want
    assert len(set(want)) > 3  # a real sequence, not one token repeated


def test_left_padded_batch_matches_single_prompts():
    ref = hf_tiny(False, seed=2)
    ours = ours_from_hf(ref)
    prompts = [[3, 9, 27, 81 % VOCAB, 40, 41, 42], [11, 12], [50, 51, 52, 53]]
    cfg = SamplingConfig(max_new_tokens=12)
    batch = generate(ours, prompts, cfg)
    singles = [generate(ours, [p], cfg)[0] for p in prompts]
    assert batch == singles
    # And the padded forward of the longest-minus-padding row equals transformers with the same mask.
    L = max(map(len, prompts))
    ids = torch.zeros(len(prompts), L, dtype=torch.long)
    mask = torch.zeros(len(prompts), L, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, L - len(p):] = torch.tensor(p)
        mask[i, L - len(p):] = True
    pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        mine = ours(ids, pad_mask=mask)
        theirs = ref(ids, attention_mask=mask.long(), position_ids=pos).logits
    torch.testing.assert_close(mine[mask], theirs[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("tied", [True, False])
def test_save_pretrained_folder_imports_and_exports_back(tmp_path, tied):
    ref = hf_tiny(tied, seed=3)
    ref.save_pretrained(tmp_path)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    model = load_hf_tensors(config_from_hf(hf_config), load_file(tmp_path / "model.safetensors"))
    ids = torch.randint(0, VOCAB, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), ref(ids).logits, atol=1e-5, rtol=0)
    # Export: transformers accepts our tensors and config strictly and computes the same logits.
    back = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config_to_hf(model.config))).eval()
    missing, unexpected = back.load_state_dict(state_dict_to_hf(model), strict=False)
    assert not unexpected and set(missing) <= ({"lm_head.weight"} if tied else set())
    if tied:
        back.tie_weights()
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, ref(ids).logits, atol=1e-5, rtol=0)


def test_missing_or_misshapen_tensor_is_a_clear_error():
    ref = hf_tiny(True)
    cfg = config_from_hf(ref.config.to_dict())
    tensors = dict(ref.state_dict())
    del tensors["model.layers.1.self_attn.k_proj.weight"]
    with pytest.raises(UserError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight is missing"):
        load_hf_tensors(cfg, tensors)
    tensors = dict(ref.state_dict())
    tensors["model.norm.weight"] = torch.ones(31)
    with pytest.raises(UserError, match=r"model\.norm\.weight has shape \(31,\), expected \(32,\)"):
        load_hf_tensors(cfg, tensors)


def test_unsupported_hf_config_features_are_refused():
    base = hf_tiny(True).config.to_dict()
    with pytest.raises(UserError, match="llama3"):
        config_from_hf({**base, "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}})
    with pytest.raises(UserError, match="attention_bias"):
        config_from_hf({**base, "attention_bias": True})
    with pytest.raises(UserError, match="not a Llama"):
        config_from_hf({**base, "model_type": "mistral"})


def test_empty_model_and_dtype_changes_keep_float32_rotary_tables():
    cfg = get_config("llama-tiny")
    model = empty_model(cfg)
    assert model.head.weight is model.tok_emb.weight and not any(p.is_meta for p in model.parameters())
    cos, _ = rotary_tables(cfg.head_dim, cfg.context_length, cfg.rope_theta)
    assert torch.equal(model.rope.cos, cos)
    half = build_model(cfg).to(torch.bfloat16)
    assert half.rope.cos.dtype == torch.float32 and torch.equal(half.rope.cos, cos)
    out = half(torch.randint(0, cfg.vocab_size, (1, 6)))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def byte_tokenizer(vocab_size: int):
    """A byte-level tokenizer (smollm pre-tokenizer) filling `vocab_size` ids: 256 bytes, merges, ChatML specials."""
    from llmscratch.tokenizer import Tokenizer
    from llmscratch.tokenizer.byte_level import bytes_to_unicode

    byte = [bytes_to_unicode()[b] for b in range(256)]
    merged, merges, specials = [], [], ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    for a, b in [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "w")][: vocab_size - 256 - len(specials)]:
        merged.append(a + b)
        merges.append(f"{a} {b}")
    tokens = byte + merged + specials
    return Tokenizer.from_vocab_and_merges(
        tokens, merges, {t: tokens.index(t) for t in specials}, pre="smollm",
        bos_id=tokens.index("<|im_start|>"), eos_id=tokens.index("<|im_end|>"),
    )


def test_load_model_reads_a_hugging_face_llama_folder(tmp_path):
    from llmscratch.tokenizer.hf_json import write_hf_tokenizer
    from llmscratch.weights import load_model

    ref = hf_tiny(True, seed=4, vocab=263)
    ref.save_pretrained(tmp_path)
    tok = byte_tokenizer(263)
    template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    write_hf_tokenizer(tok, tmp_path, 64, template)
    loaded = load_model(tmp_path)
    assert type(loaded.model) is Llama and loaded.model.config.n_kv_heads == 2
    assert loaded.chat_template == template and loaded.tokenizer.encode("hello") == tok.encode("hello")
    ids = torch.tensor([tok.encode("<|im_start|>hello world", allowed_special="all")])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids), ref(ids).logits, atol=1e-5, rtol=0)


def test_export_hf_folder_loads_in_transformers(tmp_path):
    from llmscratch.weights.hf import export_hf

    cfg = get_config("llama-tiny", vocab_size=263, tie_embeddings=False)
    torch.manual_seed(5)
    model = build_model(cfg).eval()
    tok = byte_tokenizer(263)
    export_hf(model, tok, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    text = "hello world 123, hello!"
    assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, model(ids), atol=1e-5, rtol=0)
