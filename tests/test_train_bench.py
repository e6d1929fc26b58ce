"""`bench train --quick`: both models hold the same weights, every case is timed, MFU and ratios are reported."""

from __future__ import annotations

import json

import pytest

from llmscratch.bench.train import TrainBenchConfig, run_train_bench
from llmscratch.cli import build_parser
from llmscratch.config import from_args
from llmscratch.model import get_config


def test_flops_per_token_of_gpt2_124m():
    from llmscratch.bench.train import train_flops_per_token

    f = train_flops_per_token(get_config("gpt2-124m"), 256)
    # 6 x (85M block matmul params + 38.6M head) + attention: about 0.76 GFLOP per token
    assert f == 6 * (12 * 12 * 768 * 768 + 50257 * 768) + 12 * 12 * 256 * 768


def test_quick_bench_compares_same_weights(tmp_path):
    pytest.importorskip("transformers")
    cfg = TrainBenchConfig.quick_run()
    cfg.compiled, cfg.repeats, cfg.out_dir, cfg.progress = False, 2, str(tmp_path), False
    r = run_train_bench(cfg)
    assert r.max_logit_diff is not None and r.max_logit_diff < 1e-4
    assert set(r.cases) == {"ours eager", "transformers eager"}
    assert r.peak_gflops > 0 and all(0 < c["mfu"] < 1.5 for c in r.cases.values())
    assert r.ratios["eager"] > 0 and r.round_ratios["eager"] > 0
    saved = json.loads((tmp_path / "bench_train.json").read_text())
    assert saved["cases"]["ours eager"]["tokens_per_s"] == pytest.approx(r.cases["ours eager"]["tokens_per_s"])
    assert (tmp_path / "bench_train.png").read_bytes()[:4] == b"\x89PNG"


def test_flags():
    def parse(*argv):
        return from_args(TrainBenchConfig, build_parser().parse_args(["bench", "train", *argv]))

    quick = parse("--quick")
    assert quick.preset == "gpt2-tiny" and not quick.compiled
    assert parse("--quick", "--compile").compiled and parse("--quick", "--batch-size", "2").batch_size == 2
    full = parse("--batch-size", "4", "--no-compile")
    assert full.preset == "gpt2-124m" and full.batch_size == 4 and not full.compiled and full.eager
