"""Instruction data: reading entries, the book's split, prompt formats, encoding and the collate function.

An *entry* is a dict with `instruction`, `input` (may be "") and `output`; other fields are kept (a preference
file's `chosen` and `rejected`, for instance). `load_entries` reads

- a data registry name (`instruction-data`, `instruction-data-preference`),
- a JSON file holding a list of entries, or a JSONL file (one entry per line),

in the common shapes: Alpaca's `instruction/input/output`, Dolly's `instruction/context/response`, and chat
records holding a `messages` list of `{role, content}` turns (the last turn, the assistant's, is the output).

Prompt formats (`PROMPT_FORMATS`):

- `alpaca`: the book's text, "Below is an instruction that describes a task. ..." then `### Instruction:`,
  `### Input:` (only when the input is not empty) and `### Response:`;
- `phi3`: `<|user|>\\n...<|end|>\\n<|assistant|>\\n`, the response ending in `<|end|>`;
- `chat`: the model's own chat template (from its GGUF file or tokenizer files), so that an instruct model is
  tuned in the format it was trained on.

`format_prompt` gives the text up to where the response starts, `format_response` the response text, without
the end-of-text token that `collate_instruction` appends.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from llmscratch.utils import UserError

PROMPT_FORMATS = ("alpaca", "phi3", "chat")
ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
# Other names of the fields, in the order tried (Dolly-style data sets say context/response).
FIELD_ALIASES = {"instruction": ("instruction",), "input": ("input", "context"), "output": ("output", "response")}
ROLES = ("system", "user", "assistant")


# ---------------------------------------------------------------------------------------------------------
# Reading entries
# ---------------------------------------------------------------------------------------------------------


class EntriesFile(NamedTuple):
    """What `read_entries` found: the usable entries, and the skipped ones as {reason: [where, ...]}."""

    entries: list[dict]
    skipped: dict[str, list[str]]
    source: str

    def warning(self) -> str | None:
        """One line saying how many entries were skipped and why (None when none was)."""
        if not self.skipped:
            return None
        total = sum(len(v) for v in self.skipped.values())
        reasons = "; ".join(f"{len(v)} {reason} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                            for reason, v in self.skipped.items())
        return f"{self.source}: skipped {total} of {total + len(self.entries)} entries: {reasons}"


def resolve_source(source: str | Path) -> Path:
    """A local file for `source`: an existing path, or a data registry name (fetched)."""
    from llmscratch.data.registry import DATASETS, fetch

    path = Path(source).expanduser()
    if path.is_file():
        return path
    if str(source) in DATASETS:
        return fetch(str(source))
    if path.exists():
        raise UserError(f"{path} is a folder; give a .json or .jsonl file of instruction entries")
    json_sets = [n for n, d in DATASETS.items() if d.kind == "json"]
    raise UserError(f"instruction data {str(source)!r} is neither a file nor a data set name "
                    f"(instruction data sets: {', '.join(json_sets)})")


def read_entries(source: str | Path, require_output: bool = True) -> EntriesFile:
    """The entries of a file or registry name, normalised (see `normalize_entry`); bad ones counted, not kept.

    A file that starts with `[` is read as one JSON list (a syntax error is a UserError); anything else as JSONL,
    where lines that are not JSON are skipped and counted.
    """
    path = resolve_source(source)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not UTF-8 text; instruction data is JSON or JSONL") from None
    skipped: dict[str, list[str]] = {}
    raw: list[tuple[str, object]] = []
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        raw = [(f"entry {i}", item) for i, item in enumerate(items)]
    elif text.lstrip().startswith("{") and _is_one_object(text):
        raise UserError(f"{path} holds one JSON object; instruction data is a JSON list of entries or JSONL "
                        "(one entry per line)")
    else:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                raw.append((f"line {n}", json.loads(line)))
            except json.JSONDecodeError:
                skipped.setdefault("lines that are not JSON", []).append(f"line {n}")
    entries = []
    for where, item in raw:
        try:
            entries.append(normalize_entry(item, require_output))
        except ValueError as e:
            skipped.setdefault(str(e), []).append(where)
    if not entries:
        detail = EntriesFile([], skipped, str(source)).warning() or "the file holds no entries"
        raise UserError(f"no usable instruction entries in {source}: {detail}")
    return EntriesFile(entries, skipped, str(source))


def _is_one_object(text: str) -> bool:
    """True for a text that is one JSON object other than an entry (e.g. {"data": [...]})."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(value, dict) and not ({"instruction", "messages"} & set(value))


def load_entries(source: str | Path, require_output: bool = True, quiet: bool = False) -> list[dict]:
    """The usable entries of `source` (file or registry name); skipped ones are reported on stderr in one line."""
    found = read_entries(source, require_output)
    if not quiet and (message := found.warning()):
        print(f"warning: {message}", file=sys.stderr)
    return found.entries


def normalize_entry(item: object, require_output: bool = True) -> dict:
    """One entry as {"instruction", "input", "output", ...other fields}; ValueError(reason) when it is unusable.

    A `messages` entry keeps its turns; its last user turn becomes `instruction` and its final assistant turn
    `output`. Aliases (context -> input, response -> output) are renamed.
    """
    if not isinstance(item, Mapping):
        raise ValueError("entries that are not JSON objects")
    if "messages" in item:
        return _normalize_messages(item, require_output)
    entry = {k: v for k, v in item.items() if not any(k in names for names in FIELD_ALIASES.values())}
    for field, names in FIELD_ALIASES.items():
        value = next((item[n] for n in names if n in item), None)
        if value is None:
            value = "" if field == "input" or (field == "output" and not require_output) else None
        if value is None:
            raise ValueError(f"entries without '{field}'")
        if not isinstance(value, str):
            raise ValueError(f"entries whose '{field}' is not a string")
        entry[field] = value
    if not entry["instruction"].strip():
        raise ValueError("entries with an empty instruction")
    if require_output and not entry["output"].strip():
        raise ValueError("entries with an empty output")
    return entry


def _normalize_messages(item: Mapping, require_output: bool) -> dict:
    turns = item["messages"]
    if not isinstance(turns, list) or not turns:
        raise ValueError("entries whose 'messages' is not a non-empty list")
    for t in turns:
        if not isinstance(t, Mapping) or t.get("role") not in ROLES or not isinstance(t.get("content"), str):
            raise ValueError("entries with a message that is not {role: system|user|assistant, content: text}")
    messages = [{"role": t["role"], "content": t["content"]} for t in turns]
    users = [m for m in messages if m["role"] == "user"]
    if not users:
        raise ValueError("conversations without a user message")
    ends_with_answer = messages[-1]["role"] == "assistant"
    if require_output and (not ends_with_answer or not messages[-1]["content"].strip()):
        raise ValueError("conversations that do not end with a non-empty assistant message")
    entry = {k: v for k, v in item.items() if k != "messages"}
    entry.update(messages=messages, instruction=users[-1]["content"], input="",
                 output=messages[-1]["content"] if ends_with_answer else "")
    return entry


SPLIT_RULE = "in file order: 85% train, then 10% test, the rest validation"  # book_split, for messages


class BookSplit(NamedTuple):
    """The book's split, in file order: first 85% train, next 10% test, last 5% validation."""

    train: list[dict]
    test: list[dict]
    val: list[dict]


def book_split(entries: Sequence[dict], train_frac: float = 0.85, test_frac: float = 0.10) -> BookSplit:
    """Split in file order as chapter 7 does: int(0.85 n) train, int(0.1 n) test, the rest validation.

    For the 1,100 entries of `instruction-data`: 935 / 110 / 55.
    """
    n = len(entries)
    n_train, n_test = int(n * train_frac), int(n * test_frac)
    return BookSplit(list(entries[:n_train]), list(entries[n_train : n_train + n_test]),
                     list(entries[n_train + n_test :]))


SPLITS = ("train", "test", "val")


def split_entries(entries: Sequence[dict], split: str) -> list[dict]:
    """One part of the book split by name (train, test, val/validation), or "all"."""
    if split == "all":
        return list(entries)
    split = "val" if split == "validation" else split
    if split not in SPLITS:
        raise UserError(f"split must be one of train, test, val or all, got {split!r}")
    return getattr(book_split(entries), split)


# ---------------------------------------------------------------------------------------------------------
# Prompt formats
# ---------------------------------------------------------------------------------------------------------


def check_format(fmt: str, chat_template: str | None = None) -> None:
    """UserError for an unknown format, or for `chat` when the model has no chat template."""
    if fmt not in PROMPT_FORMATS:
        raise UserError(f"prompt format must be one of {', '.join(PROMPT_FORMATS)}, got {fmt!r}")
    if fmt == "chat" and not chat_template:
        raise UserError("prompt format 'chat' needs the model's chat template, and this model has none (no "
                        "template in its GGUF file, tokenizer_config.json or chat_template.jinja); use the "
                        "prompt format alpaca or phi3")


def user_text(entry: Mapping) -> str:
    """The instruction and, when there is one, the input below it (how phi3 and chat formats ask)."""
    return entry["instruction"] + (f"\n\n{entry['input']}" if entry.get("input") else "")


def conversation(entry: Mapping) -> list[dict]:
    """The turns before the answer: the entry's own messages (without the final assistant turn), or one user
    turn holding the instruction and input."""
    if "messages" in entry:
        msgs = entry["messages"]
        return [dict(m) for m in (msgs[:-1] if msgs[-1]["role"] == "assistant" else msgs)]
    return [{"role": "user", "content": user_text(entry)}]


def alpaca_input(entry: Mapping) -> str:
    """The book's `format_input`: the preamble, the instruction, and the input when it is not empty."""
    if "messages" in entry and sum(m["role"] == "user" for m in entry["messages"]) > 1:
        raise UserError("the alpaca format holds one instruction, and this entry is a conversation of several "
                        "user turns; use the prompt format chat or phi3")
    system = next((m["content"] for m in entry.get("messages", []) if m["role"] == "system"), None)
    text = f"{system or ALPACA_PREAMBLE}\n\n### Instruction:\n{entry['instruction']}"
    return text + (f"\n\n### Input:\n{entry['input']}" if entry.get("input") else "")


def _phi3(turns: Sequence[Mapping]) -> str:
    return "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in turns)


def _token_text(tokenizer, token_id: int | None) -> str | None:
    return None if tokenizer is None or token_id is None else tokenizer.decode([token_id])


def _render(entry: Mapping, chat_template: str, tokenizer, with_answer: bool) -> str:
    from llmscratch.chat import render_chat

    turns = conversation(entry)
    if with_answer:
        turns = [*turns, {"role": "assistant", "content": entry["output"]}]
    return render_chat(chat_template, turns, add_generation_prompt=not with_answer,
                       bos_token=_token_text(tokenizer, getattr(tokenizer, "bos_id", None)),
                       eos_token=_token_text(tokenizer, getattr(tokenizer, "eos_id", None)))


def format_prompt(entry: Mapping, fmt: str = "alpaca", tokenizer=None, chat_template: str | None = None) -> str:
    """The prompt text of `entry` in format `fmt`: everything before the response (ends where the model writes).

    `chat` needs the model's `chat_template` (and its tokenizer, for the bos/eos texts some templates use).
    """
    check_format(fmt, chat_template)
    if fmt == "alpaca":
        return alpaca_input(entry) + "\n\n### Response:\n"
    if fmt == "phi3":
        return _phi3(conversation(entry)) + "<|assistant|>\n"
    return _render(entry, chat_template, tokenizer, with_answer=False)


def format_response(entry: Mapping, fmt: str = "alpaca", tokenizer=None, chat_template: str | None = None) -> str:
    """The response text of `entry` in format `fmt`, without the end-of-text token (the collate appends it).

    alpaca: the output; phi3: the output then `<|end|>`; chat: what the template writes after the prompt for the
    assistant's turn (e.g. `output<|im_end|>`), trailing whitespace and a final end-of-text token removed.
    """
    check_format(fmt, chat_template)
    if fmt == "alpaca":
        return entry["output"]
    if fmt == "phi3":
        return entry["output"] + "<|end|>"
    prompt = _render(entry, chat_template, tokenizer, with_answer=False)
    full = _render(entry, chat_template, tokenizer, with_answer=True)
    if not full.startswith(prompt):
        raise UserError("the chat template writes the conversation with an answer differently from the prompt it "
                        "writes for generation, so the response cannot be cut from it; use alpaca or phi3")
    response = full[len(prompt) :].rstrip()
    eos = _token_text(tokenizer, getattr(tokenizer, "eos_id", None))
    return response[: -len(eos)] if eos and response.endswith(eos) and len(response) > len(eos) else response


def stop_strings(fmt: str) -> tuple[str, ...]:
    """Texts that end a response in format `fmt` besides the end-of-text and end-of-turn tokens."""
    return {"alpaca": ("### Instruction:",), "phi3": ("<|end|>", "<|user|>"), "chat": ()}[fmt]


def encode_example(
    entry: Mapping, fmt: str, tokenizer, chat_template: str | None = None
) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of `entry`, without the end token. The template's special tokens are encoded
    as special tokens."""
    prompt = format_prompt(entry, fmt, tokenizer, chat_template)
    response = format_response(entry, fmt, tokenizer, chat_template)
    return (list(tokenizer.encode(prompt, allowed_special="all")),
            list(tokenizer.encode(response, allowed_special="all")))


def end_id_of(tokenizer) -> int:
    """The token that ends a response: the tokenizer's end-of-text id (else its pad id)."""
    end = getattr(tokenizer, "eos_id", None)
    if end is None:
        end = getattr(tokenizer, "pad_id", None)
    if end is None:
        raise UserError("the tokenizer has no end-of-text token to end responses with")
    return int(end)


# ---------------------------------------------------------------------------------------------------------
# Encoded examples, batching and the collate function
# ---------------------------------------------------------------------------------------------------------

IGNORE_INDEX = -100


class InstructionBatch(NamedTuple):
    """inputs (B, T) and targets (B, T): targets are the inputs shifted by one, -100 where no loss is taken."""

    inputs: torch.Tensor
    targets: torch.Tensor


def collate_instruction(
    batch: Sequence[Sequence[int]],
    pad_id: int = 50256,
    end_id: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    max_length: int | None = None,
    prompt_lengths: Sequence[int] | None = None,
) -> InstructionBatch:
    """The book's instruction collate, written out:

    1. append the end token `end_id` (default: `pad_id`, as GPT-2's <|endoftext|> is both) to every row;
    2. pad every row with `pad_id` to the longest row of the batch;
    3. inputs = each row without its last token, targets = each row without its first (shifted by one);
    4. every target after a row's end token is `ignore_index` (the first end token stays: the model learns to
       stop), found by position, so an end or pad id inside the text is never masked;
    5. with `prompt_lengths`, the targets that are prompt tokens (instruction and input) are `ignore_index` too;
    6. with `max_length`, inputs and targets are cut to their first `max_length` tokens.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    end_id = pad_id if end_id is None else end_id
    lengths = [len(row) + 1 for row in batch]  # with the end token
    width = max(lengths)
    padded = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T + 1)
    for i, row in enumerate(batch):
        padded[i, : lengths[i]] = torch.tensor([*row, end_id], dtype=torch.long)
    inputs, targets = padded[:, :-1].clone(), padded[:, 1:].clone()  # (B, T), (B, T)
    position = torch.arange(width - 1).unsqueeze(0)  # (1, T): targets[:, j] is token j + 1
    targets[position >= torch.tensor(lengths).unsqueeze(1) - 1] = ignore_index  # after the end token
    if prompt_lengths is not None:
        targets[position < torch.tensor(list(prompt_lengths)).unsqueeze(1) - 1] = ignore_index  # prompt tokens
    if max_length is not None:
        inputs, targets = inputs[:, :max_length], targets[:, :max_length]
    return InstructionBatch(inputs, targets)


class InstructionDataset:
    """Entries encoded in one prompt format: `ids[i]` (prompt + response tokens, without the end token) and
    `prompt_lengths[i]`. `max_length` is applied by the collate (inputs and targets cut, as the book does)."""

    def __init__(self, entries: Sequence[Mapping], tokenizer, fmt: str = "alpaca", chat_template: str | None = None,
                 max_length: int | None = None):
        check_format(fmt, chat_template)
        if max_length is not None and max_length < 1:
            raise UserError(f"max_length must be >= 1, got {max_length}")
        self.entries = list(entries)
        self.fmt = fmt
        self.max_length = max_length
        self.ids: list[list[int]] = []
        self.prompt_lengths: list[int] = []
        for entry in self.entries:
            prompt, response = encode_example(entry, fmt, tokenizer, chat_template)
            self.ids.append(prompt + response)
            self.prompt_lengths.append(len(prompt))

    def __len__(self) -> int:
        return len(self.ids)

    def longest(self) -> int:
        """Input tokens of the longest row (its prompt and response)."""
        return max((len(r) for r in self.ids), default=0)

    def truncated(self) -> int:
        """How many rows max_length cuts (they lose their last targets, the end token among them)."""
        return 0 if self.max_length is None else sum(len(r) > self.max_length for r in self.ids)

    def no_response(self) -> list[int]:
        """Indices of rows whose prompt alone fills max_length: masking the prompt leaves them no target."""
        if self.max_length is None:
            return []
        return [i for i, p in enumerate(self.prompt_lengths) if p > self.max_length]

    def collate(self, indices: Sequence[int], pad_id: int, end_id: int, mask_prompt: bool = False) -> InstructionBatch:
        """The rows `indices` as one batch (see `collate_instruction`)."""
        rows = [self.ids[i] for i in indices]
        prompts = [self.prompt_lengths[i] for i in indices] if mask_prompt else None
        return collate_instruction(rows, pad_id, end_id, IGNORE_INDEX, self.max_length, prompts)


def epoch_order(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = False,
                pool: int = 32) -> list[int]:
    """The row order of one epoch, a pure function of (seed, epoch): a random permutation; with `group_by_length`,
    rows are sorted by length inside pools of `pool` batches and the batches then shuffled, so a batch holds rows
    of similar length (less padding) while the order of batches stays random."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=g).tolist()
    if not group_by_length:
        return order
    chunk = batch_size * pool
    grouped = []
    for s in range(0, len(order), chunk):
        grouped += sorted(order[s : s + chunk], key=lambda i: lengths[i], reverse=True)
    batches = [grouped[s : s + batch_size] for s in range(0, len(grouped), batch_size)]
    full, rest = [b for b in batches if len(b) == batch_size], [b for b in batches if len(b) < batch_size]
    shuffled = [full[i] for i in torch.randperm(len(full), generator=g).tolist()]
    return [i for b in shuffled + rest for i in b]


# ---------------------------------------------------------------------------------------------------------
# Chat templates that write the alpaca and phi3 formats (saved with a tuned model, so `chat` speaks its format)
# ---------------------------------------------------------------------------------------------------------

ALPACA_CHAT_TEMPLATE = (
    "{%- set ns = namespace(preamble='" + ALPACA_PREAMBLE + "') -%}"
    "{%- for m in messages if m['role'] == 'system' -%}{%- set ns.preamble = m['content'] -%}{%- endfor -%}"
    "{{- ns.preamble -}}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}{{ '\\n\\n### Instruction:\\n' + m['content'] }}"
    "{%- elif m['role'] == 'assistant' -%}{{ '\\n\\n### Response:\\n' + m['content'] + eos_token }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '\\n\\n### Response:\\n' }}{%- endif -%}"
)
PHI3_CHAT_TEMPLATE = (
    "{%- for m in messages -%}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
)


def chat_template_for(fmt: str, model_template: str | None = None) -> str | None:
    """The chat template that writes prompt format `fmt` (for `chat`: the model's own)."""
    check_format(fmt, model_template)
    return {"alpaca": ALPACA_CHAT_TEMPLATE, "phi3": PHI3_CHAT_TEMPLATE}.get(fmt, model_template)


# ---------------------------------------------------------------------------------------------------------
# The prompt format recorded in a tuned model's folder
# ---------------------------------------------------------------------------------------------------------

INSTRUCT_INFO = "instruct.json"


def write_instruct_info(folder: str | Path, info: Mapping) -> Path:
    """Record how a model was instruction-tuned ({"prompt_format": ..., ...}) in FOLDER/instruct.json."""
    from llmscratch.utils import atomic_write_text

    check_format(info["prompt_format"], "given" if info["prompt_format"] == "chat" else None)
    path = Path(folder) / INSTRUCT_INFO
    atomic_write_text(path, json.dumps(dict(info), indent=2) + "\n")
    return path


def read_instruct_info(model: str | Path) -> dict | None:
    """What instruct.json of a model folder records (None for a model that was not tuned here)."""
    path = Path(model).expanduser() / INSTRUCT_INFO
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is damaged: {e}") from None
    if not isinstance(info, dict) or info.get("prompt_format") not in PROMPT_FORMATS:
        raise UserError(f"{path} does not name a prompt format ({', '.join(PROMPT_FORMATS)})")
    return info
