"""Text classification data: labelled tables (the SMS spam set, or any CSV/TSV/JSON(L) file), the book's
balanced 70/10/20 split, a token-id dataset and a padding collate function.

The book's recipe (rasbt/LLMs-from-scratch ch06) uses pandas: `ham.sample(747, random_state=123)`, then the
sampled ham rows followed by all spam rows, then `df.sample(frac=1, random_state=123)` and cuts at
`int(0.7 n)` and `int(0.7 n) + int(0.1 n)`. pandas' `sample` is `np.random.RandomState(seed).choice(n, k,
replace=False)`, which we call directly, so the same table gives the same rows as the book without pandas.
The table differs, though: the book's `pd.read_csv` honours quote characters and so merges two messages
(5,572 rows, 4,825 ham); we read the file with quoting disabled (5,574 rows, 4,827 ham), so the sampled ham
rows differ (1,136 of the 1,494 balanced messages are shared). `load_sms_spam(book_compat=True)` reads it the
book's way and then reproduces the book's train/validation/test rows exactly.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from llmscratch.tokenizer import with_bos
from llmscratch.utils import UserError, check_input_file

SMS_SPAM_LABELS = ("ham", "spam")


@dataclass(frozen=True)
class ClassificationData:
    """Texts with integer labels; `label_names[i]` is the name of label id i."""

    texts: list[str]
    labels: list[int]
    label_names: list[str]

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def label_to_id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}

    def label_counts(self) -> dict[str, int]:
        """How many rows each label has, in label id order."""
        counts = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.label_names, counts)}

    def subset(self, indices: Sequence[int]) -> ClassificationData:
        """The rows `indices`, in that order."""
        return ClassificationData(
            [self.texts[i] for i in indices], [self.labels[i] for i in indices], list(self.label_names)
        )


# ---------------------------------------------------------------------------------------------------------
# Reading tables
# ---------------------------------------------------------------------------------------------------------


def _label_names(values: list[str], labels: Sequence[str] | None, label_order: str) -> list[str]:
    if labels is not None:
        return [str(v) for v in labels]
    if label_order == "first-seen":
        return list(dict.fromkeys(values))
    if label_order != "sorted":
        raise UserError(f"label_order must be 'sorted' or 'first-seen', got {label_order!r}")
    names = set(values)
    if all(v.lstrip("-").isdigit() for v in names):
        return sorted(names, key=int)
    return sorted(names)


def _build(rows: list[tuple[str, str, str]], source: str, labels: Sequence[str] | None, label_order: str,
           text_column: str, label_column: str) -> ClassificationData:
    """rows: (where, text, label value) -> checked ClassificationData."""
    if not rows:
        raise UserError(f"{source} holds no rows")
    rows = [(where, text, value.strip()) for where, text, value in rows]  # " neg" is "neg" (as --labels reads)
    for where, text, value in rows:
        if not text.strip():
            raise UserError(f"{source}, {where}: empty text in column {text_column!r}")
        if not value.strip():
            raise UserError(f"{source}, {where}: empty label in column {label_column!r}")
    names = _label_names([v for _, _, v in rows], labels, label_order)
    if len(set(names)) != len(names):
        raise UserError(f"label names must be distinct, got {names}")
    to_id = {n: i for i, n in enumerate(names)}
    ids = []
    for where, _, value in rows:
        if value not in to_id:
            raise UserError(
                f"{source}, {where}: label {value!r} in column {label_column!r} is not one of {names}"
            )
        ids.append(to_id[value])
    found = sorted({names[i] for i in ids})
    if len(found) < 2:
        raise UserError(
            f"{source}: a classifier needs at least 2 classes, found only {found} in column {label_column!r}"
        )
    return ClassificationData([t for _, t, _ in rows], ids, names)


def _column_index(header: list[str], column: str | int, kind: str, source: str) -> int:
    if isinstance(column, int):
        if not 0 <= column < len(header):
            raise UserError(f"{source}: {kind} column {column} does not exist (the rows have {len(header)})")
        return column
    if column not in header:
        raise UserError(f"{source}: no {kind} column named {column!r}; columns: {header}")
    return header.index(column)


def _read_delimited(path: Path, delimiter: str, quoting: bool, header: bool, text_column, label_column):
    source = str(path)
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE)
        first = next(reader, None)
        if first is None:
            raise UserError(f"{source} is empty")
        if header:
            columns = first
        else:
            columns = [str(i) for i in range(len(first))]
            try:
                text_column, label_column = int(text_column), int(label_column)
            except ValueError:
                raise UserError(
                    f"{source}: without a header row, columns are 0-based numbers, got "
                    f"{text_column!r} and {label_column!r}"
                ) from None
        ti = _column_index(columns, text_column, "text", source)
        li = _column_index(columns, label_column, "label", source)
        records = reader if header else [first, *reader]
        for n, row in enumerate(records, start=1):
            where = f"row {n} (line {reader.line_num})"
            if not row:
                continue
            if len(row) <= max(ti, li):
                raise UserError(f"{source}, {where}: {len(row)} fields, no column {max(ti, li)}")
            rows.append((where, row[ti], row[li]))
    return rows


def _read_json_records(path: Path, text_column: str, label_column: str):
    source = str(path)
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            records = [(f"entry {i}", r) for i, r in enumerate(json.loads(text))]
        else:
            records = [(f"line {i}", json.loads(line)) for i, line in enumerate(text.splitlines(), start=1)
                       if line.strip()]
    except json.JSONDecodeError as e:
        raise UserError(f"{source} is not valid JSON: {e}") from None
    rows = []
    for where, record in records:
        if not isinstance(record, dict):
            raise UserError(f"{source}, {where}: expected an object with fields, got {type(record).__name__}")
        for column, kind in ((text_column, "text"), (label_column, "label")):
            if column not in record:
                raise UserError(f"{source}, {where}: no {kind} field {column!r}; fields: {sorted(record)}")
        text, value = record[text_column], record[label_column]
        if not isinstance(text, str):
            raise UserError(f"{source}, {where}: the text field {text_column!r} must be a string, not "
                            f"{json.dumps(text)[:40]}")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise UserError(f"{source}, {where}: the label field {label_column!r} must be a string or an integer, "
                            f"not {json.dumps(value)[:40]}")
        rows.append((where, text, value if isinstance(value, str) else str(value)))
    return rows


def load_table(
    path: str | os.PathLike,
    text_column: str | int = "text",
    label_column: str | int = "label",
    *,
    labels: Sequence[str] | None = None,
    label_order: str = "sorted",
    header: bool = True,
    delimiter: str | None = None,
    quoting: bool | None = None,
) -> ClassificationData:
    """Read a labelled table: .csv, .tsv (or any delimited text), .jsonl, or a .json list of objects.

    - `labels`: the allowed label values; they get ids 0, 1, ... in that order and any other value is an
      error. Without it, ids follow `label_order`: "sorted" (numerically when all values are integers) or
      "first-seen".
    - `header=False`: delimited files without a header row; columns are then 0-based indexes.
    - `quoting`: honour quote characters; default True for CSV, False for TSV (tab-separated text files rarely
      quote, and a lone quote would otherwise swallow the following lines).
    Errors (missing columns, empty texts, unknown labels, fewer than two classes) raise `UserError` naming
    the file, row and column.
    """
    path = check_input_file(path, "data")
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            rows = _read_json_records(path, str(text_column), str(label_column))
        else:
            if delimiter is None:
                delimiter = "," if suffix == ".csv" else "\t"
            if quoting is None:
                quoting = delimiter == ","
            rows = _read_delimited(path, delimiter, quoting, header, text_column, label_column)
    except UnicodeDecodeError as e:
        raise UserError(f"data file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    return _build(rows, str(path), labels, label_order, str(text_column), str(label_column))


def load_sms_spam(path: str | os.PathLike | None = None, *, book_compat: bool = False) -> ClassificationData:
    """The SMS Spam Collection (headerless `label<TAB>text`), labels ham=0, spam=1.

    `path` defaults to the registry's copy (`fetch("sms-spam")`). Read with quoting disabled: 5,574 rows.
    `book_compat=True` reads quote characters as pandas' default `read_csv` does (5,572 rows), as the book did.
    """
    if path is None:
        from llmscratch.data.registry import fetch

        path = fetch("sms-spam")
    return load_table(path, 1, 0, labels=SMS_SPAM_LABELS, header=False, delimiter="\t", quoting=book_compat)


# ---------------------------------------------------------------------------------------------------------
# Balancing and splitting (pandas-compatible sampling)
# ---------------------------------------------------------------------------------------------------------


def balance_classes(data: ClassificationData, seed: int = 123) -> ClassificationData:
    """Undersample every class to the size of the smallest one.

    Classes come in label id order; a class larger than the smallest contributes
    `RandomState(seed).choice(rows, k, replace=False)` of its rows (pandas' `sample(k, random_state=seed)`),
    the smallest contributes all its rows in file order. For ham/spam this is the book's
    `concat([ham.sample(747, random_state=123), spam])`.
    """
    by_class = [[i for i, y in enumerate(data.labels) if y == c] for c in range(data.num_classes)]
    present = [rows for rows in by_class if rows]
    k = min(len(rows) for rows in present)
    chosen: list[int] = []
    for rows in present:
        if len(rows) > k:
            pick = np.random.RandomState(seed).choice(len(rows), size=k, replace=False)
            chosen.extend(rows[j] for j in pick)
        else:
            chosen.extend(rows)
    return data.subset(chosen)


def split_data(
    data: ClassificationData, train_frac: float = 0.7, val_frac: float = 0.1, seed: int | None = 123
) -> tuple[ClassificationData, ClassificationData, ClassificationData]:
    """Shuffle (pandas' `sample(frac=1, random_state=seed)`; no shuffle when seed is None) and cut into
    train `int(train_frac n)`, validation `int(val_frac n)` and test (the rest) rows, as the book does."""
    if train_frac <= 0 or val_frac < 0 or train_frac + val_frac > 1:
        raise UserError(f"bad split fractions: train {train_frac}, validation {val_frac} (need sum <= 1)")
    n = len(data)
    order = list(range(n)) if seed is None else np.random.RandomState(seed).permutation(n).tolist()
    train_end = int(n * train_frac)
    val_end = train_end + int(n * val_frac)
    return data.subset(order[:train_end]), data.subset(order[train_end:val_end]), data.subset(order[val_end:])


def sms_spam_splits(
    path: str | os.PathLike | None = None, *, balanced: bool = True, seed: int = 123, book_compat: bool = False
) -> tuple[ClassificationData, ClassificationData, ClassificationData]:
    """The book's SMS spam recipe: balance ham to the 747 spam messages, shuffle, split 70/10/20.

    Gives train 1,045, validation 149 and test 300 messages; `balanced=False` splits all 5,574 messages.
    """
    data = load_sms_spam(path, book_compat=book_compat)
    if balanced:
        data = balance_classes(data, seed=seed)
    return split_data(data, 0.7, 0.1, seed=seed)


def load_classification_splits(
    data: str, text_column: str = "text", label_column: str = "label", balanced: bool | None = None,
    labels: Sequence[str] | None = None,
) -> tuple[tuple[ClassificationData, ClassificationData, ClassificationData], dict]:
    """(train, validation, test) and a description of them, for fine-tuning.

    "sms-spam": the book's recipe (balanced 747 + 747 messages unless `balanced` is False, 70/10/20 split,
    seed 123). A file: read with the named columns, balanced when asked, then the same 70/10/20 split.
    `labels` fixes the allowed label values and their order.
    """
    if data == "sms-spam":
        table = load_sms_spam()
        balanced = True if balanced is None else balanced
        if labels is not None and list(labels) != list(table.label_names):
            raise UserError(f"sms-spam has the labels {table.label_names}, the classifier has {list(labels)}")
    else:
        if not Path(data).is_file():
            raise UserError(f"data {data!r} is neither 'sms-spam' nor an existing file")
        table = load_table(Path(data), text_column, label_column, labels=labels)
        balanced = False if balanced is None else balanced
    if balanced:
        table = balance_classes(table, seed=123)
    splits = split_data(table, 0.7, 0.1, seed=123)
    names = ("train", "validation", "test")
    for name, part in zip(names, splits):
        if len(part) == 0:
            raise UserError(f"{data}: the {name} split is empty ({len(table)} rows); add more data")
    desc = {"name": data, "balanced": balanced, "label_names": table.label_names,
            "rows": {n: len(p) for n, p in zip(names, splits)},
            "label_counts": {n: p.label_counts() for n, p in zip(names, splits)}}
    return splits, desc


# ---------------------------------------------------------------------------------------------------------
# Token ids, padding, loaders
# ---------------------------------------------------------------------------------------------------------


def encode_text(tokenizer, text: str) -> list[int]:
    """Ids of one text to classify: the text as plain text (a special token it spells, "<|endoftext|>", is encoded
    as its characters: texts are data, not markup), the BOS token first for models that expect it (Gemma); []
    when the text itself has no tokens."""
    ids = list(tokenizer.encode(text, allowed_special=frozenset(), disallowed_special=()))
    return with_bos(tokenizer, ids) if ids else []


class ClassificationDataset(Dataset):
    """Each item: (token ids LongTensor (T_i,), label id). Texts are encoded once, truncated to their first
    `max_length` tokens when `max_length` is given."""

    def __init__(self, data: ClassificationData, tokenizer, max_length: int | None = None):
        if max_length is not None and max_length < 1:
            raise UserError(f"max_length must be positive, got {max_length}")
        self.data = data
        self.max_length = max_length
        self.encoded = []
        for i, text in enumerate(data.texts):
            try:
                ids = encode_text(tokenizer, text)
            except ValueError as e:
                raise UserError(f"row {i}: cannot encode the text {text[:60]!r}: {e}") from None
            if not ids:
                raise UserError(f"row {i}: the text {text!r} encodes to no tokens")
            self.encoded.append(ids[:max_length] if max_length is not None else ids)

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.tensor(self.encoded[index], dtype=torch.long), self.data.labels[index]

    @property
    def longest(self) -> int:
        """The length of the longest encoded (and truncated) text."""
        return max(len(ids) for ids in self.encoded)


@dataclass
class ClassificationBatch:
    """A padded batch (right padding)."""

    input_ids: torch.Tensor  # (B, T) long
    attention_mask: torch.Tensor  # (B, T) bool, True on real tokens
    last_index: torch.Tensor  # (B,) long: position of each row's last real token (read the prediction there)
    labels: torch.Tensor  # (B,) long

    def to(self, device: Any) -> ClassificationBatch:
        return ClassificationBatch(*(t.to(device) for t in (
            self.input_ids, self.attention_mask, self.last_index, self.labels)))

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def pad_id_of(tokenizer) -> int:
    """The tokenizer's pad id, or its end-of-text id when it has no pad token."""
    pad = getattr(tokenizer, "pad_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_id", None)
    if pad is None:
        raise UserError("the tokenizer has neither a pad id nor an end-of-text id to pad with")
    return int(pad)


def collate_classification(
    batch: Sequence[tuple[torch.Tensor, int]], pad_id: int, pad_to: int | None = None
) -> ClassificationBatch:
    """Right-pad the rows with `pad_id` to the longest row (or to `pad_to`, e.g. the book's fixed length)."""
    lengths = torch.tensor([len(ids) for ids, _ in batch], dtype=torch.long)  # (B,)
    width = int(lengths.max())
    if pad_to is not None:
        if pad_to < width:
            raise ValueError(f"pad_to={pad_to} is shorter than a row of {width} tokens")
        width = pad_to
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
    for row, (ids, _) in enumerate(batch):
        input_ids[row, : len(ids)] = ids
    attention_mask = torch.arange(width)[None, :] < lengths[:, None]  # (B, T)
    labels = torch.tensor([int(y) for _, y in batch], dtype=torch.long)
    return ClassificationBatch(input_ids, attention_mask, lengths - 1, labels)
