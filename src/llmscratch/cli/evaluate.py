"""`llmscratch evaluate generate | judge | metrics`: answers to a data set split, an LLM judge, offline metrics."""

from __future__ import annotations

import argparse
import dataclasses

from llmscratch.evaluate.judge import JudgeSpec
from llmscratch.evaluate.metrics import MetricsSpec
from llmscratch.evaluate.responses import GenerateSpec


def _default(cls, name: str):
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate an instruction model: generate responses, judge them, metrics",
        description="Evaluate how well a model follows instructions: `generate` its responses to a data set split, "
        "score them with a `judge` model behind any OpenAI-compatible endpoint, and compute `metrics` that need "
        "no judge (reference loss and perplexity, ROUGE-L, exact match).",
    )
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    _register_generate(sub)
    _register_judge(sub)
    _register_metrics(sub)


def _register_generate(sub) -> None:
    d = lambda name: _default(GenerateSpec, name)  # noqa: E731
    g = sub.add_parser(
        "generate", help="the model's responses to every entry of a split, as JSONL (resumable)",
        description="Answer every entry of a data set split with the model (greedy, batched with left padding and "
        "the KV cache, each row stopping at its own end token) and append the answers to a JSONL file. Entries "
        "already in the file are skipped, so an interrupted run continues where it stopped.",
        epilog="Example: llmscratch evaluate generate --model runs/instruct/final --data instruction-data "
        "--split test -o responses.jsonl",
    )
    g.add_argument("--model", required=True, help="model name or path (a folder from `finetune instruct`, a .gguf "
                   "file, a registry name such as smollm2-135m-instruct)")
    g.add_argument("--data", default=d("data"), help=f"data set name or JSON/JSONL file (default: {d('data')})")
    g.add_argument("--split", default=d("split"), choices=["train", "test", "val", "validation", "all"],
                   help="part of the book's split (85%% train, 10%% test, 5%% validation, in file order), or all "
                   f"(default: {d('split')})")
    g.add_argument("-o", "--out", default=d("out"), help=f"responses file (JSONL; default: {d('out')})")
    g.add_argument("--prompt-format", choices=["alpaca", "phi3", "chat"], default=None,
                   help="prompt format (default: the one the model was tuned in, recorded in its folder; else "
                   "chat for a model with a chat template; else alpaca)")
    g.add_argument("--max-new-tokens", type=int, default=d("max_new_tokens"),
                   help=f"longest answer in tokens (default: {d('max_new_tokens')})")
    g.add_argument("--batch-size", type=int, default=d("batch_size"),
                   help=f"prompts generated together (default: {d('batch_size')})")
    g.add_argument("--limit", type=int, default=None, help="only the first N entries of the split")
    g.add_argument("--device", default=None, help="cpu, cuda, mps or auto (default: auto)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.set_defaults(func=_generate)


def _register_judge(sub) -> None:
    d = lambda name: _default(JudgeSpec, name)  # noqa: E731
    j = sub.add_parser(
        "judge", help="score responses 0-100 with a judge model over an OpenAI-compatible API",
        description="Ask a judge model, through the chat-completions API of any OpenAI-compatible endpoint, to score "
        "each response with the book's prompt (temperature 0, fixed seed). Scores are saved next to the responses "
        "as they arrive (RESPONSES.scores.jsonl, resumable); prints the mean and the count of answers that were "
        "not an integer, and draws a histogram (RESPONSES.scores.png). With --compare A B, judges A against B "
        "pairwise instead (the order shown is swapped for half the entries) and prints A's win rate.",
        epilog="Examples: llmscratch evaluate judge --responses responses.jsonl --base-url http://localhost:11434/v1 "
        "--model llama3   |   ... --base-url https://api.openai.com/v1 --model gpt-4o-mini --api-key-env "
        "OPENAI_API_KEY   |   llmscratch evaluate judge --compare tuned.jsonl base.jsonl --base-url URL --model M",
    )
    target = j.add_mutually_exclusive_group(required=True)
    target.add_argument("--responses", help="responses file from `evaluate generate`")
    target.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two responses files to the same entries")
    j.add_argument("--base-url", required=True, help="the endpoint's OpenAI-compatible base URL, e.g. "
                   "http://localhost:11434/v1 (Ollama), http://127.0.0.1:8000/v1 (llmscratch serve)")
    j.add_argument("--model", required=True, help="the judge model's name at that endpoint")
    j.add_argument("--api-key-env", default=None, help="name of the environment variable holding the API key "
                   "(sent as a Bearer token; never give the key itself on the command line)")
    j.add_argument("-o", "--out", default=None, help="scores file (default: beside the responses)")
    j.add_argument("--concurrency", type=int, default=d("concurrency"),
                   help=f"requests in flight at once (default: {d('concurrency')})")
    j.add_argument("--timeout", type=float, default=d("timeout"),
                   help=f"seconds to wait for one answer (default: {d('timeout'):g})")
    j.add_argument("--retries", type=int, default=d("retries"), help="retries of a request after a connection "
                   f"error, timeout, HTTP 429 or 5xx, with exponential backoff (default: {d('retries')})")
    j.add_argument("--retry-wait", type=float, default=d("retry_wait"),
                   help=f"seconds before the first retry, doubled each time (default: {d('retry_wait'):g})")
    j.add_argument("--seed", type=int, default=d("seed"), help=f"seed sent to the judge (default: {d('seed')})")
    j.add_argument("--no-progress", action="store_true", help="no progress bar")
    j.set_defaults(func=_judge)


def _register_metrics(sub) -> None:
    d = lambda name: _default(MetricsSpec, name)  # noqa: E731
    m = sub.add_parser(
        "metrics", help="metrics without a judge: reference loss/perplexity, ROUGE-L F1, exact match",
        description="Compare the responses with the reference outputs (ROUGE-L F1, exact match) and, with --model, "
        "measure the loss and perplexity of the reference responses under the model (collated as in training; by "
        "default only the response tokens count, so models tuned with or without --mask-prompt compare fairly). "
        "Writes RESPONSES.metrics.json.",
        epilog="Example: llmscratch evaluate metrics --model runs/instruct/final --responses responses.jsonl",
    )
    m.add_argument("--responses", required=True, help="responses file from `evaluate generate`")
    m.add_argument("--model", default=None, help="model for the reference loss (without it: ROUGE-L and exact "
                   "match only)")
    m.add_argument("--prompt-format", choices=["alpaca", "phi3", "chat"], default=None,
                   help="prompt format for the reference loss (default: the one recorded in the responses file)")
    m.add_argument("--include-prompt", action="store_true",
                   help="let the prompt tokens count in the reference loss too (as training without --mask-prompt)")
    m.add_argument("--batch-size", type=int, default=d("batch_size"), help=f"default: {d('batch_size')}")
    m.add_argument("-o", "--out", default=None, help="metrics file (default: RESPONSES.metrics.json)")
    m.add_argument("--device", default=None, help="cpu, cuda, mps or auto (default: auto)")
    m.add_argument("--no-progress", action="store_true", help="no progress bar")
    m.set_defaults(func=_metrics)


def _generate(args: argparse.Namespace) -> None:
    from llmscratch.evaluate.responses import run_generate

    r = run_generate(GenerateSpec(
        model=args.model, data=args.data, split=args.split, out=args.out, prompt_format=args.prompt_format,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, limit=args.limit, device=args.device,
        progress=not args.no_progress))
    print(f"{r['answered']} responses written to {r['path']} ({r['already']} were there already, {r['total']} in "
          f"the split) in {r['seconds']:.1f} s; prompt format {r['prompt_format']} ({r['why_format']})")


def _spec(args: argparse.Namespace, responses: str) -> JudgeSpec:
    return JudgeSpec(responses=responses, base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                     out=args.out, concurrency=args.concurrency, timeout=args.timeout, retries=args.retries,
                     retry_wait=args.retry_wait, seed=args.seed, progress=not args.no_progress)


def _judge(args: argparse.Namespace) -> None:
    from llmscratch.evaluate.judge import run_compare, run_judge

    if args.compare:
        a, b = args.compare
        r = run_compare(_spec(args, a), a, b)
        rate = "n/a" if r["win_rate_a"] is None else f"{100 * r['win_rate_a']:.1f}%"
        print(f"{a} vs {b}: A wins {r['wins_a']}, B wins {r['wins_b']}, {r['not_1_or_2']} answers not 1 or 2, "
              f"of {r['pairs']} pairs; win rate of A {rate} (judge {r['judge']}; the answer shown first won "
              f"{r['first_shown_won']} times); verdicts in {r['file']}")
        return
    r = run_judge(_spec(args, args.responses))
    mean = "n/a" if r["mean"] is None else f"{r['mean']:.2f}"
    print(f"mean score {mean} over {r['scored']} responses (judge {r['judge']}); {r['not_integer']} answers were "
          f"not an integer in 0..100; scores in {r['scores_file']}, histogram {r['histogram']}")


def _metrics(args: argparse.Namespace) -> None:
    from llmscratch.evaluate.metrics import run_metrics

    r = run_metrics(MetricsSpec(
        responses=args.responses, model=args.model, prompt_format=args.prompt_format,
        mask_prompt=not args.include_prompt, batch_size=args.batch_size, device=args.device, out=args.out,
        progress=not args.no_progress))
    print(f"{r['count']} responses: ROUGE-L F1 {r['rouge_l_f1']:.4f}, exact match {100 * r['exact_match']:.1f}%, "
          f"{r['empty_responses']} empty")
    if "reference_loss" in r:
        what = "response tokens" if r["reference_masked_prompt"] else "prompt and response tokens"
        print(f"reference loss {r['reference_loss']:.4f} (perplexity {r['reference_perplexity']:.2f}) over "
              f"{r['reference_tokens']:,} {what}, prompt format {r['prompt_format']}")
    print(f"written to {r['file']}")
