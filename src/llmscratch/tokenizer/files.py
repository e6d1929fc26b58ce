"""Tokenizer files: our own versioned JSON, its readable `.vocab` view, GPT-2's published files, Hugging Face
tokenizer.json, and `load_tokenizer(spec)` that picks the right one.

Our file (format "llmscratch-bpe", version 1) is JSON with one entry per line:
  {"format": "llmscratch-bpe", "version": 1,
   "pre_tokenizer": {"name": "gpt2", "pattern": "...", ...}, "merge_rule": "merges", "ignore_merges": false,
   "bos_id": null, "eos_id": 256, "pad_id": null,
   "special_tokens": {"<|endoftext|>": 256},
   "vocab": {"0": "Ā", ..., "32": "Ġ", ...},      id -> token in GPT-2's byte-level alphabet
   "merges": ["Ġ t", "h e", ...]}                  in priority order, "left right"
"""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Any

from llmscratch.tokenizer.bpe import Tokenizer
from llmscratch.tokenizer.byte_level import text_to_token, token_to_text
from llmscratch.tokenizer.pretokenize import PreTokenizer, canonical_name, from_pattern, get_pre_tokenizer
from llmscratch.utils import UserError, atomic_write_text

FORMAT = "llmscratch-bpe"
VERSION = 1


def _read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{what} {path} is not valid JSON: {e}") from None


# ---------------------------------------------------------------------- our format


def tokenizer_to_dict(tok: Tokenizer) -> dict:
    """The JSON-ready content of our tokenizer file."""
    specials = set(tok.special_tokens.values())
    vocab = {str(i): token_to_text(tok.token_bytes(i)) for i in tok.token_ids() if i not in specials}
    texts = list(vocab.values())
    if len(set(texts)) == len(texts):
        merges: list = [f"{vocab[str(a)]} {vocab[str(b)]}" for a, b in tok.merges]
    else:  # the same bytes under two ids: names would be ambiguous, keep the ids
        merges = [[a, b] for a, b in tok.merges]
    return {
        "format": FORMAT,
        "version": VERSION,
        "pre_tokenizer": tok.pre_tokenizer.to_dict(),
        "merge_rule": tok.merge_rule,
        "ignore_merges": tok.ignore_merges,
        "bos_id": tok.bos_id,
        "eos_id": tok.eos_id,
        "pad_id": tok.pad_id,
        "special_tokens": dict(tok.special_tokens),
        "vocab": vocab,
        "merges": merges,
    }


def tokenizer_from_dict(d: dict, source: str = "tokenizer file") -> Tokenizer:
    """A tokenizer from the content of our tokenizer file."""
    if d.get("format") != FORMAT:
        raise UserError(f"{source} is not an {FORMAT} file (its format is {d.get('format')!r})")
    if d.get("version") != VERSION:
        raise UserError(f"{source} has version {d.get('version')!r}; this llmscratch reads version {VERSION}")
    try:
        vocab = {int(i): text_to_token(t) for i, t in d["vocab"].items()}
        by_text = {}
        for i, t in sorted((int(i), t) for i, t in d["vocab"].items()):
            by_text.setdefault(t, i)
        merges = []
        for m in d["merges"]:
            if isinstance(m, str):
                left, right = m.split(" ")
                merges.append((by_text[left], by_text[right]))
            else:
                merges.append((int(m[0]), int(m[1])))
        return Tokenizer(
            vocab,
            merges,
            {str(t): int(i) for t, i in d["special_tokens"].items()},
            pre_tokenizer=PreTokenizer.from_dict(d["pre_tokenizer"]),
            merge_rule=d.get("merge_rule", "merges"),
            ignore_merges=bool(d.get("ignore_merges", False)),
            bos_id=d.get("bos_id"),
            eos_id=d.get("eos_id"),
            pad_id=d.get("pad_id"),
        )
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise UserError(f"{source} is damaged: {type(e).__name__}: {e}") from None


def write_tokenizer_file(tok: Tokenizer, path: str | os.PathLike) -> None:
    """Save `tok` to `path` (atomically)."""
    atomic_write_text(path, json.dumps(tokenizer_to_dict(tok), ensure_ascii=False, indent=1) + "\n")


def read_tokenizer_file(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer saved by `write_tokenizer_file`."""
    return tokenizer_from_dict(_read_json(path, "tokenizer file"), source=str(path))


def render_token(data: bytes) -> str:
    """A token's bytes for people: UTF-8 text, invalid bytes as \\xNN, control characters as \\uXXXX."""
    text = data.decode("utf-8", errors="backslashreplace")
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c)[0] == "C" else c for c in text)


def write_vocab_view(tok: Tokenizer, path: str | os.PathLike) -> None:
    """A readable list of the vocabulary (minbpe's .vocab): id, [token], and what it was merged from."""
    made_from: dict[int, tuple[int, int]] = {}
    for a, b in tok.merges:
        merged = tok._bytes_to_id.get(tok.token_bytes(a) + tok.token_bytes(b))
        if merged is not None:
            made_from.setdefault(merged, (a, b))
    lines = [
        f"# {tok!r}",
        "# One token a line: id [token] and, for merged tokens, <- [left][right]. Only for reading:",
        "# load the tokenizer file instead. Control characters are written \\uXXXX, bytes of incomplete",
        "# UTF-8 characters \\xNN.",
    ]
    for i in tok.token_ids():
        line = f"{i} [{render_token(tok.token_bytes(i))}]"
        if tok.is_special(i):
            line += " special"
        elif i in made_from:
            a, b = made_from[i]
            line += f" <- [{render_token(tok.token_bytes(a))}][{render_token(tok.token_bytes(b))}]"
        lines.append(line)
    atomic_write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------- GPT-2's files


def read_gpt2_files(encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike) -> Tokenizer:
    """GPT-2's tokenizer from `encoder.json` (token -> id) and `vocab.bpe` (merges, one "left right" a line).

    Uses tiktoken's merge rule ("tokens"), so ids equal tiktoken's gpt2 encoding on every text.
    """
    encoder = _read_json(encoder_json, "GPT-2 encoder.json")
    path = Path(vocab_bpe)
    if not path.is_file():
        raise UserError(f"GPT-2 vocab.bpe not found: {path}")
    lines = path.read_text(encoding="utf-8").split("\n")
    merges = [line for line in lines if line and not line.startswith("#version")]
    specials = {t: i for t, i in encoder.items() if t in ("<|endoftext|>", "<|startoftext|>")}
    eos = specials.get("<|endoftext|>")
    try:
        return Tokenizer.from_vocab_and_merges(
            encoder, merges, specials, pre="gpt2", bos_id=eos, eos_id=eos, merge_rule="tokens"
        )
    except ValueError as e:
        raise UserError(f"GPT-2 files {encoder_json} and {vocab_bpe} do not fit together: {e}") from None


def read_gpt2_folder(folder: str | os.PathLike) -> Tokenizer:
    """GPT-2's tokenizer from a folder holding encoder.json and vocab.bpe."""
    folder = Path(folder)
    return read_gpt2_files(folder / "encoder.json", folder / "vocab.bpe")


# ---------------------------------------------------------------------- Hugging Face tokenizer.json


def _hf_pre_tokenizer(spec: dict | None, source: str) -> PreTokenizer:
    """Our pre-tokenizer for a tokenizer.json "pre_tokenizer" entry, or UserError if it is not one we support."""
    steps = spec.get("pretokenizers", []) if spec and spec.get("type") == "Sequence" else [spec]
    kinds = [s.get("type") if s else None for s in steps]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if byte_level is not None:
        prefix = bool(byte_level.get("add_prefix_space", False))
        use_regex = bool(byte_level.get("use_regex", True))
        if kinds == ["ByteLevel"] and use_regex:
            return PreTokenizer("gpt2", get_pre_tokenizer("gpt2").pattern, add_prefix_space=prefix)
        first = steps[0]
        if kinds == ["Digits", "ByteLevel"] and first.get("individual_digits") and use_regex and not prefix:
            return get_pre_tokenizer("smollm")
        if (
            kinds == ["Split", "ByteLevel"]
            and not use_regex
            and first.get("behavior") == "Isolated"
            and not first.get("invert", False)
            and "Regex" in first.get("pattern", {})
        ):
            return from_pattern(first["pattern"]["Regex"], add_prefix_space=prefix)
    raise UserError(
        f"{source}: pre_tokenizer {json.dumps(spec)} is not supported; supported: ByteLevel, "
        "Sequence[Digits(individual_digits=true), ByteLevel], Sequence[Split(Regex, Isolated), "
        "ByteLevel(use_regex=false)]"
    )


def _hf_token_id(value: Any, lookup: dict[str, int]) -> int | None:
    """The id of a tokenizer_config.json token entry (a string or {"content": ...})."""
    if isinstance(value, dict):
        value = value.get("content")
    return lookup.get(value) if isinstance(value, str) else None


def read_hf_tokenizer_json(path: str | os.PathLike) -> Tokenizer:
    """A byte-level BPE tokenizer from a Hugging Face tokenizer.json.

    Every added token becomes a special token (matched as a whole string when allowed). BOS, EOS and PAD
    come from a tokenizer_config.json beside the file when there is one; otherwise EOS is <|endoftext|>
    if present.
    """
    path = Path(path)
    data = _read_json(path, "tokenizer.json")
    source = str(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or "merges" not in model:
        raise UserError(f"{source}: only BPE models are supported (model type {model and model.get('type')!r})")
    unsupported = [k for k in ("continuing_subword_prefix", "end_of_word_suffix", "dropout") if model.get(k)]
    if model.get("byte_fallback"):
        unsupported.append("byte_fallback")
    if data.get("normalizer") is not None:
        unsupported.append(f"normalizer {data['normalizer'].get('type')}")
    if unsupported:
        raise UserError(f"{source}: unsupported tokenizer features: {', '.join(unsupported)}")
    pre = _hf_pre_tokenizer(data.get("pre_tokenizer"), source)
    specials = {t["content"]: int(t["id"]) for t in data.get("added_tokens") or []}
    lookup = dict(model["vocab"])
    lookup.update(specials)
    ids = {"bos_id": None, "eos_id": specials.get("<|endoftext|>"), "pad_id": None}
    config_path = path.parent / "tokenizer_config.json"
    if config_path.is_file():
        config = _read_json(config_path, "tokenizer_config.json")
        for key in ("bos", "eos", "pad"):
            found = _hf_token_id(config.get(f"{key}_token"), lookup)
            if found is not None:
                ids[f"{key}_id"] = found
    try:
        return Tokenizer.from_vocab_and_merges(
            model["vocab"],
            model["merges"],
            specials,
            pre=pre,
            ignore_merges=bool(model.get("ignore_merges", False)),
            **ids,
        )
    except ValueError as e:
        raise UserError(f"{source}: {e}") from None


# ---------------------------------------------------------------------- load_tokenizer


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """A tokenizer from a short spec.

    - "gpt2": GPT-2's tokenizer (files fetched through the data registry, entry "gpt2-bpe");
    - a file saved by `Tokenizer.save`;
    - a Hugging Face tokenizer.json, or a folder that holds one;
    - a folder holding GPT-2-style encoder.json and vocab.bpe.
    """
    spec = os.fspath(spec)
    if canonical_name(spec) == "gpt2" and not Path(spec).exists():
        try:
            from llmscratch.data.registry import fetch
        except ImportError as e:
            raise UserError(f"the 'gpt2' tokenizer needs the data registry, which is missing: {e}") from None
        return read_gpt2_folder(fetch("gpt2-bpe"))
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return read_hf_tokenizer_json(path / "tokenizer.json")
        if (path / "encoder.json").is_file() and (path / "vocab.bpe").is_file():
            return read_gpt2_folder(path)
        raise UserError(f"tokenizer folder {path} holds neither tokenizer.json nor encoder.json + vocab.bpe")
    if path.is_file():
        data = _read_json(path, "tokenizer file")
        if isinstance(data, dict) and data.get("format") == FORMAT:
            return tokenizer_from_dict(data, source=str(path))
        if isinstance(data, dict) and "model" in data:
            return read_hf_tokenizer_json(path)
        raise UserError(f"{path} is neither an llmscratch tokenizer file nor a Hugging Face tokenizer.json")
    raise UserError(
        f"unknown tokenizer {spec!r}: tried the name 'gpt2', then a file or folder at {path} (not found)"
    )
