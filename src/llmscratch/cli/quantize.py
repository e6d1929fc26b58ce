"""`llmscratch quantize`: save a model with int8 or int4 weights (model/quant.py) as one of our folders."""

from __future__ import annotations

from dataclasses import dataclass

from llmscratch.config import add_command, check_fields, setting


@dataclass
class QuantizeConfig:
    """The flags of `llmscratch quantize`."""

    model: str | None = setting(None, "model name or path (registered name, folder, .gguf file, Hub id, preset)",
                                required=True)
    to: str | None = setting(None, "weight format: int8 (per output channel) or int4 (groups of --group)",
                             choices=("int8", "int4"), required=True)
    out: str | None = setting(None, "output folder (one of our model folders; written atomically)", flag="--out",
                              aliases=("-o",), required=True)
    group: int | None = setting(None, "int4: inputs per scale (32, the default, 64 or 128; a layer whose inputs are "
                                "not a multiple of it stays float32)", choices=(32, 64, 128))
    symmetric: bool = setting(False, "int4: no minimums (W ~ (n - 8) * scale, as GGUF's Q4_0)")
    head: bool = setting(True, "keep the output head in float32", switches={"--no-quantize-head": False})
    head_format: str | None = setting(None, "the head's format (default: int8, also for --to int4)",
                                      choices=("int8", "int4"))
    overwrite: bool = setting(False, "replace -o even when it is not one of our outputs")

    def __post_init__(self) -> None:
        check_fields(self)
        from llmscratch.utils import UserError

        if self.to == "int8" and self.group is not None:
            raise UserError("group applies to int4 only: int8 has one scale per output channel", params="group")
        if self.to == "int8" and self.symmetric:
            raise UserError("symmetric applies to int4 only: int8 is always symmetric", params="symmetric")
        if not self.head and self.head_format is not None:
            raise UserError("head_format applies to a quantized head: drop head=False or head_format",
                            params=("head", "head_format"))


def register(subparsers) -> None:
    add_command(
        subparsers, "quantize", QuantizeConfig, quantize,
        help="save a model with int8 or int4 weights (loads back with every command's --model)",
        description="Load --model, turn every block Linear (and the head, unless --no-quantize-head) into int8 "
        "(symmetric, one scale per output channel) or int4 (groups of --group inputs with a scale and a minimum; "
        "--symmetric: scale only) weights (the head: int8 unless --head-format), "
        "and write our model folder to -o: model.safetensors holds the "
        "quantized tensors, config.json a 'quantization' entry. `--model DIR` loads it back quantized. "
        "See docs/quant.md.",
    )


def quantize(config: QuantizeConfig) -> None:
    from llmscratch.model.quant import HEAD_FORMAT, quantizable_layers, quantize_model, quantized_bytes
    from llmscratch.utils import UserError, check_folder_spares, check_replaceable, human_bytes
    from llmscratch.weights import load_model
    from llmscratch.weights.ours import save_pretrained

    check_folder_spares(config.out, config.model)
    check_replaceable(config.out, config.overwrite)
    loaded = load_model(config.model)
    if getattr(loaded.model, "quantization", None):
        raise UserError(f"{config.model} is already quantized ({loaded.model.quantization['format']})")
    before = quantized_bytes(loaded.model)
    candidates = len(quantizable_layers(loaded.model, config.head))
    group = config.group or 32
    quantize_model(loaded.model, config.to, group, config.symmetric, config.head,
                   config.head_format or HEAD_FORMAT[config.to])
    folder = save_pretrained(loaded.model, loaded.tokenizer, config.out, loaded.chat_template, config.overwrite)
    done = len(loaded.model.quantization["layers"])
    kept = f"; {candidates - done} kept in float32 (inputs not a multiple of the group, {group})" if done < candidates \
        else ""
    print(f"wrote {folder}: {config.to}, {done} layers{kept}, weights {human_bytes(before)} -> "
          f"{human_bytes(quantized_bytes(loaded.model))}")
