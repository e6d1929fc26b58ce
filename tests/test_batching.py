"""Rows of one batch at their own positions: the cache, the mask and the decode batch (continuous batching)."""

from __future__ import annotations

import pytest
import torch
from conftest import varied_tiny_model

from llmscratch.generate import DecodeBatch, SamplingConfig, generate
from llmscratch.model import build_model, get_config
from llmscratch.model.attention import attention_mask
from llmscratch.utils import UserError


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 14, (n,), generator=g).tolist()
    return [torch.randint(0, 512, (k,), generator=g).tolist() for k in lengths]


def test_sliding_window_mask_by_hand():
    # queries at slots 2 and 3 of one row, window 2: each sees itself and the slot before
    mask, causal = attention_mask(torch.tensor([2, 3]), 4, None, window=2)
    assert not causal
    assert mask[0, 0].tolist() == [[False, True, True, False], [False, False, True, True]]
    # per-row positions (B, T): row 0 at slot 1, row 1 at slot 3; keys past a row's own slot are masked
    mask, _ = attention_mask(torch.tensor([[1], [3]]), 4, None)
    assert mask[:, 0, 0].tolist() == [[True, True, False, False], [True, True, True, True]]
    # a window wider than every key changes nothing
    assert attention_mask(torch.arange(4), 4, None, window=4) == (None, True)


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3"])
def test_per_row_positions_equal_separate_runs(family):
    """Two rows prefilled to different lengths, then one decode step at (B, 1) positions."""
    model = varied_tiny_model(family, 1)
    a, b = torch.randint(0, 512, (1, 9)), torch.randint(0, 512, (1, 4))
    cache = model.new_cache(2, 16)
    with torch.no_grad():
        model(a[:, :8], cache.rows(0, 1), torch.arange(8))
        model(b[:, :3], cache.rows(1, 2), torch.arange(3))
        step = model(torch.cat([a[:, 8:], b[:, 3:]]), cache, torch.tensor([[8], [3]]), last_only=True)  # (2, V)
        torch.testing.assert_close(step[0], model(a, last_only=True)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step[1], model(b, last_only=True)[0], atol=1e-5, rtol=1e-5)


def run_batch(model, arrivals, cfgs, max_batch, use_cache=True, cancel=None):
    """Requests join a DecodeBatch at the step of their arrival (when a row is free); returns their tokens."""
    batch = DecodeBatch(model, max_batch, model.config.context_length, use_cache)
    waiting = sorted(range(len(arrivals)), key=lambda i: arrivals[i][0])
    reqs, step = {}, 0
    with torch.inference_mode():
        while waiting or batch.active:
            while waiting and arrivals[waiting[0]][0] <= step and batch.free:
                i = waiting.pop(0)
                reqs[i] = batch.join(arrivals[i][1], cfgs[i])
            if cancel and step == cancel[1]:
                batch.leave(reqs[cancel[0]])
            batch.step()
            step += 1
    return [reqs[i].tokens for i in range(len(arrivals))], [reqs[i].finish for i in range(len(arrivals))]


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3"])
def test_greedy_requests_joining_at_different_steps_equal_their_solo_runs(family):
    model = varied_tiny_model(family, 2)
    ps = prompts(6, 3)
    cfgs = [SamplingConfig(max_new_tokens=n) for n in (12, 3, 20, 7, 15, 9)]
    arrivals = list(zip((0, 0, 2, 5, 6, 11), ps))
    got, finish = run_batch(model, arrivals, cfgs, max_batch=3)
    alone = [generate(model, [p], c)[0] for p, c in zip(ps, cfgs)]
    assert len({t for a in alone for t in a}) > 20  # the outputs say something
    assert got == alone
    assert finish == ["length"] * 6
    uncached, _ = run_batch(model, arrivals, cfgs, max_batch=3, use_cache=False)
    assert uncached == got


def test_stop_ids_and_cancel_free_rows_and_leave_others_unchanged():
    model = varied_tiny_model("gpt2", 4)
    ps = prompts(3, 5)
    alone = [generate(model, [p], SamplingConfig(max_new_tokens=16))[0] for p in ps]
    stop = alone[0][4]  # row 0 stops at its fifth token
    cfgs = [SamplingConfig(max_new_tokens=16, stop_ids=[stop])] + [SamplingConfig(max_new_tokens=16)] * 2
    got, finish = run_batch(model, [(0, p) for p in ps], cfgs, max_batch=2, cancel=(1, 6))
    assert got[0] == alone[0][: alone[0].index(stop) + 1] and finish[0] == "stop"  # the stop id comes last
    assert finish[1] == "cancelled" and got[1] == alone[1][: len(got[1])] and len(got[1]) < 16
    assert got[2] == alone[2] and finish[2] == "length"  # joined in a freed row


def test_seeded_sampling_in_a_batch_equals_the_request_alone():
    model = varied_tiny_model("llama", 6)
    ps = prompts(3, 7)
    cfgs = [SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=50, seed=s) for s in (1, 2, 3)]
    got, _ = run_batch(model, [(i, p) for i, p in enumerate(ps)], cfgs, max_batch=3)
    alone = [generate(model, [p], c)[0] for p, c in zip(ps, cfgs)]
    assert got == alone
    assert generate(model, [ps[0], ps[0]], cfgs[0])[0] != generate(model, [ps[0], ps[0]], cfgs[0])[1]


def test_join_refuses_what_does_not_fit():
    model = varied_tiny_model("gpt2")
    batch = DecodeBatch(model, 1, 32)
    with pytest.raises(UserError, match=r"prompt \(30 tokens\).*max_new_tokens \(5\).*32"):
        batch.join([1] * 30, SamplingConfig(max_new_tokens=5))
    with torch.inference_mode():
        batch.join([1, 2], SamplingConfig(max_new_tokens=5))
        with pytest.raises(RuntimeError, match="rows"):
            batch.join([1, 2], SamplingConfig(max_new_tokens=5))


def test_packed_linear_weights_give_the_same_logits_and_leave_the_parameters_alone():
    from llmscratch.model.base import can_pack_linear_weights, pack_linear_weights

    model = varied_tiny_model("llama", 8)
    if not can_pack_linear_weights(model):
        pytest.skip("this torch has no oneDNN linear ops")
    ids = torch.randint(0, 512, (3, 7))
    with torch.inference_mode():
        before, few, one = model(ids), model(ids[:, :2]), model(ids[:1, :1])
    names = list(model.state_dict())
    pack_linear_weights(model, rows=8)
    assert list(model.state_dict()) == names
    with torch.inference_mode():
        torch.testing.assert_close(model(ids[:, :2]), few, atol=1e-5, rtol=1e-5)  # 6 rows: the packed product
        assert torch.equal(model(ids[:1, :1]), one)  # one row and more than 8 rows: the usual product
        assert torch.equal(model(ids), before)
    loss = model(ids).sum()  # with gradients: the usual product, so training still works
    loss.backward()
    assert model.blocks[0].attn.qkv.weight.grad is not None
    pack_linear_weights(model, packed=False)
    assert "forward" not in vars(model.head)


def test_requests_joining_together_are_prefilled_one_by_one_as_alone():
    model = varied_tiny_model("gpt2", 9)
    g = torch.Generator().manual_seed(9)
    ps = [torch.randint(0, 512, (n,), generator=g).tolist() for n in (5, 5, 3, 5)]
    cfgs = [SamplingConfig(max_new_tokens=n) for n in (6, 9, 4, 0)]
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    batch = DecodeBatch(model, 4, 32)
    with torch.inference_mode():
        reqs = batch.join_many(ps, cfgs)
        assert calls == [(1, 5), (1, 5), (1, 3)]  # the request with max_new_tokens=0 is not prefilled
        while batch.active:
            batch.step()
    alone = [generate(model, [p], c)[0] for p, c in zip(ps, cfgs)]
    assert [r.tokens for r in reqs] == alone and reqs[3].tokens == [] and reqs[3].finish == "length"


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma3"])
def test_selected_positions_give_those_rows_of_the_full_logits(family):
    model = varied_tiny_model(family)
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    select = torch.zeros(2, 7, dtype=torch.bool)
    select[0, 2:5], select[1, 6] = True, True
    with torch.no_grad():
        full, picked = model(ids), model(ids, select=select)
    assert picked.shape == (4, model.config.vocab_size)
    torch.testing.assert_close(picked, full[select])


def test_a_quantized_model_joined_together_holds_the_cache_of_each_prompt_alone():
    """Same-length prompts joining at once get, row by row, the very KV cache (and tokens) of their solo runs:
    with int8 activations a last-bit difference would turn into other answers."""
    from llmscratch.model.quant import quantize_model

    torch.manual_seed(0)
    model = quantize_model(build_model(get_config("llama-tiny")).eval(), "int8", group=32, head=True)
    g = torch.Generator().manual_seed(4)
    ps = [torch.randint(0, 512, (6,), generator=g).tolist() for _ in range(3)]
    cfg = SamplingConfig(max_new_tokens=5)
    with torch.inference_mode():
        together = DecodeBatch(model, 3, 16)
        reqs = together.join_many(ps, [cfg] * 3)
        for i, p in enumerate(ps):
            alone = DecodeBatch(model, 1, 16)
            alone.join_many([p], [cfg])
            for layer in range(model.config.n_layers):
                for t, a in zip(together.cache.layer(layer), alone.cache.layer(layer)):
                    assert torch.equal(t[i, :, :6], a[0, :, :6])
        while together.active:
            together.step()
    assert [r.tokens for r in reqs] == [generate(model, [p], cfg)[0] for p in ps]
