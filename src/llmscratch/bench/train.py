"""Training throughput: our GPT against transformers' GPT2LMHeadModel, same config, weights and optimizer.

One training step = forward, cross-entropy over every position, backward, AdamW step (fused where available,
weight decay on matrices), gradients cleared. Both models get the same batch and the same loss function, with
the same dropout; eager is compared with eager and torch.compile with torch.compile. The cases run
interleaved (ours, theirs, ours, theirs, ...) together with a large float32 matmul that measures this
machine's peak in the same conditions, so load hits all of them alike; medians are reported.

Model FLOPs per token (the PaLM convention, causal mask not discounted): 6 x (matmul parameters, the head
included) + 12 x layers x context x width for attention scores and values. MFU = achieved / matmul peak.
transformers is imported lazily: it is a benchmark reference, never a dependency.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field

from llmscratch.config import check_fields, setting
from llmscratch.utils import UserError

# torch (and transformers) are imported inside the functions: `llmscratch --help` builds these flags.


@dataclass
class TrainBenchConfig:
    """What to measure (the flags of `llmscratch bench train` and benchmarks/bench_train.py)."""

    preset: str = setting("gpt2-124m", "GPT-2 model preset")
    batch_size: int = setting(8, "sequences per step", ge=1)
    seq_len: int = setting(256, "tokens per sequence", ge=1)
    repeats: int = setting(5, "timed steps per case", ge=1)
    dropout: float = setting(0.0, "dropout of both models", ge=0, lt=1)
    eager: bool = setting(True, "skip the eager cases", switches={"--no-eager": False})
    compiled: bool = setting(True, "the torch.compile cases: --no-compile skips them (compiling takes minutes), "
                             "--compile includes them with --quick",
                             switches={"--compile": True, "--no-compile": False})
    with_transformers: bool = setting(True, "measure our model only", switches={"--no-transformers": False})
    matmul_n: int = setting(4096, "size of the square float32 matmul that measures the peak", ge=1, cli=False)
    seed: int = setting(0, "seed of the weights and the batch", ge=0, cli=False)
    out_dir: str = setting("bench-results", "folder for bench_train.json and .png", flag="--out")
    quick: bool = setting(False, "smoke test in seconds: tiny preset, batch 4 x 32, 3 repeats, eager only",
                          preset="quick_run")
    progress: bool = setting(True, "no progress bar", switches={"--no-progress": False})

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def quick_run(cls) -> TrainBenchConfig:
        """A smoke test of seconds: the tiny preset, short sequences, eager only."""
        return cls(preset="gpt2-tiny", batch_size=4, seq_len=32, repeats=3, matmul_n=512, compiled=False, quick=True)


@dataclass
class CaseResult:
    name: str
    seconds: list[float]
    tokens_per_step: int
    flops_per_token: float

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_per_step / self.median_s

    @property
    def gflops(self) -> float:
        return self.tokens_per_s * self.flops_per_token / 1e9


@dataclass
class TrainBenchResult:
    config: dict
    machine: dict
    peak_gflops: float
    flops_per_token: float
    cases: dict[str, dict] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)  # ours / transformers tokens/s (medians)
    round_ratios: dict[str, float] = field(default_factory=dict)  # median over rounds of the same ratio
    max_logit_diff: float | None = None
    notes: list[str] = field(default_factory=list)


def train_flops_per_token(config, seq_len: int) -> float:
    """Model FLOPs of one training step per token (forward + backward = 3 x forward)."""
    d, L, V = config.emb_dim, config.n_layers, config.vocab_size
    ffn = 4 * d
    matmul_params = L * (d * 3 * d + d * d + 2 * d * ffn) + V * d  # qkv, proj, two FFN layers; the head
    return 6 * matmul_params + 12 * L * seq_len * d


def build_models(cfg: TrainBenchConfig):
    """(ours, theirs or None, config): our GPT from a seed and transformers' GPT-2 holding the same weights."""
    import torch

    from llmscratch.bench.common import transformers_twin
    from llmscratch.model import build_model, get_config

    config = get_config(cfg.preset, dropout=cfg.dropout)
    if cfg.seq_len > config.context_length:
        raise UserError(f"seq_len {cfg.seq_len} exceeds the context length {config.context_length} of {cfg.preset}")
    if config.family != "gpt2":
        raise UserError(f"the training benchmark compares GPT-2 models; {cfg.preset} is {config.family}")
    torch.manual_seed(cfg.seed)
    ours = build_model(config).train()
    if not cfg.with_transformers:
        return ours, None, config
    theirs = transformers_twin(ours, attn_implementation="sdpa")
    if theirs is None:
        raise UserError("the comparison needs transformers (a dev dependency): pip install transformers, or "
                        "pass with_transformers=False", params="with_transformers")
    return ours, theirs.train(), config


def _optimizer(model):
    import torch

    from llmscratch.train.config import TrainConfig
    from llmscratch.train.trainer import build_optimizer

    return build_optimizer(model, TrainConfig(lr=4e-4, weight_decay=0.1), torch.device("cpu"))


def _forward(who: str, model):
    """logits = forward(ids) for our model or transformers' (which returns an output object)."""
    if who == "ours":
        return model
    return lambda ids: model(input_ids=ids, use_cache=False).logits


def _step_fn(forward, optimizer, x, y):
    import torch.nn.functional as F

    def step():
        logits = forward(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def matmul_case(n: int):
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    return lambda: a @ b


def run_train_bench(cfg: TrainBenchConfig) -> TrainBenchResult:
    """Measure, print a table, write bench_train.json and bench_train.png under cfg.out_dir; return the result."""
    import torch

    from llmscratch.bench.common import format_machine, machine_info

    if not (cfg.eager or cfg.compiled):
        raise UserError("nothing to measure: both eager and compiled are off", params=("eager", "compiled"))
    info = machine_info()
    print(format_machine(info))
    ours, theirs, config = build_models(cfg)
    g = torch.Generator().manual_seed(cfg.seed)
    ids = torch.randint(0, config.vocab_size, (cfg.batch_size, cfg.seq_len + 1), generator=g)
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()  # (B, T) each
    flops = train_flops_per_token(config, cfg.seq_len)
    result = TrainBenchResult(config=asdict(cfg), machine=info, peak_gflops=0.0, flops_per_token=flops)
    print(f"{cfg.preset}: {ours.num_params() / 1e6:.3g} M parameters, batch {cfg.batch_size} x {cfg.seq_len} tokens, "
          f"dropout {cfg.dropout}; "
          + (f"{flops / 1e9:.2f} GFLOP" if flops >= 1e8 else f"{flops / 1e6:.3g} MFLOP")
          + " per token per training step")
    if theirs is not None:
        result.max_logit_diff = same_weights_check(ours, theirs, x)
    summarize(cfg, result, timed_cases(cfg, ours, theirs, x, y))
    write_outputs(cfg, result)
    return result


def same_weights_check(ours, theirs, x) -> float:
    """The largest logit difference of the two models on `x` (eval mode); RuntimeError when they disagree."""
    import torch

    with torch.no_grad():
        ours.eval(), theirs.eval()
        diff = (ours(x) - theirs(input_ids=x, use_cache=False).logits).abs().max().item()
        ours.train(), theirs.train()
    print(f"same weights check: max |logit difference| = {diff:.2e}")
    if diff > 1e-3:
        raise RuntimeError(f"the two models disagree (max logit difference {diff}); the comparison is void")
    return diff


def timed_cases(cfg: TrainBenchConfig, ours, theirs, x, y) -> dict[str, list[float]]:
    """Seconds per step of every case (ours/transformers x eager/compiled, and the matmul peak), interleaved."""
    import torch

    from llmscratch.bench.common import interleaved_times

    cases = {}
    for mode in [m for m, on in (("eager", cfg.eager), ("compiled", cfg.compiled)) if on]:
        for who, model in (("ours", ours), ("transformers", theirs)):
            if model is not None:
                target = torch.compile(model) if mode == "compiled" else model
                cases[f"{who} {mode}"] = _step_fn(_forward(who, target), _optimizer(model), x, y)
    cases["matmul peak"] = matmul_case(cfg.matmul_n)
    if cfg.compiled:
        t0 = time.perf_counter()
        for name, fn in cases.items():
            if "compiled" in name:
                fn()  # compile outside the timings
        print(f"compiled in {time.perf_counter() - t0:.0f} s")
    return interleaved_times(cases, cfg.repeats, warmup=True, progress=cfg.progress, desc="train steps")


def summarize(cfg: TrainBenchConfig, result: TrainBenchResult, times: dict[str, list[float]]) -> None:
    """Fill `result` (peak, tokens/s, MFU, ratios) from the timings and print the table."""
    from llmscratch.bench.common import format_table

    peak = CaseResult("matmul", times.pop("matmul peak"), 1, 2 * cfg.matmul_n**3)
    result.peak_gflops = peak.gflops
    rows = []
    for name, secs in times.items():
        c = CaseResult(name, secs, cfg.batch_size * cfg.seq_len, result.flops_per_token)
        mfu = c.gflops / result.peak_gflops
        result.cases[name] = {"seconds": secs, "median_s": c.median_s, "tokens_per_s": c.tokens_per_s,
                              "gflops": c.gflops, "mfu": mfu}
        rows.append([name, f"{c.median_s * 1000:.0f}", f"{c.tokens_per_s:,.0f}", f"{c.gflops:.1f}", f"{mfu:.2f}"])
    for mode in ("eager", "compiled"):
        a, b = result.cases.get(f"ours {mode}"), result.cases.get(f"transformers {mode}")
        if a and b:
            result.ratios[mode] = a["tokens_per_s"] / b["tokens_per_s"]
            # each round ran both back to back: the median of the per-round ratios is less exposed to load drift
            result.round_ratios[mode] = statistics.median(t / o for o, t in zip(a["seconds"], b["seconds"]))
    print(format_table(["case", "step ms", "tokens/s", "GFLOP/s", "MFU"], rows))
    print(f"matmul peak ({cfg.matmul_n}^3 float32, same run): {result.peak_gflops:.1f} GFLOP/s")
    for mode, r in result.ratios.items():
        print(f"ours / transformers, {mode}: {r:.2f}x (ratio of medians; median of per-round ratios "
              f"{result.round_ratios[mode]:.2f}x)")


def write_outputs(cfg: TrainBenchConfig, result: TrainBenchResult) -> None:
    """bench_train.json and bench_train.png (tokens/s of every case per interleaved repeat) in cfg.out_dir."""
    from pathlib import Path

    from llmscratch.bench.common import line_chart, write_json

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = write_json(out / "bench_train.json", result)
    tokens = cfg.batch_size * cfg.seq_len
    series = {name: (list(range(1, len(v["seconds"]) + 1)), [tokens / s for s in v["seconds"]])
              for name, v in result.cases.items()}
    title = f"training tokens/s, {cfg.preset}, batch {cfg.batch_size} x {cfg.seq_len}"
    info = result.machine
    png = line_chart(out / "bench_train.png", series, title=title, xlabel="repeat (interleaved)", ylabel="tokens/s",
                     note=f"load {info.get('load_avg_1_5_15min')}, {info['torch_threads']} threads, matmul peak "
                     f"{result.peak_gflops:.0f} GFLOP/s")
    print(f"wrote {json_path} and {png}")
