"""DPO's two ways to get the reference, measured: time per optimizer step and peak memory.

    OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python benchmarks/bench_dpo.py \
        [--model smollm2-135m-instruct] [--pairs 32] [--steps 3] [--batch-size 8] [--trainable all,lora]

For each of "all" (full fine-tuning) and "lora": the live reference (a second frozen copy; with LoRA the same
model with adapters off) against reference log-probs computed once before training (what computing them cost is
printed apart). Each way runs in its own process, so peak memory (CUDA allocations on a GPU, else the peak
resident set) is its own. Steps are timed after one warm-up step, on the first `--pairs` training pairs of
instruction-data-preference in the model's chat format (alpaca when it has no chat template).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("LLMSCRATCH_DATA_MIRROR") and (ROOT.parent / "shared" / "data" / "README.md").exists():
    os.environ["LLMSCRATCH_DATA_MIRROR"] = str(ROOT.parent / "shared" / "data")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def one(args) -> dict:
    """Measure one (trainable, reference) way in this process; a dict of figures."""
    import torch

    from llmscratch.model.heads import apply_trainable
    from llmscratch.recipes.dpo import DPOConfig, autocast_for, build_reference, load_pair_splits, peak_memory_mb
    from llmscratch.train.tasks.dpo import DPOTask
    from llmscratch.utils import pick_device
    from llmscratch.weights import load_model

    device = pick_device(args.device)
    torch.manual_seed(0)
    loaded = load_model(args.model, device=device)
    fmt = "chat" if loaded.chat_template else "alpaca"
    cfg = DPOConfig(model=args.model, prompt_format=fmt, trainable=args.trainable, reference=args.reference,
                    max_length=args.max_length)
    splits = load_pair_splits(cfg, fmt, loaded.tokenizer, loaded.chat_template, loaded.model.config.context_length,
                              echo=lambda s: None)
    splits["train"].pairs = splits["train"].pairs[: args.pairs]
    splits = {"train": splits["train"], "val": splits["val"]}
    splits["val"].pairs = splits["val"].pairs[: args.batch_size]
    model = loaded.model
    reference = build_reference(cfg, model, device)
    apply_trainable(model, cfg.trainable, cfg.lora_rank, cfg.lora_alpha, train_head=False)
    task = DPOTask(splits, loaded.tokenizer.eos_id, reference=reference if args.reference == "live" else None)
    autocast = autocast_for(device)
    pre = 0.0
    if args.reference == "precomputed":
        t0 = time.perf_counter()
        task.precompute_reference(model, args.batch_size, device, autocast=autocast, progress=False,
                                  reference=reference)
        pre = time.perf_counter() - t0
        del reference
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-6)
    model.train()
    times = []
    batches = (b for epoch in itertools.count() for b in task.train_batches(epoch, args.batch_size))
    for _ in range(args.steps + 1):
        batch = {k: v.to(device) for k, v in next(batches).items()}
        t0 = time.perf_counter()
        with autocast():
            loss = task.loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"trainable": args.trainable, "reference": args.reference, "s_per_step": sum(times[1:]) / args.steps,
            "precompute_s": pre, "precompute_pairs": len(splits["train"]) + len(splits["val"]),
            "peak_memory_mb": peak_memory_mb(device), "device": str(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs", type=int, default=32, help="training pairs used (default 32)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per way (default 3)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--trainable", default="all,lora", help="comma-separated: all, lora (default both)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reference", default=None, help=argparse.SUPPRESS)  # set for the child processes
    args = parser.parse_args()
    if args.reference:
        print(json.dumps(one(args)))
        return
    print(f"load average {os.getloadavg()[0]:.2f}; model {args.model}, batch {args.batch_size} pairs, "
          f"{args.steps} timed steps each")
    for trainable in args.trainable.split(","):
        for reference in ("live", "precomputed"):
            cmd = [sys.executable, __file__, "--reference", reference, "--trainable", trainable]
            for flag in ("model", "pairs", "steps", "batch_size", "max_length", "device"):
                cmd += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"bench_dpo: {trainable}/{reference} failed:\n{out.stderr[-2000:]}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            pre = (f"; computing the reference once: {r['precompute_s']:.1f} s for {r['precompute_pairs']} pairs"
                   if reference == "precomputed" else "")
            print(f"{trainable:>4} / {reference:<11} {r['s_per_step']:7.2f} s/step  peak memory "
                  f"{r['peak_memory_mb']:8,.0f} MB ({r['device']}){pre}")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
