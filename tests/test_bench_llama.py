"""Smoke test of the Llama path of the generation benchmark (llama-tiny, random weights, seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from llmscratch.bench.generate import GenerateBenchConfig, run_generate_bench


def test_bench_generate_llama_tiny_against_transformers(tmp_path):
    pytest.importorskip("transformers")
    lines: list[str] = []
    cfg = GenerateBenchConfig.quick_run(model="llama-tiny", threads=1, out=tmp_path, progress=False)
    data = run_generate_bench(cfg, echo=lines.append)
    text = "\n".join(lines)
    assert "llama-tiny" in text and "decode limit" in text and "transformers, KV cache" in text
    saved = json.loads((tmp_path / "bench_generate.json").read_text())
    assert saved["outputs_identical"] is True  # ours and LlamaForCausalLM on the same weights, greedy
    assert saved["model"]["family"] == "llama" and saved["models"][0]["model"]["name"] == "llama-tiny"
    variants = {r["variant"] for r in saved["results"]}
    assert {"ours, KV cache", "transformers, KV cache", "transformers, no cache"} <= variants
    assert all(r["tokens_per_s"] > 0 and 0 < r["fraction_of_limit"] for r in saved["results"])
    assert {int(n) for n in saved["ratios"]["ours_cache_over_transformers_cache"]} == set(cfg.tokens)
    # bytes per token: the tied 512 x 32 table is read once (as the head), not twice
    model_params = saved["model"]["params"]
    assert saved["model"]["bytes_read_per_token"] == 4 * model_params
    assert data["results"] == saved["results"]
    assert (tmp_path / "bench_generate.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_generate_two_models_share_one_json_and_chart(tmp_path):
    pytest.importorskip("transformers")
    threads = torch.get_num_threads()
    cfg = GenerateBenchConfig.quick_run(model="gpt2-tiny,llama-tiny", tokens=(3,), repeats=1, threads=1,
                                        out=tmp_path, progress=False)
    data = run_generate_bench(cfg, echo=lambda _: None)
    assert torch.get_num_threads() == threads
    assert [m["model"]["family"] for m in data["models"]] == ["gpt2", "llama"]
    assert {r["model"] for r in data["results"]} == {"gpt2-tiny", "llama-tiny"}
    assert data["outputs_identical"] is True
    assert (tmp_path / "bench_generate.png").read_bytes()[:4] == b"\x89PNG"
