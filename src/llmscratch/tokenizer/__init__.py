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


def encode_prompt(tokenizer, text: str, allowed_special="all") -> list[int]:
    """Ids of a prompt: special tokens in the text allowed (or only `allowed_special`, as `encode` takes it), and
    the BOS token first when the tokenizer's model expects one (`add_bos`, Gemma) and the ids do not already start
    with it."""
    ids = list(tokenizer.encode(text, allowed_special=allowed_special))
    bos = getattr(tokenizer, "bos_id", None)
    if getattr(tokenizer, "add_bos", False) and bos is not None and ids[:1] != [bos]:
        ids = [bos, *ids]
    return ids


__all__ = [
    "PreTokenizer", "SentencePieceTokenizer", "Tokenizer", "encode_prompt", "get_pre_tokenizer", "load_tokenizer",
    "train",
]
