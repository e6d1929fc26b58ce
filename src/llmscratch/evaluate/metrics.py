"""Metrics that need no judge: ROUGE-L F1 and exact match of the responses against the reference outputs, and
the loss (and perplexity) of the reference responses under a model.

ROUGE-L (Lin, 2004) here: both texts lowercased, every run of characters that are not letters or digits made a
space, split on spaces (as the `rouge-score` package tokenizes, without stemming); precision = LCS / response
tokens, recall = LCS / reference tokens, F1 their harmonic mean; two empty texts score 1.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmscratch.config import check_fields, setting
from llmscratch.utils import UserError


def rouge_tokens(text: str) -> list[str]:
    """Lowercased words and numbers of `text` (punctuation dropped)."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, one row kept)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(response: str, reference: str) -> float:
    """ROUGE-L F1 of `response` against `reference` (see the module docstring)."""
    r, ref = rouge_tokens(response), rouge_tokens(reference)
    if not r or not ref:
        return 1.0 if not r and not ref else 0.0
    lcs = lcs_length(r, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(r), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match(response: str, reference: str) -> bool:
    """Equal after stripping and collapsing whitespace (case and punctuation count)."""
    return " ".join(response.split()) == " ".join(reference.split())


def text_metrics(records: Sequence[Mapping]) -> dict:
    """Mean ROUGE-L F1 and exact-match rate of the records' responses against their outputs."""
    scores = [rouge_l(r["response"], r["output"]) for r in records]
    matches = [exact_match(r["response"], r["output"]) for r in records]
    return {"rouge_l_f1": sum(scores) / len(scores), "exact_match": sum(matches) / len(matches),
            "empty_responses": sum(not r["response"].strip() for r in records), "count": len(records)}


def reference_loss(model, tokenizer, entries: Sequence[Mapping], fmt: str, chat_template: str | None,
                   mask_prompt: bool = True, batch_size: int = 8, max_length: int | None = None,
                   progress: bool = False) -> dict:
    """Mean cross-entropy per target token (and its perplexity) of the reference outputs in prompt format `fmt`:
    the entries are collated as in training (end token appended, padding ignored); with `mask_prompt` only the
    response tokens and the end token count, which makes models tuned with and without prompt masking
    comparable."""
    import torch  # lazily: building the CLI's flags must not load torch
    from tqdm.auto import tqdm

    from llmscratch.data.classification import pad_id_of
    from llmscratch.data.instruction import IGNORE_INDEX, InstructionDataset, end_id_of
    from llmscratch.train.tasks.instruct import instruction_loss

    max_length = max_length or model.config.context_length
    ds = InstructionDataset(entries, tokenizer, fmt, chat_template, max_length=max_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(ds)), key=lambda i: len(ds.ids[i]))
    total, count = 0.0, 0
    for s in tqdm(range(0, len(order), batch_size), desc="reference loss", unit="batch", disable=not progress):
        inputs, targets = ds.collate(order[s : s + batch_size], pad_id_of(tokenizer), end_id_of(tokenizer),
                                     mask_prompt)
        targets = targets.to(device)
        with torch.no_grad():
            total += float(instruction_loss(model, inputs.to(device), targets, reduction="sum"))
        count += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    if count == 0:
        raise UserError("no target token to measure (every response was cut by the context length)")
    loss = total / count
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": count, "truncated": ds.truncated(),
            "masked_prompt": mask_prompt}


@dataclass
class MetricsSpec:
    """What `evaluate metrics` measures: a responses file, and with a model the reference loss."""

    responses: str | None = setting(None, "responses file from `evaluate generate`", required=True)
    model: str | None = setting(None, "model for the reference loss and perplexity (without it: ROUGE-L and exact "
                                "match only)")
    prompt_format: str | None = setting(None, "prompt format for the reference loss (default: the one recorded in "
                                        "the responses file)", choices=("alpaca", "phi3", "chat"))
    include_prompt: bool = setting(False, "let the prompt tokens count in the reference loss too (as training "
                                   "without --mask-prompt); by default only the response tokens and the end token "
                                   "count, so models tuned with and without --mask-prompt compare fairly")
    reference: str = setting("output", "the field holding the reference answer: output, or chosen or rejected "
                             "for answers to preference data (`evaluate generate --data "
                             "instruction-data-preference` records both)", choices=("output", "chosen", "rejected"))
    batch_size: int = setting(8, "entries per forward pass", ge=1)
    device: str = setting("auto", "cpu, cuda, mps or auto")
    out: str | None = setting(None, "metrics file (default: RESPONSES.metrics.json)", flag="--out", aliases=("-o",))
    overwrite: bool = setting(False, "replace -o even when it is not a metrics file of ours")
    progress: bool = setting(True, "no progress bar", switches={"--no-progress": False})

    def __post_init__(self) -> None:
        check_fields(self)


def _is_metrics_file(path: Path) -> bool:
    """Whether `path` holds what `run_metrics` writes (a JSON object with its keys)."""
    from llmscratch.utils import json_object

    return {"responses", "reference", "rouge_l_f1"} <= set(json_object(path) or {})


def run_metrics(spec: MetricsSpec) -> dict:
    """ROUGE-L, exact match and (with a model) the reference loss of a responses file; written as JSON too."""
    from llmscratch.evaluate.judge import beside
    from llmscratch.evaluate.responses import read_responses
    from llmscratch.utils import (
        atomic_write_text,
        check_file_replaceable,
        check_not_input,
        check_output_file,
        pick_device,
    )

    out = Path(spec.out) if spec.out else beside(spec.responses, ".metrics.json")
    check_not_input([out], [spec.responses])  # before any work
    check_output_file(out)
    check_file_replaceable(out, _is_metrics_file(out), "a metrics file of ours", spec.overwrite)
    records = read_responses(spec.responses)
    if spec.reference != "output":
        lacking = sum(not isinstance(r.get(spec.reference), str) for r in records)
        if lacking:
            raise UserError(f"{lacking} of {len(records)} records in {spec.responses} have no {spec.reference!r} "
                            "answer: make them with evaluate generate on preference data (instruction-data-preference)",
                            params="reference")
        records = [{**r, "output": r[spec.reference]} for r in records]  # the reference loss scores "output"
    result: dict = {"responses": spec.responses, "reference": spec.reference, **text_metrics(records)}
    if spec.model:
        from llmscratch.weights import load_model

        loaded = load_model(spec.model, device=pick_device(spec.device))
        if loaded.tokenizer is None:
            raise UserError(f"the model {spec.model!r} has no tokenizer")
        fmt = spec.prompt_format or records[0].get("prompt_format") or "alpaca"
        result.update(model=spec.model, prompt_format=fmt, **{
            f"reference_{k}": v for k, v in reference_loss(
                loaded.model, loaded.tokenizer, records, fmt, loaded.chat_template, not spec.include_prompt,
                spec.batch_size, progress=spec.progress).items()})
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    result["file"] = str(out)
    return result
