"""Tokenizers, our own code: byte-level BPE (GPT-2, SmolLM2, Llama 3; training, encoding, decoding) and
SentencePiece-style BPE (Gemma), loaded from GPT-2's published files, Hugging Face tokenizer.json files,
GGUF metadata and our own files.

    from llmscratch.tokenizer import load_tokenizer, train
    tok = load_tokenizer("gpt2")
    ids = tok.encode("Hello world<|endoftext|>", allowed_special="all")
"""

from llmscratch.tokenizer.bpe import Tokenizer
from llmscratch.tokenizer.files import load_tokenizer
from llmscratch.tokenizer.pretokenize import PreTokenizer, get_pre_tokenizer
from llmscratch.tokenizer.sentencepiece import SentencePieceTokenizer
from llmscratch.tokenizer.train import train


def fingerprint(tokenizer) -> str | None:
    """A short hash of what each id of `tokenizer` stands for (its bytes or piece, in id order): two tokenizers
    with one fingerprint give ids the same meaning. None for an object that is not one of our tokenizers."""
    import hashlib

    h = hashlib.sha256()
    if isinstance(tokenizer, Tokenizer):
        for i in range(tokenizer.vocab_size):
            b = tokenizer._id_to_bytes[i]
            h.update(b"\xff" if b is None else len(b).to_bytes(4, "little") + b)
    elif isinstance(tokenizer, SentencePieceTokenizer):
        for p in tokenizer.pieces:
            b = p.encode("utf-8")
            h.update(len(b).to_bytes(4, "little") + b)
    else:
        return None
    return h.hexdigest()[:16]


def encode_prompt(tokenizer, text: str, allowed_special="all") -> list[int]:
    """Ids of a prompt: special tokens in the text allowed (or only `allowed_special`, as `encode` takes it), and
    the BOS token first when the tokenizer's model expects one (`add_bos`, Gemma) and the ids do not already start
    with it."""
    return with_bos(tokenizer, list(tokenizer.encode(text, allowed_special=allowed_special)))


def with_bos(tokenizer, ids: list[int]) -> list[int]:
    """`ids` with the BOS token first when the tokenizer's model expects one (`add_bos`, Gemma) and they do not
    start with it already."""
    bos = getattr(tokenizer, "bos_id", None)
    if getattr(tokenizer, "add_bos", False) and bos is not None and ids[:1] != [bos]:
        return [bos, *ids]
    return ids


__all__ = [
    "PreTokenizer", "SentencePieceTokenizer", "Tokenizer", "encode_prompt", "fingerprint", "get_pre_tokenizer",
    "load_tokenizer", "train", "with_bos",
]
