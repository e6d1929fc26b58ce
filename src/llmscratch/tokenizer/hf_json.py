"""Hugging Face tokenizer.json, read and written: byte-level BPE files (GPT-2, SmolLM2, Llama 3) are our
`Tokenizer`, SentencePiece-style BPE files (a " " -> "▁" normalizer, byte fallback; Gemma) our
`SentencePieceTokenizer`; both are written back as files `transformers` loads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from llmscratch.tokenizer.bpe import Tokenizer, read_json
from llmscratch.tokenizer.byte_level import token_to_text
from llmscratch.tokenizer.pretokenize import PreTokenizer, from_pattern, get_pre_tokenizer
from llmscratch.tokenizer.sentencepiece import BYTE, CONTROL, NORMAL, SPACE, USER_DEFINED, SentencePieceTokenizer
from llmscratch.utils import UserError, atomic_write_text

# ---------------------------------------------------------------------- reading


def pre_tokenizer_from_hf(spec: dict | None, source: str) -> PreTokenizer:
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


def read_hf_tokenizer_json(path: str | os.PathLike) -> Tokenizer | SentencePieceTokenizer:
    """Our tokenizer for a Hugging Face tokenizer.json: byte-level BPE, or SentencePiece-style BPE when the
    file replaces spaces by "▁" (see `_read_sentencepiece`).

    BOS, EOS and PAD come from a tokenizer_config.json beside the file when there is one.
    """
    path = Path(path)
    data = read_json(path, "tokenizer.json")
    source = str(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE" or "merges" not in model:
        raise UserError(f"{source}: only BPE models are supported (model type {model and model.get('type')!r})")
    unsupported = [k for k in ("continuing_subword_prefix", "end_of_word_suffix", "dropout") if model.get(k)]
    if unsupported:
        raise UserError(f"{source}: unsupported tokenizer features: {', '.join(unsupported)}")
    config_path = path.parent / "tokenizer_config.json"
    config = read_json(config_path, "tokenizer_config.json") if config_path.is_file() else {}
    if data.get("normalizer") == _SPACE_TO_METASPACE:
        return _read_sentencepiece(data, config, source)
    unsupported = ["byte_fallback"] if model.get("byte_fallback") else []
    if data.get("normalizer") is not None:
        unsupported.append(f"normalizer {data['normalizer'].get('type')}")
    if unsupported:
        raise UserError(f"{source}: unsupported tokenizer features: {', '.join(unsupported)}")
    return _read_byte_level(data, config, source)


def _read_byte_level(data: dict, config: dict, source: str) -> Tokenizer:
    """Every added token becomes a special token (matched as a whole string when allowed); EOS defaults to
    <|endoftext|> when present."""
    model = data["model"]
    pre = pre_tokenizer_from_hf(data.get("pre_tokenizer"), source)
    specials = {t["content"]: int(t["id"]) for t in data.get("added_tokens") or []}
    lookup = dict(model["vocab"])
    lookup.update(specials)
    ids = {"bos_id": None, "eos_id": specials.get("<|endoftext|>"), "pad_id": None}
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


# The normalizer of SentencePiece-style files (Gemma's); a pre-tokenizer that splits on " " after it is a no-op.
_SPACE_TO_METASPACE = {"type": "Replace", "pattern": {"String": " "}, "content": SPACE}
_NO_OP_SPLIT = {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": False}


def _read_sentencepiece(data: dict, config: dict, source: str) -> SentencePieceTokenizer:
    """Vocabulary pieces are normal (or byte pieces "<0xNN>" with byte_fallback); added tokens are control
    tokens when "special", else user-defined (always cut out whole); merges keep their list order. BOS is
    added when the post-processor (or tokenizer_config.json's add_bos_token) says so."""
    model = data["model"]
    if data.get("pre_tokenizer") not in (None, _NO_OP_SPLIT):
        spec = json.dumps(data["pre_tokenizer"])
        raise UserError(f"{source}: a SentencePiece-style file with pre_tokenizer {spec} is not supported")
    lookup: dict[str, int] = {str(t): int(i) for t, i in model["vocab"].items()}
    added = {int(t["id"]): t for t in data.get("added_tokens") or []}
    size = max([*lookup.values(), *added, -1]) + 1
    pieces: list[str | None] = [None] * size
    kinds = [NORMAL] * size
    byte_fallback = bool(model.get("byte_fallback"))
    for text, i in lookup.items():
        pieces[i] = text
        if byte_fallback and len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            kinds[i] = BYTE
    for i, t in added.items():
        pieces[i] = str(t["content"])
        kinds[i] = CONTROL if t.get("special") else USER_DEFINED
        lookup.setdefault(pieces[i], i)
    if None in pieces:
        raise UserError(f"{source}: token id {pieces.index(None)} has no piece")
    merges = []
    for n, m in enumerate(model["merges"]):
        left, right = m.split(" ") if isinstance(m, str) else m
        if left not in lookup or right not in lookup:
            raise UserError(f"{source}: merge #{n} {left!r} {right!r} names a piece missing from the vocabulary")
        merges.append((lookup[left], lookup[right]))
    ids = {"bos_id": lookup.get("<bos>", lookup.get("<s>")), "eos_id": lookup.get("<eos>", lookup.get("</s>")),
           "pad_id": lookup.get("<pad>"), "unk_id": lookup.get(model.get("unk_token") or "")}
    for key in ("bos", "eos", "pad"):
        found = _hf_token_id(config.get(f"{key}_token"), lookup)
        if found is not None:
            ids[f"{key}_id"] = found
    add_bos = config.get("add_bos_token", _post_processor_adds_bos(data.get("post_processor")))
    try:
        return SentencePieceTokenizer(pieces, kinds, merges=merges, add_bos=bool(add_bos), **ids)
    except ValueError as e:
        raise UserError(f"{source}: {e}") from None


def _post_processor_adds_bos(post: dict | None) -> bool:
    """Whether a TemplateProcessing post-processor puts a special token before a single sequence."""
    if not post or post.get("type") != "TemplateProcessing":
        return False
    single = post.get("single") or []
    return bool(single) and "SpecialToken" in single[0]


# ---------------------------------------------------------------------- writing


def pre_tokenizer_to_hf(pre: PreTokenizer) -> dict:
    """tokenizer.json "pre_tokenizer" for our PreTokenizer (the inverse of `pre_tokenizer_from_hf`)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": pre.add_prefix_space, "trim_offsets": True}
    if pre.name == "gpt2":
        return {**byte_level, "use_regex": True}
    if pre.name == "smollm" and not pre.add_prefix_space:
        return {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, {**byte_level, "use_regex": True}]}
    split = {"type": "Split", "pattern": {"Regex": pre.pattern}, "behavior": "Isolated", "invert": False}
    return {"type": "Sequence", "pretokenizers": [split, {**byte_level, "use_regex": False}]}


def hf_tokenizer_json(tok) -> dict:
    """The content of a Hugging Face tokenizer.json equivalent to our byte-level BPE tokenizer `tok`.

    Merges are written in our priority order; special tokens are in the vocabulary with their ids and are added
    tokens. UserError for a vocabulary
    that lists the same bytes under two ids (tokenizer.json cannot say that).
    """
    specials = dict(tok.special_tokens)
    special_ids = set(specials.values())
    vocab: dict[str, int] = {}
    for i in tok.token_ids():
        if i in special_ids:
            continue
        text = token_to_text(tok.token_bytes(i))
        if text in vocab:
            raise UserError(f"token ids {vocab[text]} and {i} have the same bytes: not expressible as tokenizer.json")
        vocab[text] = i
    by_id = {i: t for t, i in vocab.items()}
    merges = [f"{by_id[a]} {by_id[b]}" for a, b in tok.merges]
    for t, i in specials.items():  # in the vocabulary too (as Hugging Face's own files have them): an added token
        vocab.setdefault(t, i)     # missing from it gets a new id after the vocabulary, not its own
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True}
        for t, i in sorted(specials.items(), key=lambda kv: kv[1])
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer_to_hf(tok.pre_tokenizer),
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": bool(tok.ignore_merges), "vocab": vocab, "merges": merges,
        },
    }


def sentencepiece_tokenizer_json(tok: SentencePieceTokenizer) -> dict:
    """The content of a Hugging Face tokenizer.json equivalent to our SentencePiece-style tokenizer `tok`: the
    " " -> "▁" normalizer, BPE with byte fallback and `tok.merge_list()` as merges, control and user-defined
    pieces as added tokens, BOS put first by the post-processor when `tok.add_bos`."""
    vocab: dict[str, int] = {}
    for i, piece in enumerate(tok.pieces):
        if piece in vocab:
            raise UserError(f"token ids {vocab[piece]} and {i} are the same piece: not expressible as tokenizer.json")
        vocab[piece] = i
    added = [
        {"id": i, "content": piece, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": kind == CONTROL}
        for i, (piece, kind) in enumerate(zip(tok.pieces, tok.kinds)) if kind in (CONTROL, USER_DEFINED)
    ]
    post = None
    if tok.add_bos and tok.bos_id is not None:
        bos = tok.pieces[tok.bos_id]
        post = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [tok.bos_id], "tokens": [bos]}},
        }
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": _SPACE_TO_METASPACE, "pre_tokenizer": None, "post_processor": post,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None if tok.unk_id is None else tok.pieces[tok.unk_id],
            "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
            "byte_fallback": BYTE in tok.kinds, "ignore_merges": False, "vocab": vocab,
            "merges": [[tok.pieces[a], tok.pieces[b]] for a, b in tok.merge_list()],
        },
    }


def write_hf_tokenizer(tok, folder: Path, max_length: int | None = None, chat_template: str | None = None) -> list[str]:
    """Tokenizer files `transformers.AutoTokenizer` loads: tokenizer.json + tokenizer_config.json always, and
    for GPT-2-style tokenizers also GPT-2's vocab.json + merges.txt. Returns the file names written."""
    config: dict[str, Any] = {"clean_up_tokenization_spaces": False, "model_max_length": max_length or 1_000_000}
    if isinstance(tok, SentencePieceTokenizer):
        written = _write_sentencepiece(tok, folder, config)
    else:
        written = _write_byte_level(tok, folder, config)
    if chat_template:
        config["chat_template"] = chat_template
        atomic_write_text(folder / "chat_template.jinja", chat_template)
        written.append("chat_template.jinja")
    atomic_write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return [*written, "tokenizer_config.json"]


def _write_sentencepiece(tok: SentencePieceTokenizer, folder: Path, config: dict) -> list[str]:
    data = sentencepiece_tokenizer_json(tok)
    atomic_write_text(folder / "tokenizer.json", json.dumps(data, ensure_ascii=False) + "\n")
    config.update(tokenizer_class="PreTrainedTokenizerFast", add_bos_token=tok.add_bos, add_eos_token=False)
    for key in ("bos", "eos", "pad", "unk"):
        i = getattr(tok, f"{key}_id")
        if i is not None:
            config[f"{key}_token"] = tok.pieces[i]
    return ["tokenizer.json"]


def _write_byte_level(tok: Tokenizer, folder: Path, config: dict) -> list[str]:
    data = hf_tokenizer_json(tok)
    atomic_write_text(folder / "tokenizer.json", json.dumps(data, ensure_ascii=False) + "\n")
    written = ["tokenizer.json"]
    gpt2_style = tok.pre_tokenizer.name == "gpt2" and not tok.pre_tokenizer.add_prefix_space
    if gpt2_style:  # vocab.json is encoder.json, merges.txt is vocab.bpe
        vocab = dict(data["model"]["vocab"]) | {t: i for t, i in tok.special_tokens.items()}
        vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
        atomic_write_text(folder / "vocab.json", json.dumps(vocab, ensure_ascii=False) + "\n")
        atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(data["model"]["merges"]) + "\n")
        written += ["vocab.json", "merges.txt"]
    config.update(tokenizer_class="GPT2Tokenizer" if gpt2_style else "PreTrainedTokenizerFast",
                  add_prefix_space=tok.pre_tokenizer.add_prefix_space)
    for key in ("bos", "eos", "pad"):
        i = getattr(tok, f"{key}_id", None)
        if i is not None:
            config[f"{key}_token"] = token_to_text(tok.token_bytes(i)) if not tok.is_special(i) else tok.decode([i])
    if gpt2_style and "eos_token" in config:
        config["unk_token"] = config["eos_token"]
    return written
