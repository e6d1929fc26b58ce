"""Tokenizer speed: encoding MB/s against a baseline encoder measured in the same run, and training time.

Encoders are timed interleaved (ours, baseline, ours, baseline, ...) so that changes in machine load hit
both alike; the median of the repeats is reported. Our chunk cache is emptied before every timed run, so
each run pays for merging every distinct chunk of the text once. The baseline (e.g. tiktoken) is passed
in by the caller: this package never imports test oracles.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmscratch.tokenizer.bpe import Tokenizer
from llmscratch.tokenizer.train import train

MIRROR_TEXT_FILES = (
    "the-verdict.txt",
    "SMSSpamCollection",
    "instruction-data.json",
    "instruction-data-with-preference.json",
)


def mirror_text_files() -> list[Path]:
    """The text files of the data mirror ($LLMSCRATCH_DATA_MIRROR) that exist."""
    mirror = os.environ.get("LLMSCRATCH_DATA_MIRROR")
    if not mirror:
        return []
    return [Path(mirror) / name for name in MIRROR_TEXT_FILES if (Path(mirror) / name).is_file()]


def benchmark_text(min_bytes: int = 5_000_000, files: Sequence[Path] = ()) -> tuple[str, str]:
    """English text of at least `min_bytes` UTF-8 bytes from what exists offline, and a description.

    The given files and the text of Python's `pydoc_data.topics` (the help pages) are concatenated, and
    the whole is repeated until it is long enough.
    """
    from pydoc_data.topics import topics

    parts = [Path(f).read_text(encoding="utf-8") for f in files]
    parts.append("\n\n".join(topics[k] for k in sorted(topics)))
    base = "\n".join(parts)
    size = len(base.encode("utf-8"))
    copies = -(-min_bytes // size)
    names = ", ".join(Path(f).name for f in files)
    description = f"{names + ' + ' if names else ''}pydoc_data.topics ({size / 1e6:.2f} MB) repeated {copies}x"
    return base * copies, description


@dataclass
class TokenizerBenchmark:
    """Measured figures; MB means 10**6 bytes of UTF-8 text."""

    text_mb: float
    text_source: str
    repeats: int
    ours_mb_s: float
    ours_runs_mb_s: list[float]
    baseline_name: str | None
    baseline_mb_s: float | None
    baseline_runs_mb_s: list[float]
    same_ids: bool | None
    n_tokens: int
    train_vocab_size: int
    train_mb: float
    train_seconds: float
    loadavg_before: tuple[float, float, float]
    loadavg_after: tuple[float, float, float]

    @property
    def ratio(self) -> float | None:
        """Our speed divided by the baseline's."""
        return self.ours_mb_s / self.baseline_mb_s if self.baseline_mb_s else None

    def format(self) -> str:
        def load(x: tuple[float, float, float]) -> str:
            return " ".join(f"{v:.2f}" for v in x)

        lines = [
            f"text: {self.text_mb:.2f} MB, {self.n_tokens:,} tokens; {self.text_source}",
            f"encode (single thread, median of {self.repeats}, cold chunk cache each run):",
            f"  ours      {self.ours_mb_s:6.2f} MB/s   runs: {', '.join(f'{v:.2f}' for v in self.ours_runs_mb_s)}",
        ]
        if self.baseline_mb_s is not None:
            runs = ", ".join(f"{v:.2f}" for v in self.baseline_runs_mb_s)
            lines.append(f"  {self.baseline_name:<9} {self.baseline_mb_s:6.2f} MB/s   runs: {runs}")
            lines.append(f"  ratio     {self.ratio:6.2f}x   same ids: {self.same_ids}")
        lines.append(
            f"train: {self.train_vocab_size} tokens on {self.train_mb:.2f} MB in {self.train_seconds:.1f} s"
        )
        lines.append(f"load average (1, 5, 15 min): before {load(self.loadavg_before)}, "
                     f"after {load(self.loadavg_after)}; {os.cpu_count()} CPUs")
        return "\n".join(lines)


def run_tokenizer_benchmark(
    tokenizer: Tokenizer,
    text: str,
    text_source: str = "",
    baseline: Callable[[str], Sequence[int]] | None = None,
    baseline_name: str = "baseline",
    repeats: int = 5,
    train_vocab_size: int = 10_000,
    train_bytes: int = 5_000_000,
) -> TokenizerBenchmark:
    """Time `tokenizer.encode_ordinary` (and `baseline`, interleaved) on `text`, then time training a
    `train_vocab_size` vocabulary on the first `train_bytes` bytes of `text`."""
    loadavg_before = os.getloadavg()
    mb = len(text.encode("utf-8")) / 1e6
    ours_ids = tokenizer.encode_ordinary(text)
    same_ids = list(baseline(text)) == ours_ids if baseline is not None else None
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(repeats):
        tokenizer.clear_cache()
        start = time.perf_counter()
        tokenizer.encode_ordinary(text)
        ours.append(mb / (time.perf_counter() - start))
        if baseline is not None:
            start = time.perf_counter()
            baseline(text)
            theirs.append(mb / (time.perf_counter() - start))
    train_text = text.encode("utf-8")[:train_bytes].decode("utf-8", errors="ignore")
    start = time.perf_counter()
    train(train_text, train_vocab_size, ["<|endoftext|>"])
    train_seconds = time.perf_counter() - start
    return TokenizerBenchmark(
        text_mb=mb,
        text_source=text_source,
        repeats=repeats,
        ours_mb_s=statistics.median(ours),
        ours_runs_mb_s=ours,
        baseline_name=baseline_name if baseline is not None else None,
        baseline_mb_s=statistics.median(theirs) if theirs else None,
        baseline_runs_mb_s=theirs,
        same_ids=same_ids,
        n_tokens=len(ours_ids),
        train_vocab_size=train_vocab_size,
        train_mb=len(train_text.encode("utf-8")) / 1e6,
        train_seconds=train_seconds,
        loadavg_before=loadavg_before,
        loadavg_after=os.getloadavg(),
    )
