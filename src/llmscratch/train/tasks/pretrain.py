"""Next-token prediction on sliding windows of a corpus: the pretraining task, and loading its data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from llmscratch.data.pretrain import EpochSampler, TokenFile, WindowDataset, encode_text, split_train_val
from llmscratch.tokenizer import fingerprint
from llmscratch.train.tasks import BaseTask
from llmscratch.utils import UserError


class PretrainTask(BaseTask):
    """Cross-entropy of every next token over (input, target) windows; val windows unshuffled.

    The training order of epoch e is a pure function of (seed, e) (data.pretrain.EpochSampler, windows dealt
    to ranks round-robin, incomplete batches dropped); nothing here draws from the global RNGs.
    """

    name = "pretrain"
    produces_text = True

    def __init__(self, train: WindowDataset, val: WindowDataset | None = None, seed: int = 123, shuffle: bool = True):
        self.train = train
        self.val = val
        self.seed = seed
        self.shuffle = shuffle

    def _sampler(self, rank: int, world_size: int) -> EpochSampler:
        return EpochSampler(len(self.train), shuffle=self.shuffle, seed=self.seed, rank=rank, world_size=world_size,
                            drop_last=True)

    def num_train_batches(self, batch_size: int, world_size: int = 1) -> int:
        return self._sampler(0, world_size).num_samples // batch_size

    def train_batches(self, epoch: int, batch_size: int, start: int = 0, rank: int = 0, world_size: int = 1):
        order = self._sampler(rank, world_size).order(epoch)
        for b in range(start, len(order) // batch_size):
            yield _stack(self.train, order[b * batch_size : (b + 1) * batch_size])

    def val_batches(self, batch_size: int, rank: int = 0, world_size: int = 1):
        if self.val is None:
            return
        mine = list(range(rank, len(self.val), world_size))  # every window once over all ranks
        for i in range(0, len(mine), batch_size):
            yield _stack(self.val, mine[i : i + batch_size])

    def loss(self, model, batch) -> torch.Tensor:
        inputs, targets = batch
        logits = model(inputs)  # (B, T, vocab)
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())


def _stack(ds: WindowDataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [ds[i] for i in indices]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])  # (B, T), (B, T)


@dataclass
class PretrainData:
    """Train and validation windows of a corpus, and where they came from."""

    train: WindowDataset
    val: WindowDataset | None
    source: str
    num_tokens: int

    def describe(self) -> str:
        v = len(self.val) if self.val is not None else 0
        return (f"{self.source}: {self.num_tokens:,} tokens, {len(self.train)} train / {v} validation windows of "
                f"{self.train.max_length} tokens")


def check_data_spec(data: str) -> None:
    """UserError unless `data` is an existing file or a data registry name (nothing is fetched)."""
    from llmscratch.data.registry import DATASETS

    if not Path(data).expanduser().is_file() and data not in DATASETS:
        raise UserError(f"data {data!r} is neither a file nor a data set name; known data sets: "
                        f"{', '.join(DATASETS)}")


def resolve_data(data: str) -> Path:
    """A data spec as a local file: a data registry name (fetched), a text file, or a token file (*.bin)."""
    from llmscratch.data.registry import fetch

    check_data_spec(data)
    path = Path(data).expanduser()
    return path if path.is_file() else fetch(data)


def load_pretrain_data(
    data: str | Path,
    tokenizer,
    context: int,
    stride: int | None = None,
    train_ratio: float = 0.9,
    text: str | None = None,
) -> PretrainData:
    """Windows for pretraining from a registry name, a UTF-8 text file, a token file (*.bin) or `text` itself.

    Text is split by characters (first `train_ratio` for training, the rest for validation, as the book does),
    then each part is tokenized; a token file is split by tokens. stride defaults to the context length.
    """
    stride = context if stride is None else stride  # 0 is an error (WindowDataset), not "the default"
    if text is not None:
        source = str(data)
    else:
        path = resolve_data(str(data))
        source = str(data)
        if path.suffix == ".bin":
            return _token_file_data(path, tokenizer, context, stride, train_ratio)
        try:
            with open(path, encoding="utf-8", newline="") as f:  # line ends as they are (data tokenize's too)
                text = f.read()
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text (token files end in .bin)") from None
    train_text, val_text = split_train_val(text, train_ratio)
    train_ids, val_ids = encode_text(train_text, tokenizer), encode_text(val_text, tokenizer)
    return _windows(train_ids, val_ids, context, stride, source, train_ratio)


def _token_file_data(path: Path, tokenizer, context: int, stride: int, train_ratio: float) -> PretrainData:
    tokens = TokenFile(path)
    vocab = tokens.header.tokenizer.get("vocab_size")
    if tokenizer is not None and vocab is not None and vocab != tokenizer.vocab_size:
        spec = tokens.header.tokenizer.get("spec")
        hint = f"; it was made with {spec}: give that one" if spec else ""
        raise UserError(f"{path} was tokenized with a vocabulary of {vocab:,} tokens ({spec}), but the tokenizer "
                        f"given has {tokenizer.vocab_size:,}{hint}", params=("tokenizer",))
    recorded = tokens.header.tokenizer.get("fingerprint")
    if tokenizer is not None and recorded and fingerprint(tokenizer) not in (None, recorded):
        raise UserError(f"{path} was tokenized with another tokenizer ({tokens.header.tokenizer.get('spec')}) than "
                        "the one given: its ids would stand for other tokens; give that tokenizer, or tokenize the "
                        "text again with this one", params=("tokenizer",))
    train_ids, val_ids = split_train_val(tokens, train_ratio)
    return _windows(train_ids, val_ids, context, stride, str(path), train_ratio)


def _windows(train_ids, val_ids, context: int, stride: int, source: str, train_ratio: float) -> PretrainData:
    n = len(train_ids) + len(val_ids)
    if len(train_ids) < context + 1:
        raise UserError(f"{source}: the training part has {len(train_ids)} tokens, fewer than one window of "
                        f"context {context} needs ({context + 1}); use a smaller context or more data")
    val = None
    if train_ratio < 1.0:
        if len(val_ids) < context + 1:
            raise UserError(f"{source}: the validation part ({1 - train_ratio:.0%}) has {len(val_ids)} tokens, "
                            f"fewer than one window of context {context} needs ({context + 1}); use a smaller "
                            "context, a smaller train_ratio, or more data")
        val = WindowDataset(val_ids, context, stride)
    return PretrainData(WindowDataset(train_ids, context, stride), val, source, n)
