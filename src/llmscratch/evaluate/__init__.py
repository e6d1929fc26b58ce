"""Evaluating instruction-following models: responses to a data set split (`responses`), an LLM judge over any
OpenAI-compatible endpoint (`judge`), and metrics that need no judge (`metrics`)."""

from llmscratch.evaluate.judge import ChatClient, JudgeSpec, judge_prompt, parse_score, run_compare, run_judge
from llmscratch.evaluate.metrics import MetricsSpec, exact_match, reference_loss, rouge_l, run_metrics
from llmscratch.evaluate.responses import GenerateSpec, generate_responses, read_responses, run_generate

__all__ = [
    "ChatClient",
    "GenerateSpec",
    "JudgeSpec",
    "MetricsSpec",
    "exact_match",
    "generate_responses",
    "judge_prompt",
    "parse_score",
    "read_responses",
    "reference_loss",
    "rouge_l",
    "run_compare",
    "run_generate",
    "run_judge",
    "run_metrics",
]
