"""Pretraining from a flat dict of options (what `llmscratch pretrain` and config files hold)."""

from __future__ import annotations

from torch import nn

from llmscratch.train import distributed
from llmscratch.train.config import TrainConfig
from llmscratch.train.trainer import TrainResult, seed_everything, train
from llmscratch.utils import UserError


def train_config_from_options(opts: dict) -> TrainConfig:
    """The TrainConfig part of the pretraining options."""
    return TrainConfig(
        out_dir=opts["out"], epochs=opts["epochs"], max_steps=opts["max_steps"], max_seconds=opts["max_seconds"],
        batch_size=opts["batch_size"], grad_accum=opts["grad_accum"], lr=opts["lr"], min_lr=opts["min_lr"],
        schedule=opts["schedule"],
        warmup_steps=opts["warmup_steps"], weight_decay=opts["weight_decay"], grad_clip=opts["grad_clip"] or None,
        eval_every=opts["eval_every"], eval_batches=opts["eval_batches"],
        eval_train_batches=opts["eval_train_batches"], patience=opts["patience"], save_every=opts["save_every"],
        keep_last=opts["keep_last"], seed=opts["seed"], device=opts["device"], compile=opts["compile"],
        sample_prompt=opts["sample_prompt"], sample_tokens=opts["sample_tokens"], tensorboard=opts["tensorboard"],
        progress=not opts["no_progress"],
        extra={k: opts[k] for k in ("data", "model", "context", "stride", "train_ratio", "tokenizer", "dropout",
                                    "no_qkv_bias", "no_tie_embeddings", "init")},
    )


INITS = ("gpt2", "torch")


def initialize(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise `model` in place: "gpt2" keeps the model's own init (normal, std 0.02); "torch" resets every
    Linear, Embedding and LayerNorm to PyTorch's defaults (Kaiming-uniform linears, N(0, 1) embeddings), which is
    what the book's GPTModel trains from. Draws from the global torch generator (seeded)."""
    if scheme == "torch":
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding, nn.LayerNorm)):
                m.reset_parameters()
    return model


def pretrain_from_options(opts: dict) -> str | None:
    """Build tokenizer, data, model and task from `opts`, train, and return a summary (None on ranks > 0)."""
    from llmscratch.model import build_model, get_config
    from llmscratch.tokenizer import load_tokenizer
    from llmscratch.train.tasks.pretrain import PretrainTask, check_data_spec, load_pretrain_data

    cfg = train_config_from_options(opts)
    cfg.validate()
    check_data_spec(str(opts["data"]))  # a mistyped path is reported before the tokenizer is fetched
    info = distributed.setup(cfg.device)
    try:
        seed_everything(cfg.seed)
        tokenizer = load_tokenizer(opts["tokenizer"])
        base = get_config(opts["model"])
        context = opts["context"] or base.context_length
        if opts["init"] not in INITS:
            raise UserError(f"--init must be one of {', '.join(INITS)}, got {opts['init']!r}")
        if context < 2:
            raise UserError(f"--context must be at least 2, got {context}")
        if not 0.0 < opts["dropout"] < 1.0 and opts["dropout"] != 0.0:
            raise UserError(f"--dropout must be in [0, 1), got {opts['dropout']}")
        overrides = {"tie_embeddings": False} if opts["no_tie_embeddings"] else {}
        config = get_config(opts["model"], vocab_size=tokenizer.vocab_size, context_length=context,
                            dropout=opts["dropout"], qkv_bias=not opts["no_qkv_bias"], **overrides)
        data = load_pretrain_data(opts["data"], tokenizer, context, opts["stride"], opts["train_ratio"])
        if info.is_main:
            print(data.describe())
        model = initialize(build_model(config), opts["init"])
        task = PretrainTask(data.train, data.val, seed=cfg.seed)
        ref = opts["tokenizer"] if opts["tokenizer"] == "gpt2" else None
        result = train(model, task, cfg, tokenizer=tokenizer, tokenizer_ref=ref, resume=opts["resume"],
                       overwrite=opts["overwrite"], dist_info=info)
        return summarize(result) if info.is_main else None
    finally:
        distributed.teardown()


def summarize(r: TrainResult) -> str:
    """A few lines on what a run did and where its files are."""
    lines = [f"trained {r.steps} steps ({r.tokens_seen:,} tokens) in {r.seconds:.0f} s"
             + (f" (stopped: {r.stop_reason})" if r.stop_reason else "")]
    if r.evals:
        first, last = r.evals[0], r.evals[-1]
        lines.append(f"train loss {first['train_loss']:.3f} -> {last['train_loss']:.3f}"
                     + (f" (eval mode {first['eval_train_loss']:.3f} -> {last['eval_train_loss']:.3f})"
                        if last.get("eval_train_loss") is not None else ""))
        if r.best_val_loss is not None:
            lines.append(f"validation loss {first['val_loss']:.3f} -> {last['val_loss']:.3f}; best "
                         f"{r.best_val_loss:.3f} at step {r.best_step}")
    lines.append(f"outputs in {r.out_dir}: loss plot {r.plot}, metrics {r.metrics_path}, checkpoints "
                 f"{r.out_dir / 'checkpoints'}, final model {r.final_model}"
                 + (f", best model {r.best_model}" if r.best_model else ""))
    return "\n".join(lines)
