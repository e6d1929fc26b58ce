"""Tokenizer files by name: GPT-2's published encoder.json + vocab.bpe, and `load_tokenizer(spec)`, which
picks the reader for any tokenizer file or folder (our byte-level and SentencePiece files, Hugging Face
tokenizer.json, GPT-2's files). Each format's reader and writer live with it: our byte-level file in bpe.py,
our SentencePiece file in sentencepiece.py, tokenizer.json in hf_json.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from llmscratch.tokenizer import sentencepiece
from llmscratch.tokenizer.bpe import FORMAT, Tokenizer, read_json, tokenizer_from_dict
from llmscratch.tokenizer.hf_json import read_hf_tokenizer_json
from llmscratch.tokenizer.pretokenize import canonical_name
from llmscratch.utils import UserError

# ---------------------------------------------------------------------- GPT-2's files


def read_gpt2_files(encoder_json: str | os.PathLike, vocab_bpe: str | os.PathLike) -> Tokenizer:
    """GPT-2's tokenizer from `encoder.json` (token -> id) and `vocab.bpe` (merges, one "left right" a line).

    Uses tiktoken's merge rule ("tokens"), so ids equal tiktoken's gpt2 encoding on every text.
    """
    encoder = read_json(encoder_json, "GPT-2 encoder.json")
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


# ---------------------------------------------------------------------- load_tokenizer


def _gguf_tokenizer(path: Path):
    """The tokenizer in a .gguf file's metadata (no weights read)."""
    from llmscratch.weights.gguf import open_gguf, tokenizer_from_gguf

    return tokenizer_from_gguf(open_gguf(path))


def load_tokenizer(spec: str | os.PathLike):
    """A tokenizer from a short spec.

    - "gpt2": GPT-2's tokenizer (files fetched through the data registry, entry "gpt2-bpe");
    - a file saved by `Tokenizer.save` or `SentencePieceTokenizer.save`;
    - a Hugging Face tokenizer.json, or a folder that holds one;
    - a folder holding GPT-2-style encoder.json and vocab.bpe, or one of our model folders (its tokenizer, or
      the one its tokenizer.ref.json names);
    - a .gguf file, or a registered model's name (`llmscratch models list`): the tokenizer it carries.
    """
    spec = os.fspath(spec)
    if canonical_name(spec) == "gpt2" and not Path(spec).exists():
        # Imported here only to keep `import llmscratch.tokenizer` light: the data package pulls in torch.
        # (No cycle: data/ never imports the tokenizer.)
        from llmscratch.data.registry import fetch

        return read_gpt2_folder(fetch("gpt2-bpe"))
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return load_tokenizer(path / "tokenizer.json")
        if (path / "encoder.json").is_file() and (path / "vocab.bpe").is_file():
            return read_gpt2_folder(path)
        if (path / "tokenizer.ref.json").is_file():  # one of our model folders that names its tokenizer ("gpt2")
            from llmscratch.weights.ours import load_tokenizer_of

            if (named := load_tokenizer_of(path)) is None:
                raise UserError(f"{path} has no tokenizer (its tokenizer.ref.json names none)")
            return named
        raise UserError(f"tokenizer folder {path} holds neither tokenizer.json nor encoder.json + vocab.bpe")
    if path.is_file() and path.suffix == ".gguf":
        return _gguf_tokenizer(path)
    if path.is_file():
        data = read_json(path, "tokenizer file")
        if isinstance(data, dict) and data.get("format") == FORMAT:
            return tokenizer_from_dict(data, source=str(path))
        if isinstance(data, dict) and data.get("format") == sentencepiece.FORMAT:
            return sentencepiece.SentencePieceTokenizer.from_dict(data, source=str(path))
        if isinstance(data, dict) and "model" in data:
            return read_hf_tokenizer_json(path)
        raise UserError(f"{path} is neither an llmscratch tokenizer file nor a Hugging Face tokenizer.json")
    from llmscratch.weights.registry import MODELS  # the tokenizer of a registered model

    if spec in MODELS:
        from llmscratch.weights.registry import fetch

        return load_tokenizer(fetch(spec))  # a .gguf file or a folder
    raise UserError(
        f"unknown tokenizer {spec!r}: not 'gpt2', not a registered model ({', '.join(MODELS)}), and no file or "
        f"folder at {path}"
    )
