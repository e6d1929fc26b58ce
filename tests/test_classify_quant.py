"""A fine-tuned classifier loaded with int8 / int4 weights (`llmscratch classify --quantize`), and the accuracy
comparison script benchmarks/classify_quant_accuracy.py, on a tiny random model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_classify_finetune import base, config, learnable_rows, write_csv

import llmscratch.weights.classifier as classifier_folder
from llmscratch.model.quant import QuantLinear
from llmscratch.recipes.classify import run as finetune_classifier
from llmscratch.train.tasks.classify import predict
from llmscratch.weights.classifier import load_classifier

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "classify_quant_accuracy.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("clf")
    data = write_csv(tmp_path / "d.csv", learnable_rows(48))
    finetune_classifier(config(tmp_path, data, trainable="last-block"), base=base())
    return tmp_path / "run"


@pytest.fixture
def tiny_base(monkeypatch):
    monkeypatch.setattr(classifier_folder, "load_model", lambda spec, device=None, dtype=None: base())


def test_quantized_classifier_predicts_like_float(trained, tiny_base):
    texts = [t for t, _ in learnable_rows(24, seed=5)]
    plain = load_classifier(trained)
    q8 = load_classifier(trained, quantize="int8")
    assert q8.model.quantization["format"] == "int8" and not getattr(plain.model, "quantization", None)
    assert isinstance(q8.model.get_submodule("head"), QuantLinear)  # the class head too
    assert any(isinstance(m, QuantLinear) for m in q8.model.get_submodule("blocks").modules())

    def labels(clf):
        info = clf.info
        return [p.label for p in predict(clf.model, clf.tokenizer, texts, info.label_names, info.max_length,
                                         info.pad_id)]

    same = sum(a == b for a, b in zip(labels(plain), labels(q8)))
    assert same >= len(texts) - 2  # int8 rounding flips at most a borderline text or two


def test_accuracy_script_compares_formats(trained, tiny_base, capsys):
    spec = importlib.util.spec_from_file_location("classify_quant_accuracy", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = script.main(["--model", str(trained), "--quantize", "int8", "--split", "train"])
    out = capsys.readouterr().out
    assert set(results) == {"float32", "int8"} and results["float32"]["changed_predictions"] is None
    assert results["float32"]["accuracy"] >= 0.85  # the trained classifier (chance: 0.5) on its training split
    assert abs(results["int8"]["accuracy"] - results["float32"]["accuracy"]) <= 0.1
    assert "train split, 33 texts" in out and "int8     train accuracy" in out
