"""Loss curves from metrics.jsonl: train and validation loss against steps (and tokens seen), extra metrics."""

from __future__ import annotations

import json
from pathlib import Path

from llmscratch.utils import atomic_path

_BASE_KEYS = {"type", "step", "epoch", "tokens", "lr", "loss", "train_loss", "val_loss", "val_ppl", "tok_per_s",
              "grad_norm", "time", "sample", "eval_train_loss"}


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl file (a damaged last line, from a killed run, is skipped)."""
    records = []
    p = Path(path)
    if not p.is_file():
        return records
    for line in p.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def plot_metrics(records: list[dict], out_png: str | Path, title: str | None = None) -> Path | None:
    """Write a PNG: train/val loss against steps with tokens seen on a top axis, plus a panel of extra eval
    metrics (accuracy, ...) when there are any. Returns the path, or None when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if r.get("type") == "train" and "loss" in r]
    evals = [r for r in records if r.get("type") == "eval"]
    if not train and not evals:
        return None
    extra = sorted({k for r in evals for k, v in r.items() if k not in _BASE_KEYS and isinstance(v, (int, float))})
    fig, axes = plt.subplots(1, 2 if extra else 1, figsize=(11 if extra else 7, 4.2), squeeze=False)
    ax = axes[0][0]
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss (per step)",
                color="tab:blue", alpha=0.45 if evals else 1.0, linewidth=1)
    with_train = [r for r in evals if r.get("eval_train_loss") is not None]
    if with_train:
        ax.plot([r["step"] for r in with_train], [r["eval_train_loss"] for r in with_train], "o-",
                color="tab:blue", label="train loss (eval)", markersize=3)
    with_val = [r for r in evals if r.get("val_loss") is not None]
    if with_val:
        ax.plot([r["step"] for r in with_val], [r["val_loss"] for r in with_val], "o-", color="tab:orange",
                label="validation loss", markersize=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    points = sorted({(r["step"], r["tokens"]) for r in train + evals if "tokens" in r})
    if len(points) >= 2 and points[-1][0] > points[0][0]:
        # tokens seen grow linearly with steps: a second x axis mapping one to the other
        (s0, t0), (s1, t1) = points[0], points[-1]
        rate = (t1 - t0) / (s1 - s0)
        top = ax.secondary_xaxis("top", functions=(lambda s: t0 + (s - s0) * rate, lambda t: s0 + (t - t0) / rate))
        top.set_xlabel("tokens seen")
    if title:
        ax.set_title(title, fontsize=10, pad=28 if len(points) >= 2 else 6)
    if extra:
        ax2 = axes[0][1]
        for k in extra:
            pts = [(r["step"], r[k]) for r in evals if isinstance(r.get(k), (int, float))]
            label = f"train {k[6:]}" if k.startswith("train_") else f"validation {k}"  # TrainMetrics: train_*
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label, markersize=3)
        ax2.set_xlabel("optimizer step")
        ax2.set_title("evaluation metrics" if any(k.startswith("train_") for k in extra)
                      else "metrics on the validation set", fontsize=10)
        ax2.grid(alpha=0.3)
        ax2.legend()
    fig.tight_layout()
    return _save(fig, out_png)


def plot_panels(
    records: list[dict], out_png: str | Path, panels: list[tuple[str, list[tuple[str, str]]]], title: str | None = None
) -> Path | None:
    """A PNG of side-by-side panels against optimizer steps: each panel is (y label, [(key, legend), ...]).

    The key "loss" is the per-step training loss (train records); any other key is read from the eval records.
    Returns the path, or None when no panel has a point.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key: str) -> list[tuple[int, float]]:
        kind = "train" if key == "loss" else "eval"
        return [(r["step"], r[key]) for r in records
                if r.get("type") == kind and isinstance(r.get(key), (int, float))]

    if not any(series(k) for _, lines in panels for k, _ in lines):
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (ylabel, lines) in zip(axes[0], panels):
        for key, label in lines:
            pts = series(key)
            if pts:
                style = {"alpha": 0.45, "linewidth": 1} if key == "loss" else {"marker": "o", "markersize": 3}
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out_png)


def _save(fig, out_png: str | Path) -> Path:
    """Write `fig` to `out_png` atomically and free it; step axes get whole-number ticks (no step 2.5)."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        if ax.get_xlabel() == "optimizer step":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    out_png = Path(out_png)
    try:
        with atomic_path(out_png) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return out_png
