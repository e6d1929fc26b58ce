"""Every DPO run on SmolLM2-135M-Instruct in one picture: test reward accuracy against margin, with the goal lines.

    python benchmarks/plot_dpo_runs.py [--runs docs/dpo-runs.csv] [--out docs/dpo-runs.png]
    python benchmarks/plot_dpo_runs.py --add runs/dpo/report.json --session 13   # append a run, then plot

The runs are rows of a CSV (docs/dpo-runs.csv: the figures docs/dpo.md reports, one row per run). `--add` appends
the test figures of a `finetune dpo` report.json to it. The margin is in the book's unit (margin / beta, the
per-token mean of log-probability gains), so runs with different beta compare; the issue's goals are an accuracy
above 90% on the 110 test pairs and a margin above the book's 1.98.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = ["session", "trainable", "beta", "sft_weight", "lr", "epochs", "reduction", "steps", "test_correct",
          "test_pairs", "margin_book", "chosen_reward", "note"]
BOOK_MARGIN, GOAL_ACCURACY = 1.98, 0.90


def short_float(x: float) -> str:
    """2e-05 -> "2e-5", 0.0002 -> "2e-4", 2.25e-05 -> "2.25e-5" (as the docs write learning rates)."""
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def row_from_report(path: Path, session: str) -> dict:
    """One CSV row from a `finetune dpo` report.json."""
    report = json.loads(path.read_text())
    c, test = report["config"], report["after"]["test"]
    return {"session": session, "trainable": c["trainable"], "beta": c["beta"], "sft_weight": c["sft_weight"],
            "lr": short_float(c["lr"]), "epochs": c["epochs"], "reduction": c["reduction"], "steps": report["steps"],
            "test_correct": round(test["accuracy"] * test["pairs"]), "test_pairs": test["pairs"],
            "margin_book": round(test["margin"] / c["beta"], 2), "chosen_reward": round(test["chosen_reward"], 3),
            "note": ""}


def label(r: dict) -> str:
    what = "plain" if float(r["sft_weight"]) == 0 else f"W {r['sft_weight']}"
    extra = [r["trainable"]] if r["trainable"] != "all" else []
    extra += [f"{r['epochs']} ep"] if int(r["epochs"]) > 1 else []
    extra += [r["reduction"]] if r["reduction"] != "mean" else []
    extra += ["SFT on chosen first"] if "SFT on the chosen" in r["note"] else []
    return f"s{r['session']}: b {r['beta']}, {what}, lr {r['lr']}" + (f" ({', '.join(extra)})" if extra else "")


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, key) = plt.subplots(1, 2, figsize=(12, 5.5), gridspec_kw={"width_ratios": [3, 1.6]})
    ax.set_xscale("log")
    ax.set_xlim(0.8, 12)
    ax.set_ylim(0.76, 0.95)
    ax.fill_between([BOOK_MARGIN, 12], GOAL_ACCURACY, 0.95, color="#e8f5e9", zorder=0, label="both goals met")
    ax.axhline(GOAL_ACCURACY, color="green", lw=1, ls="--", label="accuracy 90% (more: 100 of 110 pairs)")
    ax.axvline(BOOK_MARGIN, color="purple", lw=1, ls="--", label="the book's margin, 1.98")
    lines = []
    for n, r in enumerate(rows, 1):
        x, y = float(r["margin_book"]), int(r["test_correct"]) / int(r["test_pairs"])
        plain = float(r["sft_weight"]) == 0
        ax.scatter(x, y, marker="x" if plain else "o", color="gray" if plain else "tab:blue", zorder=3)
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 3 if n % 2 else -10), fontsize=8)
        lines.append(f"{n:>2}  {r['test_correct']}/{r['test_pairs']}  {x:5.2f}  {label(r)}")
    ax.set_xlabel("test reward margin, book's unit (margin / beta; log scale)")
    ax.set_ylabel("test reward accuracy (110 pairs)")
    ax.set_title(f"DPO on SmolLM2-135M-Instruct: {len(rows)} runs (x: plain DPO, o: with the likelihood term W)",
                 fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    key.axis("off")
    key.text(0, 1, " n  right  margin  run\n" + "\n".join(lines), family="monospace", fontsize=7.5, va="top")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, default=ROOT / "docs" / "dpo-runs.csv", help="the CSV of runs")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "dpo-runs.png", help="the picture to write")
    ap.add_argument("--add", type=Path, action="append", default=[], help="a run's report.json to append first")
    ap.add_argument("--session", default="?", help="the session column of the rows --add appends")
    args = ap.parse_args()
    if args.add:
        with args.runs.open("a", newline="") as f:
            writer = csv.DictWriter(f, FIELDS, lineterminator="\n")
            for path in args.add:
                writer.writerow(row_from_report(path, args.session))
    with args.runs.open(newline="") as f:
        rows = list(csv.DictReader(f))
    plot(rows, args.out)
    best = max(rows, key=lambda r: (int(r["test_correct"]), float(r["margin_book"])))
    print(f"{len(rows)} runs -> {args.out}; most pairs right: {label(best)}: {best['test_correct']}/"
          f"{best['test_pairs']}, margin {best['margin_book']}")


if __name__ == "__main__":
    main()
