"""DistributedDataParallel on CPU (gloo): 2 processes launched by torchrun follow the loss curve of one process
with the same global batch, only rank 0 writes, and both ranks resume from the same checkpoint after a crash."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmscratch.cli import main
from llmscratch.train.checkpoint import list_checkpoints
from llmscratch.train.plots import read_metrics


def pretrain_args(corpus, out, batch_size: int, *extra) -> list[str]:
    return ["pretrain", "--data", str(corpus / "corpus.txt"), "--tokenizer", str(corpus / "tok.json"),
            "--model", "gpt2-tiny", "--context", "16", "--batch-size", str(batch_size), "--max-steps", "8",
            "--eval-every", "4", "--save-every", "3", "--lr", "3e-3", "--device", "cpu", "--no-progress",
            "--sample-tokens", "0", "--out", str(out), *extra]


def torchrun(args: list[str], kill_script=None, kill_after: int | None = None) -> subprocess.CompletedProcess:
    """`torchrun -m llmscratch ARGS` on 2 processes (or the kill script, SIGKILLed after step `kill_after`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    program = ["-m", "llmscratch"] if kill_after is None else [str(kill_script), str(kill_after)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *program, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def losses(out):
    records = read_metrics(out / "metrics.jsonl")
    return ([r["loss"] for r in records if r["type"] == "train"],
            [r["val_loss"] for r in records if r["type"] == "eval"])


@pytest.fixture(scope="module")
def single(tmp_path_factory, corpus):
    """The reference: one process, batch 4."""
    out = tmp_path_factory.mktemp("single") / "run"
    main(pretrain_args(corpus, out, 4))
    return losses(out)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, corpus, single):
    run = torchrun(pretrain_args(corpus, tmp_path / "ddp", 2))  # two processes of batch 2
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 processes, global batch 4" in run.stdout
    assert run.stdout.count("trained 8 steps") == 1  # rank 0 speaks for both
    ddp_train, ddp_val = losses(tmp_path / "ddp")
    assert len(ddp_train) == 8
    assert ddp_train == pytest.approx(single[0], abs=1e-4)
    assert ddp_val == pytest.approx(single[1], abs=1e-4)
    assert [p.name for p in list_checkpoints(tmp_path / "ddp" / "checkpoints")] == [
        "step-00000003", "step-00000006", "step-00000008"]
    assert (tmp_path / "ddp" / "final" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LLMSCRATCH_SLOW"), reason="two more torchrun launches; LLMSCRATCH_SLOW=1")
def test_two_processes_resume_from_the_same_checkpoint(tmp_path, corpus, single, kill_script):
    cut = torchrun(pretrain_args(corpus, tmp_path / "ddp", 2), kill_script, 5)  # both ranks die after step 5
    assert cut.returncode != 0 and "step 4/8" in cut.stdout
    done = torchrun(pretrain_args(corpus, tmp_path / "ddp", 2, "--resume"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("resumed from") == 1 and "step-00000003" in done.stdout
    ddp_train, ddp_val = losses(tmp_path / "ddp")
    assert ddp_train == pytest.approx(single[0], abs=1e-4)
    assert ddp_val == pytest.approx(single[1], abs=1e-4)
