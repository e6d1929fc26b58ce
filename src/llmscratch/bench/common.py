"""Pieces every benchmark shares: the machine header (load, threads, OpenMP policy), memory bandwidth,
interleaved timing with medians, peak memory, the JSON + PNG writers, and transformers' twin of our model.

Benchmarks on a shared machine are noisy: compare variants measured in the same run, interleaved
(A, B, A, B, ...) so that a burst of load hits all of them alike, and report medians.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmscratch.utils import atomic_write_text

# torch is imported inside the functions: `llmscratch --help` builds the benchmarks' flags without it.

GB = 1e9


# ---------------------------------------------------------------------------------------------- the machine


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What shapes a timing on this machine: load, cores, threads, OpenMP wait policy, versions."""
    import torch

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "load_avg_1_5_15min": load,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def format_machine(info: Mapping[str, Any]) -> str:
    """One line per fact."""
    load = info.get("load_avg_1_5_15min")
    lines = [
        f"machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']} with {info['torch_threads']} "
        f"threads; OMP_WAIT_POLICY={info['OMP_WAIT_POLICY']} OMP_NUM_THREADS={info['OMP_NUM_THREADS']}",
        f"load average (1/5/15 min): {' / '.join(str(x) for x in load) if load else 'unknown'}"
        + (f"  (busy: more than {info['cores']} cores' worth; timings are noisy"
           + ("; OMP_WAIT_POLICY=PASSIVE avoids spinning threads fighting over busy cores"
              if info["OMP_WAIT_POLICY"] == "unset" and info["torch_threads"] > 1 else "") + ")"
           if load and info["cores"] and load[0] > info["cores"] else ""),
    ]
    return "\n".join(lines)


def peak_memory_mb() -> float:
    """The process's peak resident memory so far, in MB (getrusage maxrss)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1e6 if sys.platform == "darwin" else rss * 1024 / 1e6  # bytes on macOS, KiB on Linux


@dataclass
class Bandwidth:
    """Memory bandwidth in GB/s: matrix-vector products over a matrix much larger than the caches (each weight
    read once, as in batch-1 decoding; `W @ x` streams rows, `x @ W` streams columns, our float32 kernel streams
    rows; the best counts), and a plain sum over a large vector."""

    matvec_gbs: float  # the best of the products
    rows_gbs: float  # torch.mv(W, x): W stored (out, in), one dot product per output
    columns_gbs: float  # x @ W: W stored (in, out), scaled rows added up
    sum_gbs: float
    matrix_mb: float
    sum_mb: float
    kernel_gbs: float | None = None  # our float32 kernel's W @ x (quant_kernel.float_linear); None without it
    huge_pages: bool = False  # the matrix sat on 2 MB pages (as the weights of `bench generate`'s variants)


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first touch, page faults
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _product_gbs(matrix_bytes: int, repeats: int, huge_pages: bool = False) -> tuple[float, float, float | None, bool]:
    import torch
    from torch import nn

    from llmscratch.model.base import move_to_huge_pages
    from llmscratch.model.quant_kernel import float_linear

    cols = 4096
    rows = max(1, matrix_bytes // (4 * cols))
    w = torch.randn(rows, cols)
    if huge_pages:
        holder = nn.Module()
        holder.register_buffer("w", w)
        huge_pages = move_to_huge_pages(holder) > 0  # `w` itself now reads from 2 MB pages
    x_in, x_out = torch.randn(cols), torch.randn(1, rows)
    nbytes = w.numel() * 4
    by_rows = nbytes / _median_time(lambda: torch.mv(w, x_in), repeats) / GB
    by_columns = nbytes / _median_time(lambda: x_out @ w, repeats) / GB
    with torch.no_grad():
        ours = None if float_linear(x_in[None], w) is None else (
            nbytes / _median_time(lambda: float_linear(x_in[None], w), repeats) / GB)
    return by_rows, by_columns, ours, huge_pages


def _sum_gbs(sum_bytes: int, repeats: int) -> float:
    import torch

    big = torch.ones(max(1, sum_bytes // 4))
    return big.numel() * 4 / _median_time(big.sum, repeats) / GB


def measure_bandwidth(matrix_bytes: int = 512 << 20, sum_bytes: int = 1 << 30, repeats: int = 7,
                      huge_pages: bool = False) -> Bandwidth:
    """Bytes read per second by matrix-vector products over a float32 matrix of `matrix_bytes` (on 2 MB pages
    with `huge_pages`, where the system gives them), and by a sum over `sum_bytes` (medians of `repeats`)."""
    rows, columns, ours, on_huge_pages = _product_gbs(matrix_bytes, repeats, huge_pages)
    total = _sum_gbs(sum_bytes, repeats)
    return Bandwidth(round(max(rows, columns, ours or 0.0), 2), round(rows, 2), round(columns, 2), round(total, 2),
                     matrix_bytes / 1e6, sum_bytes / 1e6, None if ours is None else round(ours, 2), on_huge_pages)


# ---------------------------------------------------------------------------------------------- timing


@dataclass
class Case:
    """One thing to time: `run`, with `setup` first (untimed), `repeats` times (None: the common count)."""

    run: Callable[[], object]
    repeats: int | None = None
    setup: Callable[[], object] | None = None


def interleaved_times(
    cases: Mapping[str, Callable[[], object] | Case],
    repeats: int,
    warmup: bool = True,
    progress: bool = True,
    desc: str = "timing",
) -> dict[str, list[float]]:
    """Seconds of each run, {case: [one per repeat]}, running the cases in turn: A, B, C, A, B, C, ...

    A case with fewer repeats drops out of the later rounds. With `warmup`, each case first runs once untimed.
    """
    from tqdm.auto import tqdm

    plan = {name: c if isinstance(c, Case) else Case(c) for name, c in cases.items()}
    counts = {name: repeats if c.repeats is None else c.repeats for name, c in plan.items()}
    if warmup:
        for c in plan.values():
            if c.setup is not None:
                c.setup()
            c.run()
    times: dict[str, list[float]] = {name: [] for name in plan}
    with tqdm(total=sum(counts.values()), desc=desc, disable=not progress, leave=False) as bar:
        for r in range(max(counts.values(), default=0)):
            for name, c in plan.items():
                if r >= counts[name]:
                    continue
                bar.set_postfix_str(name)
                if c.setup is not None:
                    c.setup()
                start = time.perf_counter()
                c.run()
                times[name].append(time.perf_counter() - start)
                bar.update()
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# ---------------------------------------------------------------------------------------------- output


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table, columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([line(cells[0]), line(["-" * w for w in widths]), *(line(r) for r in cells[1:])])


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """`data` as indented JSON (dataclasses converted), written atomically."""

    def convert(o):
        if hasattr(o, "__dataclass_fields__"):
            return asdict(o)
        if isinstance(o, Path):
            return str(o)
        raise TypeError(f"cannot write {type(o).__name__} as JSON")

    atomic_write_text(path, json.dumps(data, indent=2, default=convert) + "\n")
    return Path(path)


Series = Mapping[str, tuple[Sequence[float], Sequence[float]]]  # {label: (xs, ys)}


def line_chart(
    path: str | os.PathLike,
    series: Series,
    title: str,
    xlabel: str,
    ylabel: str,
    hlines: Mapping[str, float] | None = None,
    logy: bool = False,
    note: str | None = None,
) -> Path:
    """A PNG line chart (matplotlib, Agg backend): one line per series {label: (xs, ys)}, dashed horizontal
    reference lines {label: y}, an optional small note under the title. Written atomically."""
    return panel_chart(path, [(None, series, hlines)], title, xlabel, ylabel, logy, note)


def panel_chart(
    path: str | os.PathLike,
    panels: Sequence[tuple[str | None, Series, Mapping[str, float] | None]],
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    note: str | None = None,
) -> Path:
    """Line charts side by side, one per (panel title, series, reference lines), as `line_chart` draws them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from llmscratch.utils import atomic_path

    entries = max(len(series) + len(hlines or {}) for _, series, hlines in panels)
    legend_rows = (entries + 1) // 2  # the legend sits under each panel, in two columns, off the lines
    size = (8, 5 + 0.2 * legend_rows) if len(panels) == 1 else (6.5 * len(panels), 5 + 0.2 * legend_rows)
    fig, axes = plt.subplots(1, len(panels), figsize=size, dpi=110, squeeze=False)
    for ax, (name, series, hlines) in zip(axes[0], panels):
        for label, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", label=label)
        for i, (label, y) in enumerate((hlines or {}).items()):
            ax.axhline(y, linestyle="--", color=f"C{len(series) + i}", label=label)
        if logy:
            ax.set_yscale("log")
        if name:
            ax.set_title(name, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    heading = title + (f"\n{note}" if note else "")
    if len(panels) == 1 and not panels[0][0]:
        axes[0][0].set_title(heading, fontsize=10)
    else:
        fig.suptitle(heading, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------------------------- the reference


def transformers_twin(model, **config_overrides):
    """transformers' model of the same family (GPT2LMHeadModel or LlamaForCausalLM) holding our model's weights,
    float32, in eval mode; None when transformers is not installed (it is a reference, never a dependency)."""
    import torch

    try:
        import transformers
    except ImportError:
        return None
    from llmscratch.weights.hf import tensors_for_transformers

    hf_config, tensors = tensors_for_transformers(model)
    hf_config = {k: v for k, v in hf_config.items() if k not in ("architectures", "model_type", "torch_dtype")}
    family = model.config.family
    classes = {"gpt2": ("GPT2Config", "GPT2LMHeadModel"), "llama": ("LlamaConfig", "LlamaForCausalLM")}
    if family not in classes:
        raise ValueError(f"no transformers counterpart for family {family!r}")
    config_cls, model_cls = (getattr(transformers, name) for name in classes[family])
    hf = model_cls(config_cls(**hf_config, **config_overrides)).to(torch.float32).eval()
    missing, unexpected = hf.load_state_dict(tensors, strict=False)
    # the tied head and GPT-2's stored causal-mask buffers are not weights
    missing = [m for m in missing if m != "lm_head.weight" and not m.endswith((".attn.bias", ".attn.masked_bias"))]
    if missing or unexpected:
        raise RuntimeError(f"weights did not fit transformers' {family}: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf
