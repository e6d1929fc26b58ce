"""`llmscratch quantize`, quantized folders loading back, `--quantize` on generate and bench generate."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from llmscratch.cli import main
from llmscratch.generate import SamplingConfig, generate
from llmscratch.model.quant import QuantLinear, quantize_model
from llmscratch.utils import UserError
from llmscratch.weights import load_model, load_preset, model_config


@pytest.mark.parametrize("args", [["--to", "int8"], ["--to", "int4", "--group", "64", "--symmetric"],
                                  ["--to", "int4", "--no-quantize-head"]])
def test_a_quantized_folder_loads_back_and_generates_the_same(tmp_path, args):
    main(["quantize", "--model", "llama-tiny", "-o", str(tmp_path / "q"), *args])
    data = json.loads((tmp_path / "q" / "config.json").read_text())
    assert data["quantization"]["format"] == args[1]
    assert data["quantization"]["head"] is ("--no-quantize-head" not in args)
    loaded = load_model(tmp_path / "q")
    assert loaded.model.quantization["layers"] == data["quantization"]["layers"]
    assert isinstance(loaded.model.get_submodule("blocks.0.ffn.down"), QuantLinear)  # in 64: every group fits
    ref = load_preset("llama-tiny").model
    group = 64 if "64" in args else 32
    quantize_model(ref, args[1], group, "--symmetric" in args, "--no-quantize-head" not in args, "int8")
    prompt = list(range(3, 11))
    cfg = SamplingConfig(max_new_tokens=10)
    assert generate(loaded.model, [prompt], cfg) == generate(ref, [prompt], cfg)
    assert model_config(tmp_path / "q").emb_dim == 32  # the config still reads without weights


def test_unknown_quantization_and_wrong_tensors_are_refused(tmp_path):
    main(["quantize", "--model", "llama-tiny", "-o", str(tmp_path / "q"), "--to", "int8"])
    cfg_path = tmp_path / "q" / "config.json"
    data = json.loads(cfg_path.read_text())
    data["quantization"]["format"] = "int3"
    os.chmod(cfg_path, stat.S_IWUSR | stat.S_IRUSR)
    cfg_path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="unknown quantization 'int3'"):
        load_model(tmp_path / "q")
    data["quantization"]["format"] = "int4"  # int8 tensors under an int4 entry
    cfg_path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="shape|expected"):
        load_model(tmp_path / "q")


def test_quantize_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--model", "llama-tiny", "-o", str(tmp_path / "q"), "--to", "int2"])
    assert e.value.code == 2 and "int2" in capsys.readouterr().err
    main(["quantize", "--model", "llama-tiny", "-o", str(tmp_path / "q"), "--to", "int4"])
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tmp_path / "q"), "--prompt", "hi", "--quantize", "int8"])
    assert e.value.code == 2 and "saved quantized as int4" in capsys.readouterr().err


def test_quantize_refuses_int4_options_for_int8_its_own_input_and_says_what_stayed_float(tmp_path, capsys):
    def error(*argv) -> str:
        with pytest.raises(SystemExit) as e:
            main(["quantize", *argv])
        assert e.value.code == 2
        return capsys.readouterr().err

    assert "--group applies to int4 only" in error("--model", "gpt2-tiny", "--to", "int8", "--group", "64", "-o",
                                                   str(tmp_path / "a"))
    assert "--symmetric applies to int4 only" in error("--model", "gpt2-tiny", "--to", "int8", "--symmetric", "-o",
                                                       str(tmp_path / "a"))
    main(["export", "--model", "gpt2-tiny", "--format", "ours", "-o", str(tmp_path / "m")])
    before = (tmp_path / "m" / "model.safetensors").read_bytes()
    capsys.readouterr()
    model = ["--model", str(tmp_path / "m"), "--to", "int8", "-o"]
    assert "would destroy the input" in error(*model, str(tmp_path / "m"))
    assert "holds the input" in error(*model, str(tmp_path), "--overwrite")
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == before
    main(["quantize", "--model", "gpt2-tiny", "--to", "int4", "--group", "64", "-o", str(tmp_path / "q")])
    assert "3 layers; 6 kept in float32 (inputs not a multiple of the group, 64)" in capsys.readouterr().out


def test_generate_with_quantize_flag(capsys):
    main(["generate", "--model", "gpt2-tiny", "--prompt", "hello", "--max-new-tokens", "5", "--quantize", "int8"])
    out, err = capsys.readouterr()
    torch.manual_seed(0)
    assert "5 tokens in" in err and out.strip()


def test_bench_generate_adds_quantized_variants_and_says_llama_cpp_is_absent(tmp_path, monkeypatch):
    from llmscratch.bench.generate import GenerateBenchConfig, run_generate_bench

    monkeypatch.setenv("PATH", str(tmp_path))  # no llama-bench anywhere
    lines: list[str] = []
    cfg = GenerateBenchConfig.quick_run(model="llama-tiny", threads=1, out=tmp_path, progress=False,
                                        transformers=False, quantize=("int8", "int4"))
    data = run_generate_bench(cfg, echo=lines.append)
    text = "\n".join(lines)
    variants = {r["variant"] for r in data["results"]}
    assert {"ours, KV cache, int8", "ours, KV cache, int4"} <= variants
    assert "greedy agreement with float32" in text
    assert "no llama.cpp binary" in text and "error" in data["models"][0]["llama_cpp"]


def test_serve_loader_quantizes_when_asked():
    from llmscratch.serve.app import load_served_model
    from llmscratch.serve.config import ServeConfig

    assert not getattr(load_served_model(ServeConfig(model="llama-tiny")).model, "quantization", None)
    loaded = load_served_model(ServeConfig(model="llama-tiny", quantize="int4"))
    assert loaded.model.quantization["format"] == "int4"
    assert isinstance(loaded.model.get_submodule("head"), QuantLinear)


def test_quantized_weights_with_another_dtype_are_refused_not_a_crash(tmp_path, capsys):
    # int8/int4 products take float32 activations: a bfloat16 KV cache would fail at the first token
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", "llama-tiny", "--prompt", "hi", "--quantize", "int8", "--dtype", "bfloat16"])
    assert e.value.code == 2 and "--dtype" in capsys.readouterr().err
    main(["quantize", "--model", "llama-tiny", "-o", str(tmp_path / "q"), "--to", "int4"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["generate", "--model", str(tmp_path / "q"), "--prompt", "hi", "--dtype", "float16"])
    assert e.value.code == 2 and "int4 weights" in capsys.readouterr().err
    from llmscratch.serve.config import ServeConfig

    with pytest.raises(UserError, match="quantize=int8 runs with float32"):
        ServeConfig(model="llama-tiny", quantize="int8", dtype="bfloat16").validate()


def test_export_of_a_quantized_folder(tmp_path, capsys):
    main(["quantize", "--model", "llama-tiny", "-o", str(tmp_path / "q"), "--to", "int8"])
    with pytest.raises(SystemExit) as e:  # Hugging Face folders hold float weights
        main(["export", "--model", str(tmp_path / "q"), "-o", str(tmp_path / "hf")])
    assert e.value.code == 2 and "int8 weights" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    main(["export", "--model", str(tmp_path / "q"), "--format", "ours", "-o", str(tmp_path / "ours")])
    params = load_preset("llama-tiny").model.num_params()  # the float model's count, not the float leftovers'
    assert f"({params:,} parameters, int8 weights)" in capsys.readouterr().out
    assert load_model(tmp_path / "ours").model.quantization["format"] == "int8"
