"""The KV-cache benchmark: new tokens per second of batch-1 greedy decoding, with and without our KV cache, for
several output lengths, against transformers holding the same weights (cache on and off): GPT2LMHeadModel for
GPT-2 models, LlamaForCausalLM for Llama-family ones (SmolLM2, built from our dequantized GGUF weights).
Several models may be benchmarked in one run (`model="gpt2-124m,smollm2-135m-instruct"`): one section each.

Everything runs in one process, interleaved (each round runs every variant once) so that machine load hits
all variants alike; the table shows medians. The ceiling for batch-1 decoding is memory bandwidth: each new
token reads every weight once, so tokens/s <= bandwidth / bytes read per token. Each rate is also shown as a
fraction of that limit (bandwidth measured here with a large matrix-vector product), with one limit per weight
size (float32, int8, int4).

With a llama.cpp binary (`llama_cpp`, or llama-bench on PATH) and a .gguf model, llama.cpp is a peer on the same
file and thread count, in the same interleaved rounds (bench/llama_cpp.py), together with float copies of the
file (F32, F16, Q8_0, made by its llama-quantize) so that each of our weight formats meets llama.cpp at the same
precision. Every cached variant also gets a prefill figure (tokens/s of one forward pass over `prefill_tokens`),
and each of our formats a start-up figure: a whole `llmscratch generate` process to its first token, with its
peak memory (bench/startup.py).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from llmscratch.bench import common
from llmscratch.bench.llama_cpp import COPY_TYPES
from llmscratch.config import check_fields, setting

# torch is imported inside the functions: `llmscratch --help` builds the benchmarks' flags without it.

JSON_NAME = "bench_generate.json"
TORCH_MATMUL = "ours, KV cache, torch's matmul"  # our float model with torch's F.linear instead of our kernel
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
                                        "(model/quant.py; every block Linear and the head), gguf (a .gguf "
                                        "file's own quantized blocks, as `generate --quantize gguf` loads them)",
                                        choices=("int8", "int4", "gguf"))
    prefill_tokens: int = setting(512, "prompt tokens of the prefill figure (one forward pass; 0: none)", ge=0)
    llama_cpp: str | None = setting(None, "llama.cpp's llama-bench binary (or a folder or another llama.cpp tool "
                                    "beside it), a peer on the same .gguf file and threads (default: llama-bench "
                                    "on PATH; without one the peer rows say so; benchmarks/get_llama_cpp.sh "
                                    "builds one)")
    llama_cpp_copies: tuple[str, ...] = setting(COPY_TYPES, "copies of the .gguf file for llama.cpp at our "
                                                "precisions, made with the llama-quantize beside llama-bench and "
                                                "kept in the cache, comma-separated (F32, F16, Q8_0)",
                                                choices=COPY_TYPES)
    startup: bool = setting(True, "no start-up figures (a whole generate process per weight format)",
                            switches={"--no-startup": False})
    quick: bool = setting(False, "a few-seconds smoke run (tiny preset, few tokens)", preset="quick_run")
    seed: int = setting(0, "seed of the prompt", ge=0, cli=False)
    progress: bool = setting(True, "no progress bar (for logs)", switches={"--no-progress": False})

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def quick_run(cls, **overrides) -> GenerateBenchConfig:
        base = {"model": "gpt2-tiny", "tokens": (4, 12), "repeats": 2, "no_cache_repeats": 1, "prompt_tokens": 4,
                "prefill_tokens": 16, "startup": False, "quick": True}
        return cls(**(base | overrides))


@dataclass
class Variant:
    """One way of generating: whose code, cache on or off, the weight layout (ours only) and weight format."""

    name: str
    impl: str  # "ours" or "transformers"
    cache: bool
    run: Callable[[int], list[int]] = field(repr=False)  # new tokens -> generated ids
    note: str = ""
    setup: Callable[[], object] = field(default=lambda: None, repr=False)  # untimed, before each run
    prefill: Callable[[], object] | None = field(default=None, repr=False)  # one forward over the long prompt
    fmt: str = "float32"  # weight format: float32, int8, int4


def _ours(model, prompt: list[int], cache: bool = True) -> Callable[[int], list[int]]:
    from llmscratch.generate import SamplingConfig, generate

    def run(n: int) -> list[int]:
        return generate(model, [prompt], SamplingConfig(max_new_tokens=n), use_cache=cache)[0]

    return run


def _theirs(hf, prompt: list[int], cache: bool = True) -> Callable[[int], list[int]]:
    import torch
    import transformers

    ids = torch.tensor([prompt])
    mask = torch.ones_like(ids)

    def run(n: int) -> list[int]:
        gc = transformers.GenerationConfig(max_new_tokens=n, do_sample=False, use_cache=cache, eos_token_id=None,
                                           pad_token_id=0)
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=mask, generation_config=gc)
        return out[0, len(prompt):].tolist()

    return run


def _variants(model, transposed, hf, prompt: list[int], quantized: dict | None = None,
              long_prompt: list[int] | None = None) -> list[Variant]:
    """Our variants (KV cache on `model`, and on `transposed`, a copy with its weights stored (in, out); no cache;
    each quantized copy) and transformers' (cache on and off); cached ones get a prefill run over `long_prompt`
    (one new token) when it is given."""
    from llmscratch.model import quant_kernel

    def prefill(run_for):
        return None if not long_prompt else partial(run_for(long_prompt), 1)

    variants = [
        Variant("ours, KV cache", "ours", True, _ours(model, prompt), f"kernel: {quant_kernel.status()}",
                prefill=prefill(partial(_ours, model))),
        Variant(TORCH_MATMUL, "ours", True, _ours(transposed, prompt),
                "torch's matmul on weights stored (in, out), its fastest layout for one row here"),
        Variant("ours, no cache", "ours", False, _ours(transposed, prompt, cache=False), "whole sequence every step"),
    ]
    for fmt, qmodel in (quantized or {}).items():
        variants.append(Variant(f"ours, KV cache, {fmt}", "ours", True, _ours(qmodel, prompt),
                                f"kernel: {quant_kernel.status()}", prefill=prefill(partial(_ours, qmodel)),
                                fmt=fmt))
    if hf is not None:
        import transformers

        variants += [
            Variant("transformers, KV cache", "transformers", True, _theirs(hf, prompt),
                    f"transformers {transformers.__version__}", prefill=prefill(partial(_theirs, hf))),
            Variant("transformers, no cache", "transformers", False, _theirs(hf, prompt, cache=False),
                    "use_cache=False"),
        ]
    return variants


@dataclass
class _Section:
    """One model's measurements (before the bandwidth test turns rates into shares of the limit)."""

    spec: str
    loaded: Any
    params: int
    bytes_per_token: dict[str, int]  # weight format -> bytes of weights read per new token
    variants: list[Variant]
    times: dict[tuple[str, int], list[float]]
    outputs_identical: bool
    with_hf: bool
    prefill: dict[str, list[float]] = field(default_factory=dict)  # variant -> seconds per prefill run
    peer: dict = field(default_factory=dict)  # llama.cpp: {"error": why} or {"tools": Tools, "files": [PeerFile]}
    startup: dict[str, dict] = field(default_factory=dict)  # weight format or llama.cpp file -> Startup.to_dict()
    huge_pages: bool = False  # our variants decode with their weights on 2 MB pages


def _model_specs(cfg: GenerateBenchConfig) -> list[str]:
    return [m.strip() for m in cfg.model.split(",") if m.strip()]


def _load(spec: str, cfg: GenerateBenchConfig):
    import torch

    from llmscratch.model import PRESETS
    from llmscratch.utils import UserError
    from llmscratch.weights import load_model, load_preset

    if spec in PRESETS:  # no tokenizer needed: prompts are token ids
        loaded = load_preset(spec, "cpu", torch.float32, with_tokenizer=False)
    else:
        loaded = load_model(spec, device="cpu", dtype=torch.float32, progress=cfg.progress)
    config = loaded.model.config
    if config.family not in ("gpt2", "llama"):
        raise UserError(f"the generation benchmark compares GPT-2 and Llama models; {spec} is {config.family}")
    from llmscratch.model.quant_kernel import prepare_decoding

    prepare_decoding("cpu")  # our decode ops from the first timed step
    longest = max(cfg.prompt_tokens + max(cfg.tokens), cfg.prefill_tokens + 1)
    if longest > config.context_length:
        raise UserError(f"{cfg.prompt_tokens} prompt + {max(cfg.tokens)} new tokens (or {cfg.prefill_tokens} "
                        f"prefill tokens) exceed the context length {config.context_length} of {spec}")
    return loaded


def _model_config(spec: str, cfg: GenerateBenchConfig, echo: Callable[[str], None] | None = None
                  ) -> GenerateBenchConfig:
    """The settings for one model: without a .gguf file behind it, no gguf variant (said once)."""
    if "gguf" not in cfg.quantize or _gguf_file(spec) is not None:
        return cfg
    if echo is not None:
        echo(f"{spec}: no gguf variant (not a .gguf file)")
    return dataclasses.replace(cfg, quantize=tuple(f for f in cfg.quantize if f != "gguf"))


def _bench_model(spec: str, cfg: GenerateBenchConfig, echo: Callable[[str], None]) -> _Section:
    """Load one model, check greedy outputs agree, time every variant and length (and llama.cpp) interleaved."""
    import torch

    from llmscratch.model.base import model_size, move_to_huge_pages, set_weight_layout
    from llmscratch.model.quant_kernel import HUGE_PAGES_MIN_TOKENS

    loaded = _load(spec, cfg)
    model = loaded.model
    size = model_size(model)
    quantized = _quantized_copies(model, cfg.quantize, spec)
    transposed = set_weight_layout(deepcopy(model))  # for torch's matmul and the no-cache runs
    # decoding as `serve` and a chat session do: every copy's weights on 2 MB pages
    huge_pages = all([move_to_huge_pages(m) > 0 for m in (model, transposed, *quantized.values())])
    if huge_pages:
        echo(f"our variants: weights on 2 MB pages, as `serve` and `chat` decode (`generate` from "
             f"{HUGE_PAGES_MIN_TOKENS} new tokens on)")
    bytes_per_token = weight_bytes_per_token(model, quantized)
    tied = " (tied embedding/head read once, as the head)" if getattr(model.config, "tie_embeddings", True) else ""
    echo(f"model: {loaded.name} ({loaded.source}), {model.config.family}, {size.params:,} parameters, float32, CPU, "
         f"batch 1, prompt {cfg.prompt_tokens} tokens, greedy; {bytes_per_token['float32'] / 1e6:.1f} MB of weights "
         f"read per token{tied}")
    g = torch.Generator().manual_seed(cfg.seed)
    prompt = torch.randint(0, model.config.vocab_size, (cfg.prompt_tokens,), generator=g).tolist()
    long_prompt = torch.randint(0, model.config.vocab_size, (cfg.prefill_tokens,), generator=g).tolist()

    hf = common.transformers_twin(model) if cfg.transformers else None
    if cfg.transformers and hf is None:
        echo("transformers is not installed: benchmarking ours only")
    variants = _variants(model, transposed, hf, prompt, quantized, long_prompt)
    agree = _check_outputs(variants, cfg, echo)
    peer = _llama_cpp_peer(spec, cfg, echo)

    cases = {  # interleaved: every variant and length once per round, then each prefill, then llama.cpp
        f"{v.name}, {n} tokens": common.Case(partial(v.run, n), cfg.repeats if v.cache else cfg.no_cache_repeats,
                                             v.setup)
        for n in cfg.tokens for v in variants
    }
    cases |= {f"{v.name}, prefill": common.Case(v.prefill, cfg.repeats, v.setup) for v in variants if v.prefill}
    cases |= {f"llama.cpp {f.label}": common.Case(partial(_peer_round, peer["tools"], f, cfg), cfg.repeats)
              for f in peer.get("files", [])}
    named = common.interleaved_times(cases, cfg.repeats, warmup=False, progress=cfg.progress,
                                     desc=f"generate bench {loaded.name}")
    times = {(v.name, n): named[f"{v.name}, {n} tokens"] for n in cfg.tokens for v in variants}
    prefill = {v.name: named[f"{v.name}, prefill"] for v in variants if v.prefill}
    section = _Section(spec, loaded, size.params, bytes_per_token, variants, times, agree, hf is not None, prefill,
                       peer, huge_pages=huge_pages)
    if cfg.startup:
        section.startup = _startups(spec, cfg, peer, echo)
    return section


def _check_outputs(variants: list[Variant], cfg: GenerateBenchConfig, echo: Callable[[str], None]) -> bool:
    """Run every variant once (the warm-up) and say whether their greedy outputs agree."""
    check_n = min(20, max(cfg.tokens))
    outputs = {}
    for v in variants:
        v.setup()
        outputs[v.name] = v.run(check_n)
        if v.prefill:
            v.prefill()
    agree = len({tuple(outputs[v.name]) for v in variants if v.fmt == "float32"}) == 1
    for fmt in cfg.quantize:
        same = agreement(outputs["ours, KV cache"], outputs[f"ours, KV cache, {fmt}"])
        echo(f"{fmt}: greedy agreement with float32 over {check_n} tokens: {same}/{check_n} "
             "(quantized weights change the numbers; not counted in 'identical' below)")
    echo(f"greedy outputs of all float32 variants for {check_n} tokens: {'identical' if agree else 'DIFFERENT'}")
    return agree


def _peer_round(tools, peer_file, cfg: GenerateBenchConfig) -> None:
    from llmscratch.bench.llama_cpp import measure_round

    measure_round(tools, peer_file, _threads(cfg), cfg.prompt_tokens, cfg.tokens, cfg.prefill_tokens)


def _threads(cfg: GenerateBenchConfig) -> int:
    return cfg.threads or os.cpu_count() or 1


def _startups(spec: str, cfg: GenerateBenchConfig, peer: dict, echo: Callable[[str], None]) -> dict[str, dict]:
    """A whole `llmscratch generate` process per weight format (and llama-simple per llama.cpp file, if found)."""
    from llmscratch.bench.llama_cpp import startup_command
    from llmscratch.bench.startup import llama_cpp_startup, measure_startup
    from llmscratch.model import PRESETS

    out = {}
    if spec not in PRESETS:  # a preset has no tokenizer to read the prompt
        for fmt in ("float32", *cfg.quantize):
            out[fmt] = measure_startup(spec, None if fmt == "float32" else fmt, cfg.threads).to_dict()
    for f in peer.get("files", []):
        cmd = startup_command(peer["tools"], f.path, _threads(cfg))
        if cmd:
            out[f"llama.cpp {f.label}"] = llama_cpp_startup(cmd).to_dict()
    for name, s in out.items():
        split = (f" (import {s['import_s']:.2f} s, load {s['load_s']:.2f} s, first token {s['first_token_s']:.2f} s)"
                 if s.get("import_s") is not None else "")
        echo(f"start-up to the first token, {name}: {_fmt(s['wall_s'], 2)} s whole process{split}, peak memory "
             f"{_fmt(s['maxrss_mb'], 0)} MB" + (f"; {s['error']}" if s.get("error") else ""))
    return out


def _gguf_file(spec: str) -> Path | None:
    """The .gguf file behind a model spec (a path, or a registered model fetched as one), else None."""
    from llmscratch.weights.registry import MODELS, local_path

    path = Path(spec)
    if path.suffix == ".gguf" and path.is_file():
        return path
    found = local_path(spec) if spec in MODELS else None
    return found if found is not None and found.suffix == ".gguf" else None


def _llama_cpp_peer(spec: str, cfg: GenerateBenchConfig, echo: Callable[[str], None]) -> dict:
    """llama.cpp's files for `spec`: {"tools": Tools, "files": [the file, its copies]}, or {"error": why not}
    (no binary, no .gguf file), printed either way. A copy that cannot be made is left out and said."""
    from llmscratch.bench.llama_cpp import PeerFile, find_tools, gguf_type, make_copy
    from llmscratch.utils import cache_dir

    tools = find_tools(cfg.llama_cpp)
    gguf = _gguf_file(spec)
    why = tools if isinstance(tools, str) else f"{spec} is not a .gguf file" if gguf is None else None
    if why is not None:
        echo(f"llama.cpp peer for {spec}: none ({why})")
        return {"error": why}
    kind = gguf_type(gguf) or "file"
    files = [PeerFile(f"{kind} (the file)", gguf)]
    for copy in cfg.llama_cpp_copies:
        if copy == kind:
            continue
        try:
            files.append(PeerFile(f"{copy} copy", make_copy(tools, gguf, copy, cache_dir() / "gguf-copies")))
        except RuntimeError as e:
            echo(f"llama.cpp {copy} copy of {gguf.name}: none ({e})")
    echo(f"llama.cpp peer: {tools.bench} on {gguf.name} ({', '.join(f.label for f in files)}), {_threads(cfg)} "
         "threads, interleaved with ours; its processes run without our OpenMP tuning (OMP_WAIT_POLICY unset: "
         "llama.cpp's own default)")
    return {"tools": tools, "files": files}


def _quantized_copies(model, formats, spec: str | None = None) -> dict:
    """{format: a quantized copy of `model`} as `--quantize FMT` makes it: a deep copy through
    model/quant.quantize_loaded, or for "gguf" the file behind `spec` loaded again with its blocks kept."""
    import copy

    from llmscratch.model.quant import quantize_loaded
    from llmscratch.weights import load_model

    return {fmt: load_model(spec, quantize="gguf", progress=False).model.eval() if fmt == "gguf"
            else quantize_loaded(copy.deepcopy(model), fmt) for fmt in formats}


def read_bytes(model) -> int:
    """Bytes of weights one new token reads: every tensor of the state dict once (quantized buffers included),
    but a table that is only looked up (an embedding that is not also the head) one row."""
    from torch import nn

    linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    seen, total = set(), 0
    for t in model.state_dict(keep_vars=True).values():
        if id(t) in seen:
            continue
        seen.add(id(t))
        only_looked_up = id(t) in lookups and id(t) not in linear
        total += (t.shape[-1] if only_looked_up else t.numel()) * t.element_size()
    return total


def weight_bytes_per_token(model, quantized: dict) -> dict[str, int]:
    """{float32, int8, int4: bytes read per new token}, from the quantized copies at hand (or made for the count)."""
    return {"float32": read_bytes(model),
            **{fmt: read_bytes(quantized[fmt]) if fmt in quantized else read_bytes(_quantized_copies(model, [fmt])[fmt])
               for fmt in ("int8", "int4")},
            **{fmt: read_bytes(q) for fmt, q in quantized.items() if fmt not in ("int8", "int4")}}


def agreement(a: list[int], b: list[int]) -> int:
    """Tokens generated alike before the first difference."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _limits(sec: _Section, bw) -> dict[str, float]:
    """Batch-1 decode limit per weight format: bandwidth / bytes read per token."""
    return {fmt: bw.matvec_gbs * 1e9 / b for fmt, b in sec.bytes_per_token.items()}


def _results(sec: _Section, tokens, limits: dict[str, float]) -> list[dict]:
    rows = []
    for v in sec.variants:
        for n in tokens:
            ts = sec.times[(v.name, n)]
            if not ts:
                continue
            med = common.median(ts)
            rows.append({
                "model": sec.loaded.name, "variant": v.name, "impl": v.impl, "cache": v.cache, "note": v.note,
                "weights": v.fmt, "new_tokens": n, "times_s": [round(t, 4) for t in ts], "median_s": round(med, 4),
                "tokens_per_s": round(n / med, 2), "fraction_of_limit": round(n / med / limits[v.fmt], 3),
            })
    return rows


def run_generate_bench(cfg: GenerateBenchConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure, print a table per model, write JSON + PNG into cfg.out; returns the JSON content.

    The JSON's top-level "model", "decode_limit_tokens_per_s" and "ratios" describe the first model (as in a
    one-model run); "models" has one section per model (with its "llama_cpp" peer, "prefill" and "startup");
    "results" holds every model's rows.
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
    torch.set_num_threads(_threads(cfg))
    try:
        machine = common.machine_info()
        echo(common.format_machine(machine))
        sections = [_bench_model(spec, _model_config(spec, cfg, echo), echo) for spec in specs]
        peak_mb = common.peak_memory_mb()  # before the bandwidth test's large arrays

        matrix, total = ((32 << 20), (64 << 20)) if cfg.quick else ((512 << 20), (1 << 30))
        # the matrix on the pages our weights sit on, so that each limit is that of the same memory
        bw = common.measure_bandwidth(matrix, total, huge_pages=any(sec.huge_pages for sec in sections))
        ours = "-" if bw.kernel_gbs is None else f"{bw.kernel_gbs:.1f}"
        pages = " on 2 MB pages" if bw.huge_pages else ""
        echo(f"memory bandwidth: matrix-vector {bw.matvec_gbs:.1f} GB/s ({bw.matrix_mb:.0f} MB matrix{pages}; W @ x "
             f"{bw.rows_gbs:.1f}, x @ W {bw.columns_gbs:.1f}, our float32 kernel {ours}), sum {bw.sum_gbs:.1f} GB/s "
             f"({bw.sum_mb:.0f} MB)")

        parts, charts = zip(*(_section_result(sec, _model_config(sec.spec, cfg), bw, echo) for sec in sections))
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
             f"peak memory of this benchmark process while generating (every variant at once) "
             f"{data['peak_memory_mb']:.0f} MB (maxrss); wall time {data['wall_s']:.0f} s")
        cfg.out.mkdir(parents=True, exist_ok=True)
        json_path = common.write_json(cfg.out / JSON_NAME, data)
        png_path = _chart(cfg, charts, machine)
        echo(f"wrote {json_path} and {png_path}")
        return data
    finally:
        torch.set_num_threads(threads_before)


def _section_result(sec: _Section, cfg: GenerateBenchConfig, bw, echo: Callable[[str], None]) -> tuple[dict, tuple]:
    """One model's JSON section (rates as shares of its bandwidth limit, ratios, llama.cpp) and chart data;
    prints its tables."""
    limits = _limits(sec, bw)
    results = _results(sec, cfg.tokens, limits)
    rate = {(r["variant"], r["new_tokens"]): r["tokens_per_s"] for r in results}
    ratios = _ratios(rate, cfg.tokens, sec.with_hf)
    prefill = {name: round(cfg.prefill_tokens / common.median(ts), 1) for name, ts in sec.prefill.items() if ts}
    peer = _peer_json(sec.peer)
    peer_ratios = _peer_ratios(sec, rate, prefill, peer, cfg.tokens)
    echo("")
    echo(f"{sec.loaded.name}: batch-1 decode limit = bandwidth / bytes per token = {bw.matvec_gbs:.1f} GB/s / "
         + ", ".join(f"{sec.bytes_per_token[f] / 1e6:.1f} MB ({f})" for f in limits) + " = "
         + ", ".join(f"{limits[f]:.1f} ({f})" for f in limits) + " tokens/s")
    echo(_table(sec.variants, cfg.tokens, rate, limits))
    for line in _ratio_lines(ratios, cfg.tokens):
        echo(line)
    for line in _peer_lines(sec, cfg, rate, prefill, peer, peer_ratios):
        echo(line)
    part = {
        "model": {"spec": sec.spec, "name": sec.loaded.name, "source": sec.loaded.source,
                  "family": sec.loaded.model.config.family, "params": sec.params,
                  "bytes_read_per_token": sec.bytes_per_token["float32"], "dtype": "float32",
                  "bytes_read_per_token_by_weights": sec.bytes_per_token,
                  "weights_on_2mb_pages": sec.huge_pages},
        "decode_limit_tokens_per_s": round(limits["float32"], 2),
        "decode_limits_tokens_per_s": {f: round(v, 2) for f, v in limits.items()},
        "outputs_identical": sec.outputs_identical,
        "results": results,
        "ratios": ratios,
        "prefill": {"prompt_tokens": cfg.prefill_tokens, "tokens_per_s": prefill},
        "llama_cpp": peer,
        "ours_over_llama_cpp": peer_ratios,
        "startup": sec.startup,
    }
    return part, (sec.loaded.name, sec.variants, rate, limits, peer)


def _peer_json(peer: dict) -> dict:
    """llama.cpp's figures (medians over rounds) per file, or {"error": why}."""
    if "error" in peer:
        return {"error": peer["error"]}
    files = []
    for f in peer["files"]:
        files.append({
            "label": f.label, "file": str(f.path), "model_type": f.model_type, "file_bytes": f.model_bytes,
            "decode_tokens_per_s": {n: round(common.median(v), 2) for n, v in f.decode.items()},
            "decode_rounds": {n: [round(x, 2) for x in v] for n, v in f.decode.items()},
            "prefill_tokens_per_s": round(common.median(f.prefill), 1) if f.prefill else None,
            "peak_memory_mb": round(f.maxrss_mb, 1), "error": f.error,
        })
    return {"binary": str(peer["tools"].bench), "files": files}


def _peer_pairs(sec: _Section, peer: dict) -> list[tuple[str, str]]:
    """(our variant, llama.cpp file label) pairs: each of our formats against the file as is and against the
    copy at its own precision (float32: F32, int8: Q8_0)."""
    if "error" in peer or not peer["files"]:
        return []
    labels = [f["label"] for f in peer["files"]]
    same = {"float32": "F32 copy", "int8": "Q8_0 copy"}
    pairs = []
    for v in sec.variants:
        if v.impl != "ours" or not v.cache or v.name == TORCH_MATMUL:
            continue
        pairs.append((v.name, labels[0]))
        if same.get(v.fmt) in labels:
            pairs.append((v.name, same[v.fmt]))
    return pairs


def _peer_ratios(sec: _Section, rate: dict, prefill: dict, peer: dict, tokens) -> list[dict]:
    files = {f["label"]: f for f in peer.get("files", [])}
    out = []
    for ours, label in _peer_pairs(sec, peer):
        theirs = files[label]
        decode = {n: round(rate[(ours, n)] / theirs["decode_tokens_per_s"][n], 2) for n in tokens
                  if (ours, n) in rate and theirs["decode_tokens_per_s"].get(n)}
        pre = (round(prefill[ours] / theirs["prefill_tokens_per_s"], 2)
               if ours in prefill and theirs["prefill_tokens_per_s"] else None)
        out.append({"ours": ours, "llama_cpp": label, "decode": decode, "prefill": pre})
    return out


def _peer_lines(sec: _Section, cfg, rate: dict, prefill: dict, peer: dict, peer_ratios: list[dict]) -> list[str]:
    """The side-by-side table of ours and llama.cpp (or why there is no peer), and the ratios."""
    lines = [""]
    if "error" in peer:
        return lines + [f"llama.cpp: none ({peer['error']}); the llama.cpp columns are empty"]
    lines.append(f"ours and llama.cpp ({peer['binary']}), {_threads(cfg)} threads: new tokens/s after a "
                 f"{cfg.prompt_tokens}-token prompt (llama-bench -pg {cfg.prompt_tokens},N, timed as ours), prefill "
                 f"tokens/s over {cfg.prefill_tokens} tokens, peak memory and start-up of a whole process")
    headers = ["variant", *(f"{n} new" for n in cfg.tokens), f"prefill {cfg.prefill_tokens}", "peak memory",
               "start-up"]
    rows = []
    for v in sec.variants:
        if v.impl == "ours" and v.cache:
            s = sec.startup.get(v.fmt) if v.name != TORCH_MATMUL else None
            rows.append([v.name, *(_fmt(rate.get((v.name, n))) for n in cfg.tokens), _fmt(prefill.get(v.name)),
                         f"{_fmt(s['maxrss_mb'], 0)} MB" if s else "-", f"{_fmt(s['wall_s'], 2)} s" if s else "-"])
    for f in peer["files"]:
        s = sec.startup.get(f"llama.cpp {f['label']}")
        if f["error"]:
            lines.append(f"llama.cpp {f['label']}: {f['error']}")
        rows.append([f"llama.cpp, {f['label']}", *(_fmt(f["decode_tokens_per_s"].get(n)) for n in cfg.tokens),
                     _fmt(f["prefill_tokens_per_s"]), f"{f['peak_memory_mb']:.0f} MB",
                     f"{_fmt(s['wall_s'], 2)} s" if s else "-"])
    lines.append(common.format_table(headers, rows))
    for r in peer_ratios:
        shown = ", ".join(f"{r['decode'][n]:.2f}x at {n}" for n in cfg.tokens if n in r["decode"])
        pre = f"; prefill {r['prefill']:.2f}x" if r["prefill"] is not None else ""
        lines.append(f"{r['ours']} / llama.cpp {r['llama_cpp']}: decode {shown or '-'}{pre}")
    return lines


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ratios(rate: dict, tokens, with_hf: bool) -> dict[str, dict[int, float]]:
    def ratio(a: str, b: str) -> dict[int, float]:
        return {n: round(rate[(a, n)] / rate[(b, n)], 2) for n in tokens if (a, n) in rate and (b, n) in rate}

    out = {
        "ours_cache_over_ours_no_cache": ratio("ours, KV cache", "ours, no cache"),
        "ours_kernel_over_torch_matmul": ratio("ours, KV cache", TORCH_MATMUL),
    }
    for fmt in ("int8", "int4", "gguf"):
        if (f"ours, KV cache, {fmt}", tokens[0]) in rate:
            out[f"ours_{fmt}_over_ours_float32"] = ratio(f"ours, KV cache, {fmt}", "ours, KV cache")
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


def _table(variants, tokens, rate: dict, limits: dict[str, float]) -> str:
    headers = ["new tokens/s (share of its limit)", *(f"{n} new" for n in tokens)]
    rows = []
    for v in variants:
        limit = limits[v.fmt]
        cells = [f"{rate[(v.name, n)]:.1f} ({rate[(v.name, n)] / limit:.0%})" if (v.name, n) in rate else "-"
                 for n in tokens]
        rows.append([f"{v.name} [{v.note}]" if v.fmt != "float32" else v.name, *cells])
    for fmt, limit in limits.items():
        rows.append([f"memory-bandwidth limit, {fmt} weights", *(f"{limit:.1f} (100%)" for _ in tokens)])
    return common.format_table(headers, rows)


def _chart(cfg, charts: list, machine: dict) -> Path:
    """One panel per model: tokens/s of each variant (and llama.cpp's files) against new tokens, and the
    bandwidth limit of each weight size."""
    load = machine.get("load_avg_1_5_15min") or ["?"]
    note = f"medians of interleaved runs; load average {load[0]} at start"
    threads = machine["torch_threads"]
    panels = [(name, _series(cfg.tokens, variants, rate, peer),
               {f"bandwidth limit, {fmt} weights": limit for fmt, limit in limits.items()})
              for name, variants, rate, limits, peer in charts]
    if len(panels) == 1:
        return common.line_chart(
            cfg.out / PNG_NAME, panels[0][1], title=f"Batch-1 greedy decoding, {panels[0][0]}, CPU ({threads} threads)",
            xlabel="new tokens generated", ylabel="new tokens per second (log scale)", hlines=panels[0][2],
            logy=True, note=note,
        )
    return common.panel_chart(cfg.out / PNG_NAME, panels, f"Batch-1 greedy decoding, CPU ({threads} threads)",
                              xlabel="new tokens generated", ylabel="new tokens per second (log scale)", logy=True,
                              note=note)


def _series(tokens, variants, rate: dict, peer: dict | None = None) -> dict:
    series = {}
    for v in variants:
        xs = [n for n in tokens if (v.name, n) in rate]
        if xs:
            series[v.name] = (xs, [rate[(v.name, n)] for n in xs])
    for f in (peer or {}).get("files", []):
        xs = [n for n in tokens if f["decode_tokens_per_s"].get(n)]
        if xs:
            series[f"llama.cpp, {f['label']}"] = (xs, [f["decode_tokens_per_s"][n] for n in xs])
    return series
