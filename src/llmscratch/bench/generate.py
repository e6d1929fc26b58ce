"""The KV-cache benchmark: new tokens per second of batch-1 greedy decoding, with and without our KV cache, for
several output lengths, against transformers' GPT2LMHeadModel holding the same weights (cache on and off).

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

import torch

from llmscratch.bench import common

JSON_NAME = "bench_generate.json"
PNG_NAME = "bench_generate.png"


@dataclass
class GenerateBenchConfig:
    """What to measure. `quick`: a seconds-long smoke run on a tiny preset."""

    model: str = "gpt2-124m"
    tokens: tuple[int, ...] = (50, 200, 500)
    repeats: int = 3  # rounds for the cached variants
    no_cache_repeats: int = 1  # rounds for the uncached variants (each run takes minutes at 500 tokens)
    prompt_tokens: int = 16
    threads: int | None = None  # default: all cores
    out: Path = Path("bench-results")
    transformers: bool = True
    quick: bool = False
    seed: int = 0
    progress: bool = True

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


def _transformers_model(model):
    """transformers' GPT2LMHeadModel with the same weights as our GPT (None when transformers is absent)."""
    try:
        import transformers
    except ImportError:
        return None
    from llmscratch.weights.hf import tensors_for_transformers

    hf_config, tensors = tensors_for_transformers(model)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config)).eval()
    missing, unexpected = hf.load_state_dict(tensors, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise RuntimeError(f"weights did not fit transformers' GPT-2: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf


def _variants(model, hf, prompt: list[int]) -> list[Variant]:
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


def run_generate_bench(cfg: GenerateBenchConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure, print a table, write JSON + PNG into cfg.out; returns the JSON content."""
    from llmscratch.model import PRESETS
    from llmscratch.model.base import model_size, set_weight_layout
    from llmscratch.utils import UserError
    from llmscratch.weights import load_model, load_preset

    if cfg.repeats < 1 or cfg.no_cache_repeats < 0:
        raise UserError("--repeats must be >= 1 and --no-cache-repeats >= 0")
    if not cfg.tokens or min(cfg.tokens) < 1:
        raise UserError("--tokens needs positive counts, e.g. 50,200,500")
    started = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    try:
        machine = common.machine_info()
        echo(common.format_machine(machine))
        if cfg.model in PRESETS:  # no tokenizer needed: prompts are token ids
            loaded = load_preset(cfg.model, "cpu", torch.float32, with_tokenizer=False)
        else:
            loaded = load_model(cfg.model, device="cpu", dtype=torch.float32)
        model = loaded.model
        if model.config.family != "gpt2":
            raise UserError(f"the generation benchmark compares GPT-2 models; {cfg.model} is {model.config.family}")
        if cfg.prompt_tokens + max(cfg.tokens) > model.config.context_length:
            raise UserError(f"{cfg.prompt_tokens} prompt + {max(cfg.tokens)} new tokens exceed the context "
                            f"length {model.config.context_length} of {cfg.model}")
        size = model_size(model)
        bytes_per_token = size.bytes_read_per_token(4)
        echo(f"model: {loaded.name} ({loaded.source}), {size.params:,} parameters, float32, CPU, batch 1, "
             f"prompt {cfg.prompt_tokens} tokens, greedy; {bytes_per_token / 1e6:.1f} MB of weights read per token")
        g = torch.Generator().manual_seed(cfg.seed)
        prompt = torch.randint(0, model.config.vocab_size, (cfg.prompt_tokens,), generator=g).tolist()

        hf = _transformers_model(model) if cfg.transformers else None
        if cfg.transformers and hf is None:
            echo("transformers is not installed: benchmarking ours only")
        variants = _variants(model, hf, prompt)

        check_n = min(20, max(cfg.tokens))
        outputs = {}
        for v in variants:  # also the warm-up
            v.setup()
            outputs[v.name] = v.run(check_n)
        agree = len({tuple(o) for o in outputs.values()}) == 1
        echo(f"greedy outputs of all variants for {check_n} tokens: {'identical' if agree else 'DIFFERENT'}")

        cases = {  # interleaved: every variant and length once per round
            (v.name, n): common.Case(partial(v.run, n), cfg.repeats if v.cache else cfg.no_cache_repeats, v.setup)
            for n in cfg.tokens for v in variants
        }
        named = common.interleaved_times({f"{name}, {n} tokens": c for (name, n), c in cases.items()},
                                         cfg.repeats, warmup=False, progress=cfg.progress, desc="generate bench")
        times = dict(zip(cases, named.values()))
        set_weight_layout(model, transposed=False)  # leave the model in torch's usual layout
        peak_mb = common.peak_memory_mb()  # before the bandwidth test's large arrays

        matrix, total = ((32 << 20), (64 << 20)) if cfg.quick else ((512 << 20), (1 << 30))
        bw = common.measure_bandwidth(matrix, total)
        limit = bw.matvec_gbs * 1e9 / bytes_per_token
        echo(f"memory bandwidth: matrix-vector {bw.matvec_gbs:.1f} GB/s ({bw.matrix_mb:.0f} MB matrix; W @ x "
             f"{bw.rows_gbs:.1f}, x @ W {bw.columns_gbs:.1f}), sum {bw.sum_gbs:.1f} GB/s ({bw.sum_mb:.0f} MB)")
        echo(f"batch-1 decode limit = bandwidth / bytes per token = {bw.matvec_gbs:.1f} GB/s / "
             f"{bytes_per_token / 1e6:.1f} MB = {limit:.1f} tokens/s")

        results = []
        for v in variants:
            for n in cfg.tokens:
                ts = times[(v.name, n)]
                if not ts:
                    continue
                med = common.median(ts)
                results.append({
                    "variant": v.name, "impl": v.impl, "cache": v.cache, "note": v.note, "new_tokens": n,
                    "times_s": [round(t, 4) for t in ts], "median_s": round(med, 4),
                    "tokens_per_s": round(n / med, 2), "fraction_of_limit": round(n / med / limit, 3),
                })
        rate = {(r["variant"], r["new_tokens"]): r["tokens_per_s"] for r in results}
        ratios = _ratios(rate, cfg.tokens, hf is not None)
        machine_end = common.machine_info()
        data = {
            "benchmark": "generate",
            "machine": machine,
            "load_avg_at_end": machine_end["load_avg_1_5_15min"],
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
            "model": {"spec": cfg.model, "name": loaded.name, "source": loaded.source, "params": size.params,
                      "bytes_read_per_token": bytes_per_token, "dtype": "float32"},
            "bandwidth": asdict(bw),
            "decode_limit_tokens_per_s": round(limit, 2),
            "outputs_identical": agree,
            "results": results,
            "ratios": ratios,
            "peak_memory_mb": round(peak_mb, 1),  # generation only (the bandwidth test comes after)
            "wall_s": round(time.perf_counter() - started, 1),
        }
        echo("")
        echo(_table(variants, cfg.tokens, rate, limit))
        echo("")
        for line in _ratio_lines(ratios, cfg.tokens):
            echo(line)
        echo(f"load average at the end: {' / '.join(str(x) for x in machine_end['load_avg_1_5_15min'] or [])}; "
             f"peak memory while generating {data['peak_memory_mb']:.0f} MB (maxrss); wall time {data['wall_s']:.0f} s")
        cfg.out.mkdir(parents=True, exist_ok=True)
        json_path = common.write_json(cfg.out / JSON_NAME, data)
        png_path = _chart(cfg, variants, rate, limit, loaded.name, machine)
        echo(f"wrote {json_path} and {png_path}")
        return data
    finally:
        torch.set_num_threads(threads_before)


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


def _chart(cfg, variants, rate: dict, limit: float, name: str, machine: dict) -> Path:
    series = {}
    for v in variants:
        xs = [n for n in cfg.tokens if (v.name, n) in rate]
        if xs:
            series[v.name] = (xs, [rate[(v.name, n)] for n in xs])
    load = machine.get("load_avg_1_5_15min") or ["?"]
    return common.line_chart(
        cfg.out / PNG_NAME, series,
        title=f"Batch-1 greedy decoding, {name}, float32, CPU ({machine['torch_threads']} threads)",
        xlabel="new tokens generated", ylabel="new tokens per second (log scale)",
        hlines={"memory-bandwidth limit": limit}, logy=True,
        note=f"medians of interleaved runs; load average {load[0]} at start",
    )
