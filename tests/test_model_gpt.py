"""The GPT-2 model core: attention paths, KV cache, padding, dropout, sizes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmscratch.generate import SamplingConfig, generate
from llmscratch.model import GPT, build_model, config_from_dict, config_to_dict, get_config
from llmscratch.model.attention import attention_fused, attention_manual, attention_mask
from llmscratch.model.base import huge_pages_available, model_size, move_to_huge_pages, set_weight_layout


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    """A tiny GPT with weights large enough that greedy choices are far from ties."""
    torch.manual_seed(seed)
    model = build_model(get_config("gpt2-tiny", **overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.3)
            elif "bias" in name:
                p.normal_(0.0, 0.1)
    return model.eval()


def set_fused(model: GPT, fused: bool) -> None:
    for block in model.blocks:
        block.attn.fused = fused


def test_gpt2_124m_sizes():
    size = model_size(get_config("gpt2-124m"))
    assert size.params == 124_439_808  # the published GPT-2 small count (tied head)
    # per token: everything but the position table (one row read) and the token table (read whole as the head)
    assert size.params_read_per_token == 124_439_808 - 1024 * 768 + 768
    assert size.kv_cache_bytes(4) == 2 * 12 * 768 * 1024 * 4
    assert model_size(tiny_gpt()).params == tiny_gpt().num_params()


@pytest.mark.parametrize("kv_heads_differ", [False, True])
def test_manual_and_fused_attention_agree(kv_heads_differ):
    torch.manual_seed(0)
    B, nh, T, hd = 2, 4, 7, 8
    nkv = 2 if kv_heads_differ else nh
    q = torch.randn(B, nh, T, hd)
    k, v = torch.randn(B, nkv, T, hd), torch.randn(B, nkv, T, hd)
    pad = torch.ones(B, T, dtype=torch.bool)
    pad[1, :3] = False  # second row left-padded
    for mask, causal in [(None, True), attention_mask(torch.arange(T), T, pad)]:
        a = attention_manual(q, k, v, mask, causal)
        b = attention_fused(q, k, v, mask, causal)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_model_manual_and_fused_paths_give_same_logits():
    model = tiny_gpt()
    ids = torch.randint(0, 512, (3, 20))
    pad = torch.ones(3, 20, dtype=torch.bool)
    pad[0, :5] = False
    for pad_mask in (None, pad):
        set_fused(model, True)
        fused = model(ids, pad_mask=pad_mask)
        set_fused(model, False)
        manual = model(ids, pad_mask=pad_mask)
        torch.testing.assert_close(fused, manual, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_cache_chunks_equal_full_forward(fused):
    """Prefill in two chunks and then single tokens: the same logits as one full forward."""
    model = tiny_gpt(1)
    set_fused(model, fused)
    ids = torch.randint(0, 512, (2, 12))
    full = model(ids)
    cache = model.new_cache(2, 16)
    parts = [
        model(ids[:, :5], cache, torch.arange(5)),
        model(ids[:, 5:9], cache, torch.arange(5, 9)),
        *(model(ids[:, t : t + 1], cache, torch.tensor([t])) for t in range(9, 12)),
    ]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_left_padding_does_not_change_real_tokens():
    model = tiny_gpt(2)
    ids = torch.randint(0, 512, (1, 9))
    alone = model(ids)
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), ids], dim=1)  # (1, 13)
    pad = torch.ones(1, 13, dtype=torch.bool)
    pad[0, :4] = False
    out = model(padded, pad_mask=pad)
    torch.testing.assert_close(out[:, 4:], alone, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()  # padding queries stay finite


@pytest.mark.parametrize("prompt_len,new", [(1, 1), (3, 10), (9, 25), (30, 34)])
def test_cached_and_uncached_greedy_tokens_identical(prompt_len, new):
    model = tiny_gpt(3)
    prompt = torch.randint(0, 512, (prompt_len,), generator=torch.Generator().manual_seed(prompt_len)).tolist()
    cfg = SamplingConfig(max_new_tokens=new)
    with_cache = generate(model, [prompt], cfg, use_cache=True)
    without = generate(model, [prompt], cfg, use_cache=False)
    assert with_cache == without
    assert len(with_cache[0]) == new


@pytest.mark.parametrize("use_cache", [True, False])
def test_batch_with_padding_equals_single_prompt_runs(use_cache):
    model = tiny_gpt(4)
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (6, 1, 13, 9)]
    cfg = SamplingConfig(max_new_tokens=15)
    batched = generate(model, prompts, cfg, use_cache=use_cache)
    singles = [generate(model, [p], cfg, use_cache=use_cache)[0] for p in prompts]
    assert batched == singles
    other = generate(model, prompts, cfg, use_cache=not use_cache)
    assert batched == other


def test_dropout_only_in_training():
    model = tiny_gpt(5, dropout=0.5)
    ids = torch.randint(0, 512, (2, 10))
    model.train()
    assert not torch.allclose(model(ids), model(ids))  # dropout draws differ
    model.eval()
    torch.testing.assert_close(model(ids), model(ids))
    no_dropout = tiny_gpt(5, dropout=0.0)
    torch.testing.assert_close(model(ids), no_dropout(ids))


def test_generate_from_a_training_model_uses_eval_mode_and_restores_it():
    model = tiny_gpt(6, dropout=0.5)
    reference = tiny_gpt(6, dropout=0.0)
    prompt = [[1, 2, 3]]
    cfg = SamplingConfig(max_new_tokens=12)
    model.train()
    assert generate(model, prompt, cfg) == generate(reference, prompt, cfg)
    assert model.training


def test_forward_past_context_is_an_error():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="context length 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the model's context length"):
        model.new_cache(1, 65)


def test_config_dict_round_trip():
    config = get_config("gpt2-small-demo", dropout=0.1)
    again = config_from_dict(config_to_dict(config))
    assert again == config
    with pytest.raises(ValueError, match="unknown gpt2 config fields: colour"):
        config_from_dict({**config_to_dict(config), "colour": "red"})
    assert dataclasses.replace(config, n_heads=3).head_dim == 64


def test_weight_layout_changes_memory_order_only():
    model = tiny_gpt(7)
    ids = torch.randint(0, 512, (2, 10))
    before = model(ids)
    shapes = {n: t.shape for n, t in model.state_dict().items()}
    params = {n: p for n, p in model.named_parameters()}
    set_weight_layout(model, transposed=True)
    assert not model.blocks[0].attn.qkv.weight.is_contiguous()
    assert model.blocks[0].attn.qkv.weight.t().is_contiguous()  # stored (in, out)
    assert model.head.weight is model.tok_emb.weight  # still tied
    assert {n: p for n, p in model.named_parameters()} == params  # the same parameter objects
    assert {n: t.shape for n, t in model.state_dict().items()} == shapes
    torch.testing.assert_close(model(ids), before, atol=1e-5, rtol=1e-5)
    assert generate(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=8)) == generate(
        tiny_gpt(7), [[1, 2, 3]], SamplingConfig(max_new_tokens=8)
    )
    set_weight_layout(model, transposed=False)
    assert all(p.is_contiguous() for p in model.parameters())
    torch.testing.assert_close(model(ids), before, atol=1e-5, rtol=1e-5)


def test_huge_pages_move_keeps_names_values_and_ties():
    if not huge_pages_available():
        pytest.skip("this machine gives no transparent huge pages (not Linux, or THP set to never)")
    model = tiny_gpt(7).eval()
    ids = torch.randint(0, 512, (2, 10))
    before = model(ids)
    params = {n: p for n, p in model.named_parameters()}
    state = {n: t.clone() for n, t in model.state_dict().items()}
    moved = move_to_huge_pages(model, min_bytes=1)
    assert moved >= sum(p.numel() * 4 for p in params.values() if p is not model.head.weight)
    assert {n: p for n, p in model.named_parameters()} == params  # the same parameter objects
    assert model.head.weight is model.tok_emb.weight  # still tied
    assert len({p.untyped_storage().data_ptr() for p in model.parameters()}) == 1  # all in the one region
    assert min(p.data_ptr() for p in model.parameters()) % (2 << 20) == 0  # which starts on a 2 MB boundary
    assert all(torch.equal(t, state[n]) for n, t in model.state_dict().items())
    assert torch.equal(model(ids), before)
    assert generate(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=8)) == generate(
        tiny_gpt(7), [[1, 2, 3]], SamplingConfig(max_new_tokens=8))


def test_huge_pages_keep_the_transposed_layout():
    if not huge_pages_available():
        pytest.skip("this machine gives no transparent huge pages (not Linux, or THP set to never)")
    model = set_weight_layout(tiny_gpt(7).eval(), transposed=True)
    ids = torch.randint(0, 512, (2, 10))
    before = model(ids)
    strides = {n: p.stride() for n, p in model.named_parameters()}
    assert move_to_huge_pages(model, min_bytes=1) > 0
    assert {n: p.stride() for n, p in model.named_parameters()} == strides  # still stored (in, out)
    region = model.head.weight.untyped_storage().data_ptr()
    assert model.blocks[0].attn.qkv.weight.untyped_storage().data_ptr() == region
    assert torch.equal(model(ids), before)


def test_huge_pages_move_nothing_when_the_region_cannot_be_made(monkeypatch):
    import mmap

    def refuse(*args, **kwargs):
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(mmap, "mmap", refuse)
    model = tiny_gpt(7)
    pointers = [p.data_ptr() for p in model.parameters()]
    assert move_to_huge_pages(model, min_bytes=1) == 0
    assert [p.data_ptr() for p in model.parameters()] == pointers


def test_huge_pages_move_nothing_where_the_system_says_never(tmp_path, monkeypatch):
    from llmscratch.model import base

    setting = tmp_path / "enabled"
    setting.write_text("always madvise [never]\n")
    monkeypatch.setattr(base, "_THP_SETTING", setting)
    model = tiny_gpt(7)
    pointers = [p.data_ptr() for p in model.parameters()]
    assert not huge_pages_available() and move_to_huge_pages(model, min_bytes=1) == 0
    assert [p.data_ptr() for p in model.parameters()] == pointers


def test_model_info_cli(capsys):
    from llmscratch.cli import main

    main(["model", "info", "gpt2-124m"])
    out = capsys.readouterr().out
    assert "parameters: 124,439,808 (124.4 M)" in out
    assert "weights: 497.8 MB in float32, 248.9 MB in bfloat16" in out
    assert "KV cache at full context (1024 tokens, batch 1): 75.5 MB in float32, 37.7 MB in bfloat16" in out
    assert "read per generated token (batch 1): 494.6 MB in float32" in out
    with pytest.raises(SystemExit) as e:
        main(["model", "info", "gpt2-9000m"])
    assert e.value.code == 2
    assert "neither a preset" in capsys.readouterr().err
