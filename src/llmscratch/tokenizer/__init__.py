"""Byte-level BPE tokenizers, our own code: training, encoding, decoding, and loading GPT-2's published
files, Hugging Face tokenizer.json files and GGUF-style vocabulary lists.

    from llmscratch.tokenizer import load_tokenizer, train
    tok = load_tokenizer("gpt2")
    ids = tok.encode("Hello world<|endoftext|>", allowed_special="all")
"""

from llmscratch.tokenizer.bpe import Tokenizer
from llmscratch.tokenizer.files import load_tokenizer
from llmscratch.tokenizer.pretokenize import PreTokenizer, get_pre_tokenizer
from llmscratch.tokenizer.train import train

__all__ = ["PreTokenizer", "Tokenizer", "get_pre_tokenizer", "load_tokenizer", "train"]
