"""Preference pairs for DPO: a prompt with a chosen and a rejected answer, encoded, checked, and collated.

Sources: the registry's `instruction-data-preference` (fields instruction, input, output, chosen, rejected; the
recipe splits it as the instruction data, `data.instruction.book_split`: 935 / 110 / 55 in file order), or any
JSON list / JSONL file whose prompt, chosen and rejected fields are named by the caller. Prompt and answers are
encoded as instruction tuning encodes them (a callable, data.instruction's `encode_example` with its prompt
format bound): the answer's ids follow the prompt's ids (then the end-of-text id), so the answer mask is exact.

Bad pairs are counted and skipped before training, never silently: chosen == rejected (also after cutting to
`max_length`), an empty answer, a prompt that leaves no room for an answer within `max_length`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llmscratch.utils import UserError, plural, read_text_file

REGISTRY_NAME = "instruction-data-preference"


@dataclass(frozen=True)
class PreferenceFields:
    """Field names of a preference record. `prompt` None: "instruction" when a record has it, else "prompt"."""

    prompt: str | None = None
    input: str = "input"  # optional extra context (the Alpaca "input"); absent or empty: none
    chosen: str = "chosen"
    rejected: str = "rejected"


def read_preference_file(path: str | Path, fields: PreferenceFields = PreferenceFields()) -> list[dict]:
    """The entries of a JSON list or JSONL file as {"instruction", "input", "chosen", "rejected", "where"} (the
    Alpaca fields the prompt formats read); UserError naming the file and entry for anything missing."""
    path = Path(path)
    text = read_text_file(path, "preference data")
    if not text.strip():
        raise UserError(f"{path} is empty; preference data is a JSON list of pairs or JSONL (one pair per line)")
    records = []
    if path.suffix.lower() == ".jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append((f"line {i}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}, line {i} is not valid JSON: {e.msg} (column {e.colno})") from None
    else:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None
        if not isinstance(loaded, list):
            raise UserError(f"{path}: expected a JSON list of objects, got {type(loaded).__name__}")
        records = [(f"entry {i}", r) for i, r in enumerate(loaded)]
    if not records:
        raise UserError(f"{path} holds no pairs")
    return [_entry(record, where, fields, path) for where, record in records]


def _entry(record, where: str, fields: PreferenceFields, source: Path) -> dict:
    if not isinstance(record, dict):
        raise UserError(f"{source}, {where}: expected an object with fields, got {type(record).__name__}")
    prompt_field = fields.prompt or ("instruction" if "instruction" in record else "prompt")
    for name, kind in ((prompt_field, "prompt"), (fields.chosen, "chosen"), (fields.rejected, "rejected")):
        if name not in record:
            raise UserError(f"{source}, {where}: no {kind} field {name!r}; fields: {sorted(record)}")
        if not isinstance(record[name], str):
            raise UserError(f"{source}, {where}: field {name!r} must be text, got {type(record[name]).__name__}")
    return {"instruction": record[prompt_field], "input": str(record.get(fields.input) or ""),
            "chosen": record[fields.chosen], "rejected": record[fields.rejected], "where": where}


def load_preference_entries(data: str, fields: PreferenceFields = PreferenceFields()) -> list[dict]:
    """Entries of the registry name `instruction-data-preference` (fetched, checksummed) or of a file."""
    if data == REGISTRY_NAME:
        from llmscratch.data.registry import fetch

        return read_preference_file(fetch(REGISTRY_NAME), PreferenceFields())
    if not Path(data).exists():
        raise UserError(f"data must be {REGISTRY_NAME} or a .json/.jsonl file, got {data!r} (no such file)",
                        params="data")
    return read_preference_file(data, fields)


@dataclass
class Skipped:
    """Counts of pairs left out, by reason."""

    equal: int = 0
    empty: int = 0
    no_room: int = 0
    examples: dict[str, str] = field(default_factory=dict)  # reason -> where the first one was

    @property
    def total(self) -> int:
        return self.equal + self.empty + self.no_room

    def describe(self) -> str:
        if not self.total:
            return "skipped none"
        parts = [f"{n} {what}" for n, what in ((self.equal, "with equal chosen and rejected answers"),
                                               (self.empty, "with an empty answer"),
                                               (self.no_room, "whose prompt leaves no room for an answer "
                                                                  "within the maximum length"))
                 if n]
        firsts = ", ".join(f"{k}: {v}" for k, v in self.examples.items())
        first = f" (first ones: {firsts})" if firsts else ""
        return f"skipped {plural(self.total, 'pair')}: " + "; ".join(parts) + first


@dataclass
class EncodedPair:
    """Token ids of one pair: the prompt, then each answer (prompt + answer <= max_length)."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]


# (prompt ids, response ids) of an entry whose "output" is the answer: data.instruction's `encode_example` with
# the prompt format and tokenizer bound, so preference tuning reads exactly what instruction tuning wrote.
EncodeExample = Callable[[dict], tuple[list[int], list[int]]]


class PreferenceDataset:
    """Encoded pairs of one split, bad ones skipped and counted (`skipped`).

    `encode(entry)` gives (prompt ids, response ids) of an entry whose "output" is the answer; `end_id` (the
    end-of-text id) is appended to each answer, which is then cut to fit `max_length` with the prompt.
    """

    def __init__(self, entries: Sequence[dict], encode: EncodeExample, max_length: int, end_id: int | None = None):
        if max_length < 2:
            raise UserError(f"max_length must be >= 2 (a prompt token and an answer token), got {max_length}",
                            params="max_length")
        self.max_length = max_length
        self.entries: list[dict] = []
        self.pairs: list[EncodedPair] = []
        self.skipped = Skipped()
        for i, entry in enumerate(entries):
            reason = self._add(entry, encode, end_id)
            if reason is not None:
                setattr(self.skipped, reason, getattr(self.skipped, reason) + 1)
                self.skipped.examples.setdefault(reason, entry.get("where", f"entry {i}"))

    def _add(self, entry: dict, encode: EncodeExample, end_id: int | None) -> str | None:
        """Encode one entry; the name of the skip reason, or None when it was added."""
        if not entry["chosen"].strip() or not entry["rejected"].strip():
            return "empty"
        if entry["chosen"].strip() == entry["rejected"].strip():
            return "equal"
        prompt, chosen = encode({**entry, "output": entry["chosen"]})
        prompt_again, rejected = encode({**entry, "output": entry["rejected"]})
        if prompt_again != prompt:
            raise ValueError("the prompt format encodes one prompt in two ways: the answer leaks into the prompt")
        room = self.max_length - len(prompt)
        if room < 1 or not prompt:
            return "no_room"
        tail = [end_id] if end_id is not None else []
        chosen, rejected = (chosen + tail)[:room], (rejected + tail)[:room]
        if chosen == rejected:  # the answers differ only past max_length
            return "equal"
        self.entries.append(entry)
        self.pairs.append(EncodedPair(prompt, chosen, rejected))
        return None

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> EncodedPair:
        return self.pairs[i]

    def num_tokens(self) -> int:
        """Tokens of every chosen and rejected sequence (prompt included)."""
        return sum(2 * len(p.prompt) + len(p.chosen) + len(p.rejected) for p in self.pairs)


def collate_preference(pairs: Sequence[EncodedPair], pad_id: int, indices: Sequence[int] | None = None) -> dict:
    """One batch: chosen and rejected sequences (prompt + answer) right-padded with `pad_id` to one length.

    {"chosen", "rejected": (B, T) long; "chosen_mask", "rejected_mask": (B, T) bool, True at answer tokens
    (False at the prompt and the padding); "index": (B,) the pairs' row numbers in their data set}.
    """
    if not pairs:
        raise ValueError("collate_preference needs at least one pair")
    T = max(len(p.prompt) + max(len(p.chosen), len(p.rejected)) for p in pairs)
    batch = {}
    for key in ("chosen", "rejected"):
        ids = torch.full((len(pairs), T), int(pad_id), dtype=torch.long)
        mask = torch.zeros(len(pairs), T, dtype=torch.bool)
        for b, p in enumerate(pairs):
            answer = getattr(p, key)
            n = len(p.prompt)
            ids[b, : n + len(answer)] = torch.tensor(p.prompt + answer, dtype=torch.long)
            mask[b, n : n + len(answer)] = True
        batch[key], batch[key + "_mask"] = ids, mask
    batch["index"] = torch.tensor(list(indices) if indices is not None else range(len(pairs)), dtype=torch.long)
    return batch
