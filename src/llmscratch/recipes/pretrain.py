"""Pretraining recipe: a GPT from scratch on a text, a data set name or a token file (`llmscratch pretrain`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from llmscratch.config import check_fields, nested, setting
from llmscratch.train.config import TrainConfig
from llmscratch.utils import UserError, plural

INITS = ("gpt2", "torch")
TRAIN_FLAGS = ("batch_size", "grad_accum", "epochs", "max_steps", "max_seconds", "lr", "min_lr", "schedule",
               "warmup_steps", "weight_decay", "grad_clip", "eval_every", "eval_batches", "eval_train_batches",
               "patience", "save_every", "keep_last", "sample_prompt", "sample_tokens", "out_dir", "device", "compile",
               "seed", "tensorboard", "progress")


@dataclass
class PretrainConfig:
    """What to pretrain on and how; `train` holds the Trainer's settings."""

    data: str | None = setting(None, "data set name (e.g. the-verdict), a UTF-8 text file, or a token file *.bin "
                               "from `llmscratch data tokenize`", required=True)
    model: str = setting("gpt2-124m", "model preset (architecture; weights start random)")
    context: int | None = setting(None, "context length in tokens (default: the preset's)", ge=2)
    stride: int | None = setting(None, "distance between window starts (default: the context length, no overlap)",
                                 ge=1)
    train_ratio: float = setting(0.9, "share of the data used for training; the rest is validation (a text is cut "
                                 "by characters, then each part tokenized, as the book does; a token file is cut "
                                 "by tokens, so the two can differ by a token or so)", gt=0, le=1)
    tokenizer: str | None = setting(None, "gpt2, or a tokenizer file/folder (the model's vocabulary follows it) "
                                    "(default: a token file's own tokenizer, as its header records it; else gpt2)")
    dropout: float = setting(0.0, "dropout rate", ge=0, lt=1)
    no_qkv_bias: bool = setting(False, "no bias in the query/key/value projection")
    no_tie_embeddings: bool = setting(False, "a separate output head instead of the token embedding (the book's "
                                      "163M)")
    init: str = setting("gpt2", "weight initialisation: gpt2 (normal, std 0.02) or torch (PyTorch's per-layer "
                        "defaults, as the book's GPTModel)", choices=INITS)
    resume: bool = setting(False, "continue the run in --out from its newest good checkpoint")
    overwrite: bool = setting(False, "replace an earlier run in --out")
    train: TrainConfig = nested(TrainConfig, TRAIN_FLAGS, out_dir="runs/pretrain")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.resume and self.overwrite:
            raise UserError("resume=True continues the run in the folder and overwrite=True starts a new one there: "
                            "give one of them", params=("resume", "overwrite"))

    def description(self) -> dict:
        """The settings that are not the Trainer's, saved with the run (TrainConfig.extra)."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if k not in ("train", "resume", "overwrite")}


def recorded_tokenizer(data: str) -> str | None:
    """The tokenizer a token file (*.bin) was made with, as its header records it, when it can still be loaded
    ("gpt2", or a file that still exists); None for anything else."""
    from llmscratch.data.pretrain import TokenFile

    path = Path(data).expanduser()
    if path.suffix != ".bin" or not path.is_file():
        return None
    spec = TokenFile(path).header.tokenizer.get("spec")
    return spec if spec == "gpt2" or (spec and Path(spec).exists()) else None


def run(cfg: PretrainConfig, callbacks=None) -> str | None:
    """Build tokenizer, data, model and task as `cfg` says, train; a summary (None on ranks > 0)."""
    from llmscratch.tokenizer import load_tokenizer
    from llmscratch.train import distributed
    from llmscratch.train.tasks.pretrain import PretrainTask, check_data_spec, load_pretrain_data
    from llmscratch.train.trainer import Trainer, check_run_folder, seed_everything

    check_data_spec(cfg.data)  # a mistyped path is reported before the tokenizer is fetched
    check_run_folder(cfg.train.out_dir, cfg.resume, cfg.overwrite)  # and a folder in use before the data is read
    info = distributed.setup(cfg.train.device)
    try:
        seed_everything(cfg.train.seed)
        spec = cfg.tokenizer or recorded_tokenizer(cfg.data) or "gpt2"
        tokenizer = load_tokenizer(spec)
        config = model_config(cfg, tokenizer.vocab_size)
        data = load_pretrain_data(cfg.data, tokenizer, config.context_length, cfg.stride, cfg.train_ratio)
        if info.is_main:
            print(data.describe())
        model = initialize(build_model(config), cfg.init)
        task = PretrainTask(data.train, data.val, seed=cfg.train.seed)
        trainer = Trainer(model, task, dataclasses.replace(cfg.train, extra=cfg.description()), tokenizer=tokenizer,
                          tokenizer_ref=spec if spec == "gpt2" else None, resume=cfg.resume,
                          overwrite=cfg.overwrite, dist_info=info, callbacks=callbacks)
        result = trainer.fit()
        return summarize(result) if info.is_main else None
    finally:
        distributed.teardown()


def model_config(cfg: PretrainConfig, vocab_size: int):
    """The model preset's config with the recipe's vocabulary, context, dropout, bias and tying."""
    from llmscratch.model import get_config

    preset = get_config(cfg.model)
    overrides = {"vocab_size": vocab_size, "context_length": cfg.context or preset.context_length,
                 "dropout": cfg.dropout}
    if cfg.no_tie_embeddings:
        overrides["tie_embeddings"] = False
    if hasattr(preset, "qkv_bias"):  # GPT-2; Llama has no bias on its projections anyway
        overrides["qkv_bias"] = not cfg.no_qkv_bias
    return get_config(cfg.model, **overrides)


def build_model(config):
    from llmscratch.model import build_model as build

    return build(config)


def initialize(model, scheme: str):
    """Re-initialise `model` in place: "gpt2" keeps the model's own init (normal, std 0.02); "torch" resets every
    Linear, Embedding and LayerNorm to PyTorch's defaults (Kaiming-uniform linears, N(0, 1) embeddings), which is
    what the book's GPTModel trains from. Draws from the global torch generator (seeded)."""
    from torch import nn

    if scheme == "torch":
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding, nn.LayerNorm)):
                m.reset_parameters()
    return model


def summarize(r) -> str:
    """A few lines on what a run (a TrainResult) did and where its files are."""
    if r.resumed_at >= r.steps:
        done = f"nothing left to train: the run was at step {r.steps} already ({r.tokens_seen:,} tokens)"
    elif r.resumed_at:
        done = (f"trained steps {r.resumed_at + 1}-{r.steps} in {r.seconds:.0f} s, resumed at step {r.resumed_at} "
                f"({r.tokens_seen:,} tokens in all)")
    else:
        done = f"trained {plural(r.steps, 'step')} ({r.tokens_seen:,} tokens) in {r.seconds:.0f} s"
    lines = [done + (f" (stopped: {r.stop_reason})" if r.stop_reason else "")]
    if r.evals:
        first, last = r.evals[0], r.evals[-1]
        lines.append(f"train loss {first['train_loss']:.3f} -> {last['train_loss']:.3f}"
                     + (f" (eval mode {first['eval_train_loss']:.3f} -> {last['eval_train_loss']:.3f})"
                        if last.get("eval_train_loss") is not None else ""))
        if r.best_val_loss is not None:
            lines.append(f"validation loss {first['val_loss']:.3f} (after step {first['step']}) -> "
                         f"{last['val_loss']:.3f}; best "
                         f"{r.best_val_loss:.3f} at step {r.best_step}")
    lines.append(f"outputs in {r.out_dir}: loss plot {r.plot}, metrics {r.metrics_path}, checkpoints "
                 f"{r.out_dir / 'checkpoints'}, final model {r.final_model}"
                 + (f", best model {r.best_model}" if r.best_model else ""))
    return "\n".join(lines)
