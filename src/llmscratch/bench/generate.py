"""The KV-cache benchmark: new tokens per second of batch-1 greedy decoding, with and without our KV cache, for
several output lengths, against transformers holding the same weights (cache on and off): GPT2LMHeadModel for
GPT-2 models, LlamaForCausalLM for Llama-family ones (SmolLM2, built from our dequantized GGUF weights).
Several models may be benchmarked in one run (`model="gpt2-124m,smollm2-135m-instruct"`): one section each.

Everything runs in one process, interleaved (each round runs every variant once) so that machine load hits
all variants alike; the table shows medians. The ceiling for batch-1 decoding is memory bandwidth: each new
token reads every weight once, so tokens/s <= bandwidth / bytes read per token. Each rate is also shown as a
fraction of that limit (bandwidth measured here with a large matrix-vector product).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from llmscratch.bench import common
from llmscratch.config import check_fields, setting

# torch is imported inside the functions: `llmscratch --help` builds the benchmarks' flags without it.

JSON_NAME = "bench_generate.json"
PNG_NAME = "bench_generate.png"


@dataclass
class GenerateBenchConfig:
    """What to measure (the flags of `llmscratch bench generate`). `quick`: a seconds-long smoke run."""

    model: str = setting("gpt2-124m", "GPT-2 or Llama model(s), comma-separated: preset (gpt2-tiny with --quick; "
                         "llama-tiny), registered name (smollm2-135m-instruct: its GGUF, dequantized), folder, .gguf")
    tokens: tuple[int, ...] = setting((50, 200, 500), "new-token counts, comma-separated", ge=1)
    repeats: int = setting(3, "rounds for the cached variants", ge=1)
    no_cache_repeats: int = setting(1, "rounds for the uncached variants (at 500 tokens one run takes minutes)",
                                    ge=0)
    prompt_tokens: int = setting(16, "prompt length in tokens", ge=1)
    threads: int | None = setting(None, "torch threads (default: all cores)", ge=1, le=1024)
    out: Path = setting(Path("bench-results"), "folder for bench_generate.json and .png")
    transformers: bool = setting(True, "benchmark ours only", switches={"--no-transformers": False})
    quantize: tuple[str, ...] = setting((), "quantized variants of ours to add, comma-separated: int8, int4 "
                                        "(model/quant.py; every block Linear and the head)",
                                        choices=("int8", "int4"))
    llama_cpp: str | None = setting(None, "llama.cpp's llama-bench binary, a peer on the same .gguf file "
                                    "(default: llama-bench on PATH; without one the peer rows say so)")
    quick: bool = setting(False, "a few-seconds smoke run (tiny preset, few tokens)", preset="quick_run")
    seed: int = setting(0, "seed of the prompt", ge=0, cli=False)
    progress: bool = setting(True, "no progress bar (for logs)", switches={"--no-progress": False})

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def quick_run(cls, **overrides) -> GenerateBenchConfig:
        base = {"model": "gpt2-tiny", "tokens": (4, 12), "repeats": 2, "no_cache_repeats": 1, "prompt_tokens": 4,
                "quick": True}
        return cls(**(base | overrides))


@dataclass
class Variant:
    """One way of generating: whose code, cache on or off, and the weight layout (ours only)."""

    name: str
    impl: str  # "ours" or "transformers"
    cache: bool
    run: Callable[[int], list[int]] = field(repr=False)  # new tokens -> generated ids
    note: str = ""
    setup: Callable[[], object] = field(default=lambda: None, repr=False)  # untimed, before each run


def _variants(model, hf, prompt: list[int], quantized: dict | None = None) -> list[Variant]:
    import torch

    from llmscratch.generate import SamplingConfig, generate
    from llmscratch.model.base import set_weight_layout

    def ours(cache: bool):
        def run(n: int) -> list[int]:
            return generate(model, [prompt], SamplingConfig(max_new_tokens=n), use_cache=cache)[0]

        return run

    def layout(transposed: bool):
        return lambda: set_weight_layout(model, transposed)  # a no-op when already so

    variants = [
        Variant("ours, KV cache", "ours", True, ours(True), "weights stored (in, out) for gemv", layout(True)),
        Variant("ours, KV cache, (out, in) weights", "ours", True, ours(True), "torch's usual Linear layout",
                layout(False)),
        Variant("ours, no cache", "ours", False, ours(False), "whole sequence every step", layout(True)),
    ]
    for fmt, qmodel in (quantized or {}).items():
        from llmscratch.model import quant_kernel

        def run_q(n: int, m=qmodel) -> list[int]:
            return generate(m, [prompt], SamplingConfig(max_new_tokens=n))[0]

        variants.append(Variant(f"ours, KV cache, {fmt}", "ours", True, run_q, quant_kernel.status()))
    if hf is not None:
        import transformers

        ids = torch.tensor([prompt])
        mask = torch.ones_like(ids)

        def theirs(cache: bool):
            def run(n: int) -> list[int]:
                gc = transformers.GenerationConfig(
                    max_new_tokens=n, do_sample=False, use_cache=cache, eos_token_id=None, pad_token_id=0
                )
                with torch.inference_mode():
                    out = hf.generate(ids, attention_mask=mask, generation_config=gc)
                return out[0, len(prompt) :].tolist()

            return run

        variants += [
            Variant("transformers, KV cache", "transformers", True, theirs(True),
                    f"transformers {transformers.__version__}"),
            Variant("transformers, no cache", "transformers", False, theirs(False), "use_cache=False"),
        ]
    return variants


@dataclass
class _Section:
    """One model's measurements (before the bandwidth test turns rates into shares of the limit)."""

    spec: str
    loaded: Any
    params: int
    bytes_per_token: int
    variants: list[Variant]
    times: dict[tuple[str, int], list[float]]
    outputs_identical: bool
    with_hf: bool


def _model_specs(cfg: GenerateBenchConfig) -> list[str]:
    return [m.strip() for m in cfg.model.split(",") if m.strip()]


def _bench_model(spec: str, cfg: GenerateBenchConfig, echo: Callable[[str], None]) -> _Section:
    """Load one model, check greedy outputs agree, time every variant and length interleaved."""
    import torch

    from llmscratch.model import PRESETS
    from llmscratch.model.base import model_size, set_weight_layout
    from llmscratch.utils import UserError
    from llmscratch.weights import load_model, load_preset

    if spec in PRESETS:  # no tokenizer needed: prompts are token ids
        loaded = load_preset(spec, "cpu", torch.float32, with_tokenizer=False)
    else:
        loaded = load_model(spec, device="cpu", dtype=torch.float32, progress=cfg.progress)
    model = loaded.model
    if model.config.family not in ("gpt2", "llama"):
        raise UserError(f"the generation benchmark compares GPT-2 and Llama models; {spec} is {model.config.family}")
    if cfg.prompt_tokens + max(cfg.tokens) > model.config.context_length:
        raise UserError(f"{cfg.prompt_tokens} prompt + {max(cfg.tokens)} new tokens exceed the context "
                        f"length {model.config.context_length} of {spec}")
    size = model_size(model)
    bytes_per_token = size.bytes_read_per_token(4)
    tied = " (tied embedding/head read once, as the head)" if getattr(model.config, "tie_embeddings", True) else ""
    echo(f"model: {loaded.name} ({loaded.source}), {model.config.family}, {size.params:,} parameters, float32, CPU, "
         f"batch 1, prompt {cfg.prompt_tokens} tokens, greedy; {bytes_per_token / 1e6:.1f} MB of weights read per "
         f"token{tied}")
    g = torch.Generator().manual_seed(cfg.seed)
    prompt = torch.randint(0, model.config.vocab_size, (cfg.prompt_tokens,), generator=g).tolist()

    hf = common.transformers_twin(model) if cfg.transformers else None
    if cfg.transformers and hf is None:
        echo("transformers is not installed: benchmarking ours only")
    variants = _variants(model, hf, prompt, _quantized_copies(model, cfg.quantize))

    check_n = min(20, max(cfg.tokens))
    outputs = {}
    for v in variants:  # also the warm-up
        v.setup()
        outputs[v.name] = v.run(check_n)
    agree = len({tuple(o) for k, o in outputs.items() if not k.endswith(cfg.quantize or ("\0",))}) == 1
    for fmt in cfg.quantize:
        same = agreement(outputs["ours, KV cache"], outputs[f"ours, KV cache, {fmt}"])
        echo(f"{fmt}: greedy agreement with float32 over {check_n} tokens: {same}/{check_n} "
             "(quantized weights change the numbers; not counted in 'identical' below)")
    echo(f"greedy outputs of all variants for {check_n} tokens: {'identical' if agree else 'DIFFERENT'}")

    cases = {  # interleaved: every variant and length once per round
        (v.name, n): common.Case(partial(v.run, n), cfg.repeats if v.cache else cfg.no_cache_repeats, v.setup)
        for n in cfg.tokens for v in variants
    }
    named = common.interleaved_times({f"{name}, {n} tokens": c for (name, n), c in cases.items()},
                                     cfg.repeats, warmup=False, progress=cfg.progress,
                                     desc=f"generate bench {loaded.name}")
    set_weight_layout(model, transposed=False)  # leave the model in torch's usual layout
    return _Section(spec, loaded, size.params, bytes_per_token, variants, dict(zip(cases, named.values())), agree,
                    hf is not None)


def _gguf_file(spec: str) -> Path | None:
    """The .gguf file behind a model spec (a path, or a registered model fetched as one), else None."""
    from llmscratch.weights.registry import MODELS, local_path

    path = Path(spec)
    if path.suffix == ".gguf" and path.is_file():
        return path
    found = local_path(spec) if spec in MODELS else None
    return found if found is not None and found.suffix == ".gguf" else None


def _llama_cpp_peer(spec: str, cfg: GenerateBenchConfig, echo: Callable[[str], None]) -> dict:
    """llama.cpp's llama-bench on the same .gguf file and thread count: decode and prefill tokens/s. Its
    result, or {"error": why not} (no binary, no .gguf file, a failed run), printed either way."""
    import json
    import shutil
    import subprocess

    binary = cfg.llama_cpp or shutil.which("llama-bench")
    gguf = _gguf_file(spec)
    why = ("no llama.cpp binary: give llama_cpp (--llama-cpp PATH) or put llama-bench on PATH" if not binary
           else f"{spec} is not a .gguf file" if gguf is None else None)
    if why is None:
        cmd = [binary, "-m", str(gguf), "-t", str(cfg.threads or os.cpu_count() or 1), "-p",
               str(cfg.prompt_tokens), "-n", str(max(cfg.tokens)), "-r", str(cfg.repeats), "-o", "json"]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=True)
            rows = json.loads(run.stdout)
            decode = next(r["avg_ts"] for r in rows if r.get("n_gen", 0) > 0)
            prefill = next(r["avg_ts"] for r in rows if r.get("n_prompt", 0) > 0 and not r.get("n_gen"))
            echo(f"llama.cpp ({binary}) on {gguf.name}: decode {decode:.1f} tokens/s at {max(cfg.tokens)} new, "
                 f"prefill {prefill:.1f} tokens/s at {cfg.prompt_tokens}")
            return {"binary": str(binary), "file": str(gguf), "decode_tokens_per_s": decode,
                    "prefill_tokens_per_s": prefill}
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, StopIteration, TypeError) as e:
            why = f"llama.cpp run failed ({' '.join(cmd)}): {type(e).__name__}: {str(e)[:200]}"
    echo(f"llama.cpp peer for {spec}: none ({why})")
    return {"error": why}


def _quantized_copies(model, formats) -> dict:
    """{format: a quantized deep copy of `model`} (as `--quantize FMT` does it: model/quant.quantize_loaded)."""
    import copy

    from llmscratch.model.quant import quantize_loaded

    return {fmt: quantize_loaded(copy.deepcopy(model), fmt) for fmt in formats}


def agreement(a: list[int], b: list[int]) -> int:
    """Tokens generated alike before the first difference."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _results(sec: _Section, tokens, limit: float) -> list[dict]:
    rows = []
    for v in sec.variants:
        for n in tokens:
            ts = sec.times[(v.name, n)]
            if not ts:
                continue
            med = common.median(ts)
            rows.append({
                "model": sec.loaded.name, "variant": v.name, "impl": v.impl, "cache": v.cache, "note": v.note,
                "new_tokens": n, "times_s": [round(t, 4) for t in ts], "median_s": round(med, 4),
                "tokens_per_s": round(n / med, 2), "fraction_of_limit": round(n / med / limit, 3),
            })
    return rows


def run_generate_bench(cfg: GenerateBenchConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure, print a table per model, write JSON + PNG into cfg.out; returns the JSON content.

    The JSON's top-level "model", "decode_limit_tokens_per_s" and "ratios" describe the first model (as in a
    one-model run); "models" has one section per model; "results" holds every model's rows.
    """
    import torch

    from llmscratch.utils import UserError

    if not cfg.tokens:
        raise UserError("tokens needs positive counts, e.g. 50,200,500", params="tokens")
    specs = _model_specs(cfg)
    if not specs:
        raise UserError("model needs at least one model", params="model")
    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    try:
        machine = common.machine_info()
        echo(common.format_machine(machine))
        sections = [_bench_model(spec, cfg, echo) for spec in specs]
        peers = {spec: _llama_cpp_peer(spec, cfg, echo) for spec in specs}
        peak_mb = common.peak_memory_mb()  # before the bandwidth test's large arrays

        matrix, total = ((32 << 20), (64 << 20)) if cfg.quick else ((512 << 20), (1 << 30))
        bw = common.measure_bandwidth(matrix, total)
        echo(f"memory bandwidth: matrix-vector {bw.matvec_gbs:.1f} GB/s ({bw.matrix_mb:.0f} MB matrix; W @ x "
             f"{bw.rows_gbs:.1f}, x @ W {bw.columns_gbs:.1f}), sum {bw.sum_gbs:.1f} GB/s ({bw.sum_mb:.0f} MB)")

        parts, charts = zip(*(_section_result(sec, cfg, bw, echo) for sec in sections))
        for part, sec in zip(parts, sections):
            part["llama_cpp"] = peers[sec.spec]
        machine_end = common.machine_info()
        first = parts[0]
        data = {
            "benchmark": "generate",
            "machine": machine,
            "load_avg_at_end": machine_end["load_avg_1_5_15min"],
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "model": first["model"],
            "bandwidth": asdict(bw),
            "decode_limit_tokens_per_s": first["decode_limit_tokens_per_s"],
            "outputs_identical": all(p["outputs_identical"] for p in parts),
            "results": [r for p in parts for r in p["results"]],
            "ratios": first["ratios"],
            "models": parts,
            "peak_memory_mb": round(peak_mb, 1),  # generation only (the bandwidth test comes after)
            "wall_s": round(time.perf_counter() - started, 1),
        }
        echo("")
        echo(f"load average at the end: {' / '.join(str(x) for x in machine_end['load_avg_1_5_15min'] or [])}; "
             f"peak memory while generating {data['peak_memory_mb']:.0f} MB (maxrss); wall time {data['wall_s']:.0f} s")
        cfg.out.mkdir(parents=True, exist_ok=True)
        json_path = common.write_json(cfg.out / JSON_NAME, data)
        png_path = _chart(cfg, charts, machine)
        echo(f"wrote {json_path} and {png_path}")
        return data
    finally:
        torch.set_num_threads(threads_before)


def _section_result(sec: _Section, cfg: GenerateBenchConfig, bw, echo: Callable[[str], None]) -> tuple[dict, tuple]:
    """One model's JSON section (rates as shares of its bandwidth limit, ratios) and chart data; prints its table."""
    limit = bw.matvec_gbs * 1e9 / sec.bytes_per_token
    results = _results(sec, cfg.tokens, limit)
    rate = {(r["variant"], r["new_tokens"]): r["tokens_per_s"] for r in results}
    ratios = _ratios(rate, cfg.tokens, sec.with_hf)
    echo("")
    echo(f"{sec.loaded.name}: batch-1 decode limit = bandwidth / bytes per token = {bw.matvec_gbs:.1f} GB/s "
         f"/ {sec.bytes_per_token / 1e6:.1f} MB = {limit:.1f} tokens/s")
    echo(_table(sec.variants, cfg.tokens, rate, limit))
    for line in _ratio_lines(ratios, cfg.tokens):
        echo(line)
    part = {
        "model": {"spec": sec.spec, "name": sec.loaded.name, "source": sec.loaded.source,
                  "family": sec.loaded.model.config.family, "params": sec.params,
                  "bytes_read_per_token": sec.bytes_per_token, "dtype": "float32"},
        "decode_limit_tokens_per_s": round(limit, 2),
        "outputs_identical": sec.outputs_identical,
        "results": results,
        "ratios": ratios,
    }
    return part, (sec.loaded.name, sec.variants, rate, limit)


def _ratios(rate: dict, tokens, with_hf: bool) -> dict[str, dict[int, float]]:
    def ratio(a: str, b: str) -> dict[int, float]:
        return {n: round(rate[(a, n)] / rate[(b, n)], 2) for n in tokens if (a, n) in rate and (b, n) in rate}

    out = {
        "ours_cache_over_ours_no_cache": ratio("ours, KV cache", "ours, no cache"),
        "ours_gemv_layout_over_linear_layout": ratio("ours, KV cache", "ours, KV cache, (out, in) weights"),
    }
    if with_hf:
        out["ours_cache_over_transformers_cache"] = ratio("ours, KV cache", "transformers, KV cache")
        out["ours_no_cache_over_transformers_no_cache"] = ratio("ours, no cache", "transformers, no cache")
        out["transformers_cache_over_no_cache"] = ratio("transformers, KV cache", "transformers, no cache")
    return out


def _ratio_lines(ratios: dict, tokens) -> list[str]:
    lines = []
    for key, values in ratios.items():
        if values:
            shown = ", ".join(f"{values[n]:.2f}x at {n}" for n in tokens if n in values)
            lines.append(f"{key.replace('_', ' ')}: {shown}")
    return lines


def _table(variants, tokens, rate: dict, limit: float) -> str:
    headers = ["new tokens/s (share of limit)", *(f"{n} new" for n in tokens)]
    rows = []
    for v in variants:
        cells = [f"{rate[(v.name, n)]:.1f} ({rate[(v.name, n)] / limit:.0%})" if (v.name, n) in rate else "-"
                 for n in tokens]
        rows.append([v.name, *cells])
    rows.append(["memory-bandwidth limit", *(f"{limit:.1f} (100%)" for _ in tokens)])
    return common.format_table(headers, rows)


def _chart(cfg, charts: list, machine: dict) -> Path:
    """One panel per model: tokens/s of each variant against new tokens, and the model's bandwidth limit."""
    load = machine.get("load_avg_1_5_15min") or ["?"]
    note = f"medians of interleaved runs; load average {load[0]} at start"
    title = f"Batch-1 greedy decoding, float32, CPU ({machine['torch_threads']} threads)"
    if len(charts) == 1:
        name, variants, rate, limit = charts[0]
        return common.line_chart(
            cfg.out / PNG_NAME, _series(cfg.tokens, variants, rate),
            title=f"Batch-1 greedy decoding, {name}, float32, CPU ({machine['torch_threads']} threads)",
            xlabel="new tokens generated", ylabel="new tokens per second (log scale)",
            hlines={"memory-bandwidth limit": limit}, logy=True, note=note,
        )
    panels = [(name, _series(cfg.tokens, variants, rate), {"memory-bandwidth limit": limit})
              for name, variants, rate, limit in charts]
    return common.panel_chart(cfg.out / PNG_NAME, panels, title, xlabel="new tokens generated",
                              ylabel="new tokens per second (log scale)", logy=True, note=note)


def _series(tokens, variants, rate: dict) -> dict:
    series = {}
    for v in variants:
        xs = [n for n in tokens if (v.name, n) in rate]
        if xs:
            series[v.name] = (xs, [rate[(v.name, n)] for n in xs])
    return series
