"""Model responses to instruction entries: batched generation, and the responses file (JSONL, resumable).

Each line of a responses file is one entry of the evaluated split:

    {"index": 3, "instruction": ..., "input": ..., "output": <reference>, "response": <the model's answer>,
     "model": ..., "prompt_format": "alpaca", "data": "instruction-data", "split": "test"}

Generation runs through the one generation loop (`llmscratch.generate`): prompts are left-padded into batches
(sorted by length, so little padding), the KV cache is used, and each row stops at its own end token.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmscratch.config import check_fields, setting
from llmscratch.utils import UserError, check_input_file, plural

RECORD_FIELDS = ("instruction", "input", "output", "response")
OTHER_REFERENCES = ("chosen", "rejected")  # kept too when the entries have them (preference data), for metrics


def response_sampling(tokenizer, fmt: str, max_new_tokens: int, temperature: float = 0.0, seed: int | None = None):
    """Sampling settings for answers in format `fmt`: stop at the end-of-text and end-of-turn tokens and at the
    format's stop strings (e.g. a new `### Instruction:` for alpaca)."""
    from llmscratch.chat import end_of_turn_ids
    from llmscratch.data.instruction import stop_strings
    from llmscratch.generate import SamplingConfig

    return SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                          stop_ids=tuple(end_of_turn_ids(tokenizer)), stop_strings=stop_strings(fmt))


def generate_responses(model, tokenizer, entries: Sequence[Mapping], fmt: str, chat_template: str | None,
                       max_new_tokens: int, batch_size: int = 8, temperature: float = 0.0, seed: int | None = None,
                       on_batch=None) -> list[str]:
    """The model's answer to each entry in prompt format `fmt` (greedy unless `temperature`), whitespace stripped.

    `on_batch(indices, texts)` is called after each batch (to save and show progress).
    """
    from llmscratch.data.instruction import format_prompt
    from llmscratch.generate import generate_text

    cfg = response_sampling(tokenizer, fmt, max_new_tokens, temperature, seed)
    prompts = [format_prompt(e, fmt, tokenizer, chat_template) for e in entries]
    lengths = [len(tokenizer.encode(p, allowed_special="all")) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    out: list[str] = [""] * len(prompts)
    for s in range(0, len(order), batch_size):
        chunk = order[s : s + batch_size]
        texts = generate_text(model, tokenizer, [prompts[i] for i in chunk], cfg)
        for i, t in zip(chunk, texts):
            out[i] = t.strip()
        if on_batch is not None:
            on_batch(chunk, [out[i] for i in chunk])
    return out


# ---------------------------------------------------------------------------------------------------------
# Responses files
# ---------------------------------------------------------------------------------------------------------


def read_jsonl(path: str | os.PathLike, what: str = "records") -> tuple[list[dict], int]:
    """(records, number of unreadable lines) of a JSONL file; a missing file is a UserError.

    A line that is not a JSON object (a write cut short by a crash, a stray line) is skipped and counted.
    """
    path = check_input_file(path, what)
    records, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def read_responses(path: str | os.PathLike) -> list[dict]:
    """The records of a responses file, checked for the fields every evaluation needs; unreadable lines are
    reported on stderr."""
    records, bad = read_jsonl(path, "responses")
    if bad:
        print(f"warning: {path}: skipped {plural(bad, 'line')} that are not JSON objects", file=sys.stderr)
    for n, rec in enumerate(records):
        missing = [f for f in ("index", *RECORD_FIELDS) if f not in rec]
        if missing:
            raise UserError(f"{path}: record {n} lacks {', '.join(missing)}; a responses file is written by "
                            "`llmscratch evaluate generate`")
    if not records:
        raise UserError(f"{path} holds no responses")
    return records


def append_jsonl(path: Path, records: Sequence[Mapping]) -> None:
    """Append records as lines and flush them to disk (what is written survives a crash after this call).

    A last line cut short by an earlier crash is ended first, so that it cannot swallow the new first record."""
    cut = False
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
    with open(path, "a", encoding="utf-8") as f:
        if cut:
            f.write("\n")
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


@dataclass
class GenerateSpec:
    """What `evaluate generate` answers: a model (in its prompt format), a data set split, and how."""

    model: str | None = setting(None, "model name or path (a folder from `finetune instruct`, a .gguf file, a "
                                "registry name such as smollm2-135m-instruct)", required=True)
    data: str = setting("instruction-data", "data set name or JSON/JSONL file of instruction entries")
    split: str = setting("test", "part of the book's split (85% train, 10% test, 5% validation, in file order), "
                         "or all", choices=("train", "test", "val", "validation", "all"))
    out: str = setting("responses.jsonl", "responses file (JSONL; entries already in it are skipped)",
                       flag="--out", aliases=("-o",))
    prompt_format: str | None = setting(None, "prompt format (default: the one the model was tuned in, recorded "
                                        "in its folder; else chat for a model with a chat template; else alpaca)",
                                        choices=("alpaca", "phi3", "chat"))
    max_new_tokens: int = setting(256, "longest answer in tokens", ge=1)
    batch_size: int = setting(8, "prompts generated together", ge=1)
    limit: int | None = setting(None, "only the first N entries of the split", ge=1)
    device: str = setting("auto", "cpu, cuda, mps or auto")
    progress: bool = setting(True, "no progress bar", switches={"--no-progress": False})

    def __post_init__(self) -> None:
        check_fields(self)


def default_prompt_format(model_spec: str, chat_template: str | None) -> tuple[str, str]:
    """(format, why): the format recorded in a tuned model's folder, else `chat` when the model has a template,
    else `alpaca`."""
    from llmscratch.data.instruction import read_instruct_info

    info = read_instruct_info(model_spec)
    if info is not None:
        return info["prompt_format"], "the format the model was tuned in"
    if chat_template:
        return "chat", "the model's own chat template"
    return "alpaca", "the model has no chat template"


def _same(a, b, paths: bool) -> bool:
    """Equal values; for `paths` (a model or data given as a name or a path), also the same file or folder named
    two ways (relative and absolute)."""
    from llmscratch.utils import same_file

    if a == b:
        return True
    return paths and isinstance(a, str) and isinstance(b, str) and Path(a).exists() and same_file(a, b)


def check_existing(records: list[dict], path: Path, entries: Sequence[Mapping], meta: Mapping) -> set[int]:
    """Indices already answered in `path`; UserError when its records come from another model, format or data."""
    done = set()
    for rec in records:
        for key in ("model", "prompt_format", "data", "split"):
            if key in rec and not _same(rec[key], meta[key], key in ("model", "data")):
                raise UserError(f"{path} holds responses with {key} {rec[key]!r}, this run has {meta[key]!r}; "
                                "write to another file (-o) or delete it")
        i = rec.get("index")
        if not isinstance(i, int) or not 0 <= i < len(entries) or entries[i]["instruction"] != rec.get("instruction"):
            raise UserError(f"{path} holds a response to an entry that is not entry {i} of {meta['data']} "
                            f"{meta['split']} (another data set?); write to another file (-o)")
        done.add(i)
    return done


def run_generate(spec: GenerateSpec) -> dict:
    """Answer every entry of the split not yet in `spec.out` and append the answers there; returns a summary."""
    import time

    from tqdm.auto import tqdm

    from llmscratch.data.instruction import SPLIT_RULE, check_format, load_entries, split_entries
    from llmscratch.utils import check_not_input, pick_device
    from llmscratch.weights import load_model

    every = load_entries(spec.data)
    entries = split_entries(every, spec.split)[: spec.limit]
    if not entries:
        raise UserError(f"the {spec.split} split of {spec.data} is empty ({len(every)} entries in all; the book's "
                        f"split, {SPLIT_RULE}): split=all answers every entry", params="split")
    out = Path(spec.out)
    check_not_input([out], [spec.data])
    existing, bad = read_jsonl(out) if out.is_file() else ([], 0)
    if bad > 1 or (bad and not existing):  # one cut last line is a crash's; more, and it is someone else's file
        raise UserError(f"{out} is not a responses file (lines that are not JSON records: {bad}); answers are only "
                        "appended to a file of earlier answers: write to another file (-o)")
    loaded = load_model(spec.model, device=pick_device(spec.device))
    if loaded.tokenizer is None:
        raise UserError(f"the model {spec.model!r} has no tokenizer; give a model folder that has one")
    fmt, why = (spec.prompt_format, "asked for") if spec.prompt_format else default_prompt_format(
        spec.model, loaded.chat_template)
    check_format(fmt, loaded.chat_template)
    meta = {"model": spec.model, "prompt_format": fmt, "data": spec.data, "split": spec.split}
    done = check_existing(existing, out, entries, meta)
    todo = [i for i in range(len(entries)) if i not in done]
    bar = tqdm(total=len(entries), initial=len(done), desc="responses", unit="entry", disable=not spec.progress)
    started = time.perf_counter()

    def save(chunk: list[int], texts: list[str]) -> None:
        rows = [{"index": todo[c], **{k: entries[todo[c]].get(k, "") for k in RECORD_FIELDS[:3]}, "response": t,
                 **{k: v for k in OTHER_REFERENCES if isinstance(v := entries[todo[c]].get(k), str)},
                 **meta} for c, t in zip(chunk, texts)]
        append_jsonl(out, sorted(rows, key=lambda r: r["index"]))
        bar.update(len(rows))

    out.parent.mkdir(parents=True, exist_ok=True)
    generate_responses(loaded.model, loaded.tokenizer, [entries[i] for i in todo], fmt, loaded.chat_template,
                       spec.max_new_tokens, spec.batch_size, on_batch=save)
    bar.close()
    return {"path": str(out), "answered": len(todo), "already": len(done), "total": len(entries),
            "prompt_format": fmt, "why_format": why, "seconds": time.perf_counter() - started}
