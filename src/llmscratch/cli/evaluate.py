"""`llmscratch evaluate generate | judge | metrics`: answers to a data set split, an LLM judge, offline metrics.

The flags are generated from the settings dataclasses (GenerateSpec, JudgeSpec, MetricsSpec)."""

from __future__ import annotations

from llmscratch.config import add_command
from llmscratch.evaluate.judge import JudgeSpec
from llmscratch.evaluate.metrics import MetricsSpec
from llmscratch.evaluate.responses import GenerateSpec
from llmscratch.utils import UserError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate an instruction model: generate responses, judge them, metrics",
        description="Evaluate how well a model follows instructions: `generate` its responses to a data set split, "
        "score them with a `judge` model behind any OpenAI-compatible endpoint, and compute `metrics` that need "
        "no judge (reference loss and perplexity, ROUGE-L, exact match).",
    )
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    add_command(
        sub, "generate", GenerateSpec, _generate,
        help="the model's responses to every entry of a split, as JSONL (resumable)",
        description="Answer every entry of a data set split with the model (greedy, batched with left padding and "
        "the KV cache, each row stopping at its own end token) and append the answers to a JSONL file. Entries "
        "already in the file are skipped, so an interrupted run continues where it stopped.",
        epilog="Example: llmscratch evaluate generate --model runs/instruct/final --data instruction-data "
        "--split test -o responses.jsonl",
    )
    add_command(
        sub, "judge", JudgeSpec, _judge,
        help="score responses 0-100 with a judge model over an OpenAI-compatible API",
        description="Ask a judge model, through the chat-completions API of any OpenAI-compatible endpoint, to score "
        "each response with the book's prompt (temperature 0, fixed seed). Scores are saved next to the responses "
        "as they arrive (RESPONSES.scores.jsonl, resumable); prints the mean and the count of answers that were "
        "not an integer, and draws a histogram (RESPONSES.scores.png). With --compare A B, judges A against B "
        "pairwise instead and prints A's win rate.",
        epilog="Examples: llmscratch evaluate judge --responses responses.jsonl --base-url http://localhost:11434/v1 "
        "--model llama3   |   ... --base-url https://api.openai.com/v1 --model gpt-4o-mini --api-key-env "
        "OPENAI_API_KEY   |   llmscratch evaluate judge --compare tuned.jsonl base.jsonl --base-url URL --model M",
    )
    add_command(
        sub, "metrics", MetricsSpec, _metrics,
        help="metrics without a judge: reference loss/perplexity, ROUGE-L F1, exact match",
        description="Compare the responses with the reference outputs (ROUGE-L F1, exact match) and, with --model, "
        "measure the loss and perplexity of the reference responses under the model (collated as in training). "
        "Writes RESPONSES.metrics.json.",
        epilog="Example: llmscratch evaluate metrics --model runs/instruct/final --responses responses.jsonl",
    )


def _generate(spec: GenerateSpec) -> None:
    from llmscratch.evaluate.responses import run_generate

    r = run_generate(spec)
    print(f"{r['answered']} responses written to {r['path']} ({r['already']} were there already, {r['total']} in "
          f"the split) in {r['seconds']:.1f} s; prompt format {r['prompt_format']} ({r['why_format']})")


def _judge(spec: JudgeSpec) -> None:
    from llmscratch.evaluate.judge import run_compare, run_judge

    if (spec.responses is None) == (spec.compare is None):
        raise UserError("give either --responses FILE or --compare A B")
    if spec.compare:
        a, b = spec.compare
        r = run_compare(spec, a, b)
        rate = "n/a" if r["win_rate_a"] is None else f"{100 * r['win_rate_a']:.1f}%"
        print(f"{a} vs {b}: A wins {r['wins_a']}, B wins {r['wins_b']}, {r['not_1_or_2']} answers not 1 or 2, "
              f"of {r['pairs']} pairs; win rate of A {rate} (judge {r['judge']}; the answer shown first won "
              f"{r['first_shown_won']} times); verdicts in {r['file']}")
        return
    r = run_judge(spec)
    mean = "n/a" if r["mean"] is None else f"{r['mean']:.2f}"
    print(f"mean score {mean} over {r['scored']} responses (judge {r['judge']}); {r['not_integer']} answers were "
          f"not an integer in 0..100; scores in {r['scores_file']}, histogram {r['histogram']}")


def _metrics(spec: MetricsSpec) -> None:
    from llmscratch.evaluate.metrics import run_metrics

    r = run_metrics(spec)
    against = "" if r["reference"] == "output" else f" (against the {r['reference']} answers)"
    print(f"{r['count']} responses{against}: ROUGE-L F1 {r['rouge_l_f1']:.4f}, exact match "
          f"{100 * r['exact_match']:.1f}%, {r['empty_responses']} empty")
    if "reference_loss" in r:
        what = "response tokens" if r["reference_masked_prompt"] else "prompt and response tokens"
        print(f"reference loss {r['reference_loss']:.4f} (perplexity {r['reference_perplexity']:.2f}) over "
              f"{r['reference_tokens']:,} {what}{against}, prompt format {r['prompt_format']}")
    print(f"written to {r['file']}")
