"""Weight-only quantization (model/quant.py) and our kernel (model/quant_kernel.py) against float references."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from llmscratch.generate import SamplingConfig, generate
from llmscratch.model import build_model, get_config, quant_kernel
from llmscratch.model.quant import (
    QuantLinear,
    dequantize_int4,
    dequantize_int8,
    pack_int4,
    quantize_int4,
    quantize_int8,
    quantize_model,
    unpack_int4,
)
from llmscratch.utils import UserError


def weight(out=96, inp=256, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


def tiny(preset="llama-tiny", seed=0):
    torch.manual_seed(seed)
    return build_model(get_config(preset)).eval()


def test_int8_error_is_within_half_a_step_per_channel():
    w = weight()
    q, s = quantize_int8(w)
    assert q.dtype == torch.int8 and s.shape == (96,)
    err = (dequantize_int8(q, s) - w).abs()
    assert (err <= s[:, None] / 2 + 1e-6).all()
    assert (q.abs().amax(dim=1) == 127).all()  # each row uses the full range


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [False, True])
def test_int4_error_is_within_half_a_step_per_group(group, symmetric):
    w = weight()
    q, s, m = quantize_int4(w, group, symmetric)
    assert q.dtype == torch.uint8 and q.shape == (96, 128) and s.shape == (96, 256 // group)
    assert (m is None) == symmetric
    err = (dequantize_int4(q, s, m, group) - w).abs().reshape(96, -1, group)
    step = s.abs()[..., None] * (1.0 if symmetric else 0.5)  # Q4_0 clips +8 steps to +7: one whole step
    assert (err <= step + 1e-5).all()
    rel = (dequantize_int4(q, s, m, group) - w).norm() / w.norm()
    assert rel < 0.15


def test_int4_packing_round_trips_in_gguf_block_order():
    n = torch.randint(0, 16, (3, 64), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    p = pack_int4(n, 32)
    assert torch.equal(unpack_int4(p, 32), n)
    assert p[0, 0] == n[0, 0] | (n[0, 16] << 4)  # byte j: element j low, element j + 16 high


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="group"):
        quantize_int4(weight(), 48)
    with pytest.raises(UserError, match="unknown quantization"):
        quantize_model(tiny(), "int3")
    m = quantize_model(tiny(), "int8")
    with pytest.raises(UserError, match="already quantized"):
        quantize_model(m, "int8")


@pytest.mark.parametrize("fmt,group,symmetric", [("int8", 32, True), ("int4", 32, False), ("int4", 64, True),
                                                 ("int4", 128, False)])
@pytest.mark.parametrize("rows", [1, 3, 20])
def test_kernel_equals_the_reference(fmt, group, symmetric, rows):
    lin = nn.Linear(256, 80, bias=True)
    q = QuantLinear.from_linear(lin, fmt, group, symmetric)
    x = torch.randn(rows, 256, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y, ref, flt = q(x), q.reference_forward(x, quant_kernel.int8_activations(q)), lin(x)
    assert torch.allclose(y, ref, atol=1e-4, rtol=1e-4)
    tol = 0.02 if fmt == "int8" else 0.2
    assert (y - flt).abs().max() < tol * flt.abs().max()


@pytest.mark.skipif(shutil.which("c++") is None, reason="no C++ compiler: the kernel cannot be built here")
def test_the_kernel_builds_where_a_compiler_exists():
    assert quant_kernel.kernel() is not None, quant_kernel.status()
    assert quant_kernel.status().startswith("C++ kernel")


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny", "gemma3-tiny"])
def test_every_block_linear_and_the_head_are_swapped(preset):
    model = quantize_model(tiny(preset), "int8", head=True)
    left = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert left == []
    assert "head" in model.quantization["layers"] and model.quantization["format"] == "int8"
    assert isinstance(model.get_submodule("head"), QuantLinear)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny", "gemma3-tiny"])
@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_quantized_logits_stay_close_and_cached_equals_uncached(preset, fmt):
    ref = tiny(preset)
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(ids)
    model = quantize_model(tiny(preset), fmt, head=True)
    with torch.no_grad():
        got = model(ids)
    rel = (got - want).norm() / want.norm()
    int8_x = quant_kernel.int8_activations(model.head)  # activations rounded to int8 too (VNNI CPUs)
    assert rel < (0.35 if fmt == "int4" else 0.04 if int8_x else 0.02)  # random tiny weights: errors add up
    cfg = SamplingConfig(max_new_tokens=12)
    prompt = ids[0].tolist()
    assert generate(model, [prompt], cfg, use_cache=True) == generate(model, [prompt], cfg, use_cache=False)


def test_int8_greedy_output_matches_float_mostly():
    ref = tiny("gpt2-tiny")
    model = quantize_model(tiny("gpt2-tiny"), "int8", head=True)
    cfg = SamplingConfig(max_new_tokens=20)
    prompt = list(range(5, 15))
    a, b = generate(ref, [prompt], cfg)[0], generate(model, [prompt], cfg)[0]
    assert a[:5] == b[:5]


FORMATS_ALL = [("int8", None, True), ("int8", 32, True), ("int8", 16, True), ("int4", 32, False), ("int4", 32, True),
               ("int4", 64, False), ("int4", 128, True)]


@pytest.mark.parametrize("fmt,group,symmetric", FORMATS_ALL)
@pytest.mark.parametrize("rows", [*range(1, 10), 17, 65])  # 9, 17: kernel passes of 8 rows; 65: dequantized
def test_every_format_and_row_count_equals_the_reference(fmt, group, symmetric, rows):
    w = weight(out=37, inp=384, seed=rows)  # 37 output rows: the kernel's 4-row blocks and a tail
    if fmt == "int8" and group:
        q = QuantLinear.from_tensors(*quantize_int8(w, group), None, "int8", group)
    else:
        lin = nn.Linear(384, 37, bias=False)
        lin.weight.data = w
        q = QuantLinear.from_linear(lin, fmt, group or 32, symmetric)
    x = torch.randn(rows, 384, generator=torch.Generator().manual_seed(rows))
    with torch.no_grad():
        y, ref = q(x), q.reference_forward(x, quant_kernel.int8_activations(q))
    assert torch.allclose(y, ref, atol=1e-4, rtol=1e-4)
    if quant_kernel.int8_activations(q):  # int8 x: close to the float-x product too
        assert (y - q.reference_forward(x)).abs().max() < 0.02 * ref.abs().max()


@pytest.mark.parametrize("fmt,group", [("int4", 64), ("int4", 128), ("int8", None)])
def test_a_decode_step_and_a_prefill_compute_one_function(fmt, group):
    """Rows one at a time (the kernel) and nine at once (dequantize + F.linear) agree, also where one group
    spans the whole row (int4 of width 64 or 128: no int8 activations there) or int8 has a scale per row."""
    inp = group or 64
    lin = nn.Linear(inp, 20, bias=False)
    lin.weight.data = weight(out=20, inp=inp, seed=2)
    q = QuantLinear.from_linear(lin, fmt, group or 32)
    x = torch.randn(9, inp, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        one_by_one = torch.cat([q(x[i : i + 1]) for i in range(9)])
        torch.testing.assert_close(one_by_one, q(x), atol=1e-4, rtol=1e-4)  # 1e-2 apart when they differed


def test_grouped_int8_error_is_within_half_a_step_per_group():
    w = weight()
    q, s = quantize_int8(w, 32)
    assert s.dtype == torch.float16 and s.shape == (96, 8)
    err = (dequantize_int8(q, s) - w).abs().reshape(96, 8, 32)
    assert (err <= s.float()[..., None] / 2 + 1e-6).all()


def test_float32_kernel_equals_f_linear():
    w, x = weight(out=70, inp=96), torch.randn(3, 96)
    with torch.no_grad():
        y = quant_kernel.float_linear(x, w)
        assert y is not None and torch.allclose(y, torch.nn.functional.linear(x, w), atol=1e-5)
        assert quant_kernel.float_linear(torch.randn(9, 96), w) is None  # more rows: F.linear's job


@pytest.mark.parametrize("preset", ["llama-tiny", "gemma3-tiny"])
def test_tied_embedding_reads_the_quantized_head(preset):
    from llmscratch.model.quant import QuantEmbedding

    model = tiny(preset)
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    model = quantize_model(model, "int8", head=True)
    assert isinstance(model.tok_emb, QuantEmbedding) and model.quantization["embedding"]
    assert all("tok_emb" not in n for n in model.state_dict())  # no float table kept
    with torch.no_grad():
        want = model.head.dequantized_weight()[ids] * (model.tok_emb.scale or 1.0)
        assert torch.allclose(model.tok_emb(ids), want)


@pytest.fixture
def threads():
    """Set torch's thread count for a test (our kernels split rows over that many), restored after."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def _products(x):
    """Every kernel product of x (rows, 384) with 1000-row weights: float32, int8 per row, int4 groups of 32."""
    w = weight(out=1000, inp=384, seed=5)
    lin = nn.Linear(384, 1000, bias=False)
    lin.weight.data = w
    q8, q4 = QuantLinear.from_linear(lin, "int8", 32), QuantLinear.from_linear(lin, "int4", 32)
    with torch.no_grad():
        return [quant_kernel.float_linear(x, w), q8(x), q4(x)]


@pytest.mark.skipif(quant_kernel.kernel() is None, reason="no C++ compiler: no kernel to split")
@pytest.mark.parametrize("rows", [1, 3])
def test_rows_split_over_threads_give_the_one_thread_result_exactly(threads, rows):
    x = torch.randn(rows, 384, generator=torch.Generator().manual_seed(rows))
    threads(1)
    alone = _products(x)
    threads(3)  # more threads than this machine's cores: helpers claim chunks when they get a core
    for _ in range(5):
        for y, ref in zip(_products(x), alone):
            assert torch.equal(y, ref)


@pytest.mark.skipif(quant_kernel.kernel() is None, reason="no C++ compiler: no kernel to split")
def test_products_from_several_python_threads_at_once_are_right(threads):
    """Callers racing for the thread pool (a server's threads): the loser runs its product alone, right."""
    import concurrent.futures

    threads(2)
    xs = [torch.randn(1, 384, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    expected = [_products(x) for x in xs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: [_products(x) for _ in range(10)][-1], xs))
    for g, e in zip(got, expected):
        assert all(torch.equal(a, b) for a, b in zip(g, e))


def test_our_linear_uses_the_float_kernel_only_for_decode_sized_inference(monkeypatch):
    lin = quant_kernel.Linear(96, 70)
    calls = []
    real = quant_kernel.float_linear
    monkeypatch.setattr(quant_kernel, "float_linear", lambda *a: calls.append(a[0].shape) or real(*a))
    x = torch.randn(2, 96)
    with torch.no_grad():
        torch.testing.assert_close(lin(x), torch.nn.functional.linear(x, lin.weight, lin.bias))
        lin(torch.randn(9, 96))  # a prefill: F.linear
    lin(x).sum().backward()  # training: F.linear, and gradients flow
    assert lin.weight.grad is not None
    assert calls == ([(2, 96)] if quant_kernel.kernel() is not None else [])


def _layers():
    """A float32 weight and int8 / int4 layers of it (1000 x 384) for `_run`."""
    w = weight(out=1000, inp=384, seed=5)
    lin = nn.Linear(384, 1000, bias=False)
    lin.weight.data = w
    return w, QuantLinear.from_linear(lin, "int8", 32), QuantLinear.from_linear(lin, "int4", 32)


def _run(layers, x):
    """Only our kernels' products of x (no other torch op that could start OpenMP threads)."""
    w, q8, q4 = layers
    with torch.no_grad():
        return [quant_kernel.float_linear(x, w).tolist(), q8(x).tolist(), q4(x).tolist()]


def _run_in_child(layers, x, queue):
    queue.put(_run(layers, x))


@pytest.mark.skipif(quant_kernel.kernel() is None, reason="no C++ compiler: no kernel to split")
def test_a_forked_child_computes_with_a_pool_of_its_own(threads):
    """A process forked after our threads ran (multiprocessing's fork start) must not wait on them: they do
    not exist in the child, and a lock one of them held stays held there. (torch's own OpenMP products are not
    fork-safe either way; the child runs only ours.)"""
    import multiprocessing

    threads(2)
    layers, x = _layers(), torch.randn(1, 384, generator=torch.Generator().manual_seed(7))
    want = _run(layers, x)  # the pool's helpers exist and just ran
    ctx = multiprocessing.get_context("fork")
    for _ in range(3):
        queue = ctx.Queue()
        child = ctx.Process(target=_run_in_child, args=(layers, x, queue))
        child.start()
        got = queue.get(timeout=60)
        child.join(timeout=60)
        assert child.exitcode == 0 and got == want


def test_products_of_no_rows_are_empty_not_an_error():
    """A selection of no positions (`model(ids, select=mask)` with an empty mask) multiplies 0 rows."""
    w = weight(out=70, inp=96)
    lin = nn.Linear(96, 70, bias=False)
    lin.weight.data = w
    x = torch.randn(0, 96)
    with torch.no_grad():
        assert quant_kernel.float_linear(x, w) is None  # F.linear's job
        for fmt in ("int8", "int4"):
            assert QuantLinear.from_linear(lin, fmt, 32)(x).shape == (0, 70)
        model = tiny("llama-tiny")
        assert model.head(torch.randn(2, 0, model.config.emb_dim)).shape == (2, 0, model.config.vocab_size)


def test_a_quantized_model_on_huge_pages_decodes_the_same_and_saves(tmp_path):
    from llmscratch.model.base import huge_pages_available, move_to_huge_pages
    from llmscratch.weights import load_model
    from llmscratch.weights.ours import save_pretrained

    if not huge_pages_available():
        pytest.skip("this machine gives no transparent huge pages (not Linux, or THP set to never)")
    moved = quantize_model(tiny("llama-tiny"), "int8", head=True)  # a tied head: the embedding reads its rows
    want = generate(quantize_model(tiny("llama-tiny"), "int8", head=True), [[1, 2, 3]],
                    SamplingConfig(max_new_tokens=12))
    assert move_to_huge_pages(moved, min_bytes=1) > 0
    assert moved.tok_emb._table[0] is moved.head  # the embedding still reads the head's rows
    assert generate(moved, [[1, 2, 3]], SamplingConfig(max_new_tokens=12)) == want
    save_pretrained(moved, None, tmp_path / "q")  # tensors that share one region save as separate tensors
    again = load_model(tmp_path / "q").model
    assert generate(again, [[1, 2, 3]], SamplingConfig(max_new_tokens=12)) == want
