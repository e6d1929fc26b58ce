"""`llmscratch bench serve` runs end to end on a tiny model folder and prints and writes its figures."""

from __future__ import annotations

import json

import torch
from serve_helpers import CHATML, byte_tokenizer

from llmscratch.cli import main
from llmscratch.model import build_model, get_config
from llmscratch.weights.ours import save_pretrained


def test_bench_serve_tiny(tmp_path, capsys):
    config = get_config("llama-tiny", vocab_size=259, context_length=256)
    torch.manual_seed(0)
    folder = save_pretrained(build_model(config), byte_tokenizer(), tmp_path / "model", chat_template=CHATML)
    main(["bench", "serve", "--model", str(folder), "--clients", "1,3", "--requests", "1", "--max-tokens", "6",
          "--max-batch", "4", "--threads", "1", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "tokens/s" in out and "batching on over batching off" in out
    data = json.loads((tmp_path / "out" / "bench_serve.json").read_text())
    assert [r["clients"] for r in data["results"]["on"]] == [1, 3] == [r["clients"] for r in data["results"]["off"]]
    assert all(r["tokens"] == r["clients"] * 6 and r["tokens_per_s"] > 0 for m in ("on", "off")
               for r in data["results"][m])
    assert (tmp_path / "out" / "bench_serve.png").stat().st_size > 1000
