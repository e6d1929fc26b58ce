"""The Gemma 3 model: its pieces, parity with transformers' Gemma3ForCausalLM on tiny random configs, the
sliding-window mask, and cached == uncached generation (past the window, batches with left padding)."""

from __future__ import annotations

import json

import pytest
import torch

from llmscratch.generate import SamplingConfig, generate
from llmscratch.model import build_model, config_from_dict, config_to_dict, get_config
from llmscratch.model.attention import attention_mask
from llmscratch.model.base import model_size
from llmscratch.model.gemma import Gemma, GemmaConfig, GemmaRMSNorm
from llmscratch.utils import UserError
from llmscratch.weights.hf_gemma import config_from_hf, config_to_hf, state_dict_from_hf, state_dict_to_hf
from llmscratch.weights.ours import model_from_state_dict

transformers = pytest.importorskip("transformers")

VOCAB = 96


def hf_tiny(seed: int = 0, softcap: float | None = None, scalar: int = 16, window: int = 6):
    """A tiny random transformers Gemma3ForCausalLM: 6 layers (local, local, global, ...), GQA 4/2, window 6."""
    torch.manual_seed(seed)
    cfg = transformers.Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64, sliding_window=window,
        sliding_window_pattern=3, query_pre_attn_scalar=scalar, final_logit_softcapping=softcap,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 2000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}},
        bos_token_id=2, eos_token_id=1, pad_token_id=0, attn_implementation="eager",
    )
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():  # weights larger than the default init, so that greedy picks are far from ties
        for p in model.parameters():
            p.normal_(0.0, 0.3 if p.dim() > 1 else 0.5)
    return model


def ours_from_hf(ref) -> Gemma:
    config = config_from_hf(ref.config.to_dict())
    return model_from_state_dict(config, state_dict_from_hf(dict(ref.state_dict()), config), "hf").eval()


def test_config_from_transformers_keeps_every_choice():
    ours = config_from_hf(hf_tiny(softcap=30.0, scalar=20).config.to_dict())
    assert (ours.sliding_window, ours.sliding_window_pattern, ours.query_pre_attn_scalar) == (6, 3, 20)
    assert (ours.rope_theta, ours.rope_local_theta, ours.final_logit_softcap) == (2000.0, 50.0, 30.0)
    assert [ours.is_global(i) for i in range(6)] == [False, False, True, False, False, True]
    assert config_from_hf(config_to_hf(ours)) == ours
    assert config_from_dict(json.loads(json.dumps(config_to_dict(ours)))) == ours


def test_transformers_defaults_are_the_architecture_defaults():
    hf = transformers.Gemma3TextConfig()
    ours = GemmaConfig()
    assert hf.query_pre_attn_scalar == ours.query_pre_attn_scalar
    assert hf.rope_parameters["sliding_attention"]["rope_theta"] == ours.rope_local_theta
    assert hf.rope_parameters["full_attention"]["rope_theta"] == ours.rope_theta
    assert hf.layer_types[:6] == ["sliding_attention"] * 5 + ["full_attention"]
    assert hf.rms_norm_eps == ours.rms_norm_eps


def test_gemma3_270m_preset_parameters():
    size = model_size(get_config("gemma3-270m"))
    assert size.params == 268_098_176  # google/gemma-3-270m (tied head), of which 167,772,160 embedding
    assert size.params_read_per_token == size.params  # the tied head reads the whole embedding table
    assert size.kv_values_per_token == 2 * 18 * 256  # every layer keeps every slot
    assert size.kv_values_per_token_local == 2 * 15 * 256 and size.window == 512  # 15 of 18 layers are local
    full, windowed = size.kv_cache_bytes(2), size.kv_cache_bytes_windowed(2)
    assert windowed == 2 * 256 * 2 * (3 * 32768 + 15 * 512) and windowed < full / 5


@pytest.mark.parametrize("softcap,scalar", [(None, 16), (5.0, 20)], ids=["plain", "softcap-and-query-scale"])
def test_logits_equal_transformers(softcap, scalar):
    ref = hf_tiny(softcap=softcap, scalar=scalar)
    ours = ours_from_hf(ref)
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, atol=1e-4, rtol=1e-4)
    for block in ours.blocks:  # the written-out attention path too
        block.attn.fused = False
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), ref(ids).logits, atol=1e-4, rtol=1e-4)


def test_left_padded_batch_equals_transformers():
    ref = hf_tiny(seed=3)
    ours = ours_from_hf(ref)
    ids = torch.randint(3, VOCAB, (2, 14), generator=torch.Generator().manual_seed(2))
    pad = torch.ones(2, 14, dtype=torch.bool)
    pad[1, :5] = False
    with torch.no_grad():
        theirs = ref(ids, attention_mask=pad.long()).logits
        mine = ours(ids, pad_mask=pad)
    torch.testing.assert_close(mine[:, 5:], theirs[:, 5:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mine[0], theirs[0], atol=1e-4, rtol=1e-4)


def test_greedy_generation_equals_transformers_past_the_window():
    ref = hf_tiny(seed=4)
    ours = ours_from_hf(ref)
    prompt = [5, 17, 33, 2, 60, 7, 11, 40, 9, 3]  # longer than the window of 6
    with torch.no_grad():
        theirs = ref.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, min_new_tokens=20)
    mine = generate(ours, [prompt], SamplingConfig(max_new_tokens=20))
    assert mine[0] == theirs[0, len(prompt):].tolist()


def test_export_round_trip_loads_in_transformers(tmp_path):
    ours = build_model(get_config("gemma3-tiny")).eval()
    twin = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(**config_to_hf(ours.config))).eval()
    twin.load_state_dict(state_dict_to_hf(ours), strict=False)
    twin.tie_weights()
    assert twin.config.eos_token_id is None  # transformers' generate() does not stop at its default eos 1
    ids = torch.randint(0, 512, (1, 30))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), twin(ids).logits, atol=1e-4, rtol=1e-4)


def test_sliding_window_mask_by_hand():
    mask, causal = attention_mask(torch.arange(5), 5, None, window=3)
    want = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1]])
    assert not causal and torch.equal(mask[0, 0], want.bool())
    assert attention_mask(torch.arange(3), 3, None, window=3) == (None, True)  # nothing cut: plain causal
    step, _ = attention_mask(torch.tensor([6]), 7, None, window=3)
    assert step[0, 0, 0].tolist() == [False] * 4 + [True] * 3


def test_rmsnorm_scales_by_one_plus_weight():
    norm = GemmaRMSNorm(4, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.0, 1.0, -1.0, 0.5]))
    x = torch.randn(2, 4)
    want = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-6) * torch.tensor([1.0, 2.0, 0.0, 1.5])
    torch.testing.assert_close(norm(x), want)


@pytest.mark.parametrize("seed", [0, 1])
def test_cached_equals_uncached_past_the_window_with_left_padding(seed):
    torch.manual_seed(seed)
    model = build_model(get_config("gemma3-tiny")).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (19, 4, 11)]  # window is 8
    cfg = SamplingConfig(max_new_tokens=25)
    cached = generate(model, prompts, cfg, use_cache=True)
    assert cached == generate(model, prompts, cfg, use_cache=False)
    assert cached[1] == generate(model, [prompts[1]], cfg)[0]  # a row's tokens do not depend on its batch


def test_bad_transformers_configs_are_refused():
    good = config_to_hf(get_config("gemma3-tiny"))
    with pytest.raises(UserError, match="attn_logit_softcapping"):
        config_from_hf({**good, "attn_logit_softcapping": 50.0})
    with pytest.raises(UserError, match="pattern"):
        config_from_hf({**good, "layer_types": ["full_attention", "sliding_attention"] * 2})
    with pytest.raises(UserError, match="missing"):
        state_dict_from_hf({}, get_config("gemma3-tiny"), "x")


def test_model_info_shows_the_embedding_share_and_the_windowed_cache(capsys):
    from llmscratch.cli import main

    assert main(["model", "info", "gemma3-270m"]) in (0, None)
    out = capsys.readouterr().out
    assert "268,098,176 (268.1 M), of which 167,772,160 (63%) in the 262,144-token embedding table" in out
    assert "sliding window kept as a ring buffer (512 slots in 15 of 18 layers): 217.1 MB in float32" in out
    assert "36.9 kB without the window, 6.6 kB with it" in out
