"""The decode step's shortcuts equal their written-out references: one-query attention, rotary by roll, fused
RMSNorm; and a model decodes the same tokens through either path."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from llmscratch.generate import SamplingConfig, compile_decoding, generate
from llmscratch.model import build_model, get_config
from llmscratch.model.attention import apply_rotary, attention_manual, attention_mask, attention_one_query, rotate
from llmscratch.model.gemma import GemmaRMSNorm
from llmscratch.model.llama import RMSNorm, rotary_tables, signed_sin


@pytest.mark.parametrize("nh, nkv", [(4, 4), (6, 2), (4, 1)])
def test_one_query_attention_equals_the_written_out_one(nh, nkv):
    torch.manual_seed(0)
    B, S, hd = 3, 9, 8
    q, k, v = torch.randn(B, nh, 1, hd), torch.randn(B, nkv, S, hd), torch.randn(B, nkv, S, hd)
    pad = torch.ones(B, S, dtype=torch.bool)
    pad[1, :4] = False  # a left-padded row
    per_row = torch.tensor([[S - 1], [S - 3], [S - 2]])  # each row at its own slot (keys after it masked)
    masks = [None, attention_mask(torch.tensor([S - 1]), S, pad)[0], attention_mask(per_row, S, None)[0]]
    for mask in masks:
        want = attention_manual(q, k, v, mask, is_causal=False)
        torch.testing.assert_close(attention_one_query(q, k, v, mask), want, atol=1e-6, rtol=1e-5)


def test_rotate_with_the_signed_table_equals_rotate_half():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 16)
    cos, sin = rotary_tables(16, 7, 10000.0)
    want = apply_rotary(x, cos[None, None], sin[None, None])
    assert torch.equal(rotate(x, cos[None, None], signed_sin(sin)[None, None]), want)


@pytest.mark.parametrize("norm_class", [RMSNorm, GemmaRMSNorm])
def test_fused_rmsnorm_equals_the_written_out_form(norm_class):
    torch.manual_seed(0)
    norm = norm_class(48, eps=1e-6)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 5, 48) * 3
    torch.testing.assert_close(norm(x), norm.reference_forward(x), atol=1e-6, rtol=1e-6)
    with torch.no_grad():  # inference on a few rows: our C++ op where the kernel builds
        torch.testing.assert_close(norm(x[:, :1]), norm.reference_forward(x[:, :1]), atol=1e-6, rtol=1e-6)
    half = x.bfloat16()  # other dtypes take the written-out form
    assert torch.equal(norm.to(torch.bfloat16)(half), norm.reference_forward(half))


def _inference_ops():
    from llmscratch.model import quant_kernel

    with torch.no_grad():
        ops = quant_kernel.inference_ops(torch.zeros(1))
    if ops is None:
        pytest.skip(f"no C++ kernel here: {quant_kernel.status()}")
    return ops


def _model_and_two_prefilled_caches(preset: str, length: int, prefill: int, slots: int):
    """A tiny eval model, ids (2, length), and two caches of `slots` slots holding the same first `prefill` tokens."""
    torch.manual_seed(0)
    model = build_model(get_config(preset)).eval()
    ids = torch.randint(0, 512, (2, length))
    caches = [model.new_cache(2, slots), model.new_cache(2, slots)]
    with torch.no_grad():
        for cache in caches:
            model(ids[:, :prefill], cache, torch.arange(prefill))
    return model, ids, caches


def test_our_swiglu_op_equals_torch():
    torch.manual_seed(0)
    gate_up = torch.randn(3, 2, 2 * 40) * 4  # 6 rows
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(_inference_ops().silu_mul(gate_up), F.silu(gate) * up, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
@pytest.mark.parametrize("per_row", [False, True])
def test_our_decode_attention_op_equals_the_pytorch_step(monkeypatch, preset, per_row):
    """Decode steps through our C++ attention (rotary, cache write, one query) give PyTorch's logits and write the
    same cache, for shared and per-row positions (rows at different slots), with and without rotary (GPT-2)."""
    from llmscratch.model import quant_kernel

    _inference_ops()
    model, ids, caches = _model_and_two_prefilled_caches(preset, length=14, prefill=8, slots=16)
    with torch.no_grad():
        for t in range(8, 14):
            pos = torch.tensor([[t], [t - 2]]) if per_row else torch.tensor([t])  # per row: row 1 two slots behind
            want_step = model(ids[:, t : t + 1], caches[0], pos)
            monkeypatch.setattr(quant_kernel, "INFERENCE_OPS", False)
            ref_step = model(ids[:, t : t + 1], caches[1], pos)
            monkeypatch.undo()
            torch.testing.assert_close(want_step, ref_step, atol=1e-5, rtol=1e-5)
        for i in range(model.config.n_layers):
            for ours, ref in zip(caches[0].layer(i), caches[1].layer(i)):
                torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("nh, nkv, hd", [(9, 3, 64), (4, 4, 32), (4, 1, 16), (8, 1, 32), (12, 2, 80), (6, 2, 8)])
def test_our_decode_attention_op_equals_softmax_attention_for_any_head_grouping(nh, nkv, hd):
    """The op alone against the written-out step (rotate q and k, write k and v at each row's slot, softmax over
    slots 0..pos): head groupings from one head per kv head to 12 (tasks of up to 4 heads), head sizes that take
    the vectorized path (multiples of 16) and one that does not, rows at different slots, with and without rotary."""
    ops = _inference_ops()
    torch.manual_seed(0)
    B, S, pos = 2, 48, torch.tensor([5, 37])  # 6 and 38 slots seen: whole and partial 16-wide exp blocks
    qkv = torch.randn(B, (nh + 2 * nkv) * hd) * 2
    for rotary in (True, False):
        kc, vc = torch.randn(B, nkv, S, hd), torch.randn(B, nkv, S, hd)
        cos, ssin = (torch.randn(B, hd), torch.randn(B, hd)) if rotary else (torch.empty(0), torch.empty(0))
        want_k, want_v = kc.clone(), vc.clone()
        y = ops.decode_attention(qkv, cos, ssin, kc, vc, pos, nh, nkv)  # (B, nh hd)
        q, k, v = qkv.view(B, nh + 2 * nkv, 1, hd).split([nh, nkv, nkv], dim=1)  # (B, heads, 1, hd)
        if rotary:
            q, k = (rotate(t, cos[:, None, None], ssin[:, None, None]) for t in (q, k))
        for b in range(B):
            n = int(pos[b]) + 1
            want_k[b, :, n - 1], want_v[b, :, n - 1] = k[b, :, 0], v[b, :, 0]
            keys = want_k[b, :, :n].repeat_interleave(nh // nkv, dim=0)  # (nh, n, hd)
            vals = want_v[b, :, :n].repeat_interleave(nh // nkv, dim=0)
            w = torch.softmax(q[b] @ keys.transpose(1, 2) / hd**0.5, dim=-1)  # (nh, 1, n)
            torch.testing.assert_close(y[b].view(nh, hd), (w @ vals)[:, 0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kc, want_k, atol=1e-6, rtol=1e-6)  # the rotation may round differently (FMA)
        assert torch.equal(vc, want_v)


@pytest.mark.parametrize("preset", ["llama-tiny", "gemma3-tiny", "gpt2-tiny"])
def test_decode_steps_equal_a_full_forward_on_every_path(preset):
    """Prefill then single-token steps (the one-query path) give the logits of one full forward (the fused
    path), and of the written-out attention."""
    torch.manual_seed(0)
    model = build_model(get_config(preset)).eval()
    ids = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        full = model(ids)
        for fused in (True, False):
            for block in model.blocks:
                block.attn.fused = fused
            cache = model.new_cache(2, 16)
            steps = [model(ids[:, :6], cache, torch.arange(6))]
            steps += [model(ids[:, t : t + 1], cache, torch.tensor([t])) for t in range(6, 12)]
            torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["llama-tiny", "gemma3-tiny", "gpt2-tiny"])
@pytest.mark.parametrize("per_row", [False, True])
def test_the_whole_cache_step_of_compiled_decoding_equals_the_eager_step(monkeypatch, preset, per_row):
    """What torch.compile traces (every cache slot read, later ones masked), run eagerly: the same logits as the
    usual step, for shared and per-row positions and Gemma's sliding windows (window 8 < 20 slots)."""
    model, ids, caches = _model_and_two_prefilled_caches(preset, length=20, prefill=12, slots=24)
    with torch.no_grad():
        for t in range(12, 20):
            pos = torch.tensor([[t], [t]]) if per_row else torch.tensor([t])
            want = model(ids[:, t : t + 1], caches[0], pos)
            monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
            got = model(ids[:, t : t + 1], caches[1], pos)
            monkeypatch.undo()
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not os.environ.get("LLMSCRATCH_SLOW"), reason="slow (a minute of compiling): set LLMSCRATCH_SLOW=1")
def test_compiled_decoding_generates_the_eager_tokens():
    torch.manual_seed(0)
    model = build_model(get_config("llama-tiny")).eval()
    prompt, cfg = list(range(3, 12)), SamplingConfig(max_new_tokens=12)
    eager = generate(model, [prompt], cfg)
    compile_decoding(model)
    assert generate(model, [prompt], cfg) == eager
    compile_decoding(model, enabled=False)
    assert "_compiled_decode_step" not in model.__dict__


@pytest.mark.skipif(not os.environ.get("LLMSCRATCH_SLOW"), reason="slow (a minute of compiling): set LLMSCRATCH_SLOW=1")
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_compiled_quantized_decoding_generates_the_eager_tokens(fmt):
    from llmscratch.model import quant_kernel
    from llmscratch.model.quant import quantize_model

    if quant_kernel.kernel() is None:
        pytest.skip(f"no quantization kernel here: {quant_kernel.status()}")
    torch.manual_seed(0)
    model = quantize_model(build_model(get_config("llama-tiny")).eval(), fmt, group=32, head=True)
    prompt, cfg = list(range(3, 12)), SamplingConfig(max_new_tokens=12)
    eager = generate(model, [prompt], cfg)
    compile_decoding(model)
    assert generate(model, [prompt], cfg) == eager


def test_float_inference_never_compiles_the_kernels_itself(monkeypatch, tmp_path):
    """On a machine without a build, a float model's decode uses PyTorch's ops rather than stopping for a minute
    to compile (a training run's text samples); `prepare_decoding` (the decoding commands) is what builds."""
    from llmscratch.model import quant_kernel

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "no-builds-here"))
    monkeypatch.setattr(quant_kernel, "_module", None)
    monkeypatch.setattr(quant_kernel, "_status", "not built yet")
    monkeypatch.setattr(quant_kernel, "_looked", False)
    monkeypatch.setattr(quant_kernel, "_compile", lambda *a: pytest.fail("a build was started"))
    model = build_model(get_config("llama-tiny")).eval()
    assert generate(model, [[1, 2, 3]], SamplingConfig(max_new_tokens=3))
    assert quant_kernel._module is None and quant_kernel._status == "not built yet"
    assert not (tmp_path / "no-builds-here").exists()


def _has_kernel() -> bool:
    from llmscratch.model import quant_kernel

    return quant_kernel.kernel() is not None


def _steps_with(model, one_call: bool, monkeypatch):
    """Logits of a prefill and three decode steps (two rows at their own positions) and the cache after them,
    with the Llama blocks run by one C++ call (`one_call`) or one by one in Python; and how many steps the
    one-call path took."""
    from llmscratch.model.llama import Llama

    used = []
    real = getattr(Llama._decode_layers, "__wrapped__", Llama._decode_layers)  # not an earlier call's spy

    def spy(self, x, ctx):
        y = real(self, x, ctx) if one_call else None
        used.append(y is not None)
        return y

    spy.__wrapped__ = real
    monkeypatch.setattr(Llama, "_decode_layers", spy)
    cache = model.new_cache(2, 16)
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = [model(ids[:, :6], cache, torch.arange(6))]
        out += [model(ids[:, t : t + 1], cache, torch.tensor([[t], [t - 1]])) for t in range(6, 9)]
    return out + [t for i in range(model.config.n_layers) for t in cache.layer(i)], sum(used)


@pytest.mark.skipif(not _has_kernel(), reason="no C++ compiler: no decode ops")
@pytest.mark.parametrize("fmt", [None, "int8", "int4"])
def test_the_one_call_decode_layers_equal_the_blocks_to_the_bit(monkeypatch, fmt):
    from llmscratch.model.quant import quantize_model

    torch.manual_seed(0)
    model = build_model(get_config("llama-tiny")).eval()
    if fmt:
        quantize_model(model, fmt, group=32)
    ours, steps = _steps_with(model, True, monkeypatch)
    assert steps == 3  # every decode step took the one call (the prefill did not)
    ref, _ = _steps_with(model, False, monkeypatch)
    assert all(torch.equal(a, b) for a, b in zip(ours, ref))


@pytest.mark.skipif(not _has_kernel(), reason="no C++ compiler: no decode ops")
def test_hooked_or_replaced_layers_keep_the_blocks_path(monkeypatch):
    from llmscratch.model.lora import apply_lora

    torch.manual_seed(0)
    model = build_model(get_config("llama-tiny")).eval()
    seen = []
    handle = model.blocks[1].ffn.down.register_forward_hook(lambda m, a, out: seen.append(out.shape))
    assert _steps_with(model, True, monkeypatch)[1] == 0 and len(seen) == 4  # the hook ran at every step
    handle.remove()
    apply_lora(model, rank=2, alpha=4)
    assert _steps_with(model, True, monkeypatch)[1] == 0


@pytest.mark.skipif(not _has_kernel(), reason="no C++ compiler: no decode ops")
def test_the_one_call_plan_is_kept_and_follows_changes_to_the_model(monkeypatch):
    from llmscratch.model.quant import quantize_model

    torch.manual_seed(0)
    model = build_model(get_config("llama-tiny")).eval()

    def same_as_blocks(expect_steps=3):
        ours, steps = _steps_with(model, True, monkeypatch)
        ref, _ = _steps_with(model, False, monkeypatch)
        assert steps == expect_steps and all(torch.equal(a, b) for a, b in zip(ours, ref))
        return ours

    before = same_as_blocks()
    plan = model._decode_plan()
    assert plan is not None and model._decode_plan() is plan  # built once, not per step
    down = model.blocks[0].ffn.down
    down.weight = torch.nn.Parameter(down.weight.detach() * 2)  # a new tensor: the plan must take it
    assert model._decode_plan() is not plan
    after = same_as_blocks()
    assert not torch.equal(before[1], after[1])
    model.double()  # float64: our C++ steps aside, no error
    assert _steps_with(model, True, monkeypatch)[1] == 0
    model.float()
    same_as_blocks()
    quantize_model(model, "int8", group=32)  # Linears replaced in place
    same_as_blocks()
