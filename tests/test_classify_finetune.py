"""Fine-tuning a classifier end to end on a tiny random model; bad input fails before training; prediction."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
from types import SimpleNamespace

import pytest
from conftest import ByteTokenizer, byte_gpt, mirror_file

import llmscratch.weights.classifier as classifier_folder
from llmscratch.data.classification import load_classification_splits
from llmscratch.model.lora import unmerge_lora
from llmscratch.recipes.classify import ClassifyConfig
from llmscratch.recipes.classify import run as finetune_classifier
from llmscratch.train.tasks.classify import predict
from llmscratch.utils import UserError
from llmscratch.weights.classifier import load_classifier


def base(seed: int = 0):
    return SimpleNamespace(model=byte_gpt(seed), tokenizer=ByteTokenizer(), source="test")


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def learnable_rows(n: int, seed: int = 0, classes=("no", "yes")):
    """Random letters; class k (k >= 1) has the letter "z"*k somewhere, class 0 none: a token decides it."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        y = i % len(classes)
        s = [rng.choice("klmnop") for _ in range(rng.randint(3, 12))]
        if y:
            s.insert(rng.randrange(len(s) + 1), "z" * y)
        rows.append(("".join(s), classes[y]))
    return rows


TRAIN = {"epochs", "lr", "batch_size", "eval_every", "progress", "max_steps", "max_seconds"}


def config(tmp_path, data, **kw):
    kw = {"epochs": 10, "lr": 1e-2, "batch_size": 8, "eval_every": 20, "progress": False, "lora_rank": 4,
          "lora_alpha": 8, **kw}
    train = dataclasses.replace(ClassifyConfig(model="m").train, out_dir=str(tmp_path / "run"),
                                **{k: v for k, v in kw.items() if k in TRAIN})
    return ClassifyConfig(model="tiny-test-base", data=str(data), train=train,
                          **{k: v for k, v in kw.items() if k not in TRAIN})


@pytest.mark.parametrize("trainable", ["last-block", "lora"])
def test_loss_falls_and_accuracy_rises(tmp_path, trainable):
    data = write_csv(tmp_path / "d.csv", learnable_rows(48))
    report = finetune_classifier(config(tmp_path, data, trainable=trainable), base=base(), command="test")
    evals = report["train"]["evaluations"]
    assert [e["step"] for e in evals] == [1, 20, 40]
    assert evals[-1]["val_loss"] < 0.5 * evals[0]["val_loss"]
    assert all(e["val_ppl"] is None for e in evals)  # perplexity belongs to next-token tasks only
    assert report["loss"]["train"] < 0.35 < 0.69  # below chance level log(2)
    assert report["accuracy"]["train"] >= 0.85  # chance: 0.5
    assert report["data"]["rows"] == {"train": 33, "validation": 4, "test": 11}
    assert report["data"]["label_names"] == ["no", "yes"]
    assert report["model"]["trainable"] == trainable
    run = tmp_path / "run"
    for name in ("classifier.json", "classifier.safetensors", "report.json", "loss.png", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert not (run / "final").exists() and not (run / "best").exists()  # no full-model exports
    saved = json.loads((run / "report.json").read_text())
    assert saved["accuracy"] == report["accuracy"] and saved["command"] == "test"
    assert set(saved["timings_s"]) == {"load_model", "tokenize", "train", "evaluate", "total"}


def test_saved_classifier_predicts_like_the_trained_model(tmp_path, monkeypatch):
    data = write_csv(tmp_path / "d.csv", learnable_rows(48))
    finetune_classifier(config(tmp_path, data, trainable="lora", epochs=4), base=base())
    monkeypatch.setattr(classifier_folder, "load_model", lambda spec, device=None, dtype=None: base())
    clf = load_classifier(tmp_path / "run")
    assert clf.info.label_names == ["no", "yes"]

    def classify(texts):
        return predict(clf.model, clf.tokenizer, texts, clf.info.label_names, clf.info.max_length, clf.info.pad_id)

    preds = classify(["klmzno", "klmnop", "pppzzk"])
    assert [p.label for p in preds] == [max(p.probabilities, key=p.probabilities.get) for p in preds]
    assert all(abs(sum(p.probabilities.values()) - 1) < 1e-5 for p in preds)
    # The same predictions in a batch and alone (right padding does not change anything).
    unmerge_lora(clf.model)  # the classifier merged its adapters; unmerged, it predicts the same
    for p, q in zip(preds, classify(["klmzno", "klmnop", "pppzzk"])):
        assert list(q.probabilities.values()) == pytest.approx(list(p.probabilities.values()), abs=1e-5)
    alone = classify(["pppzzk"])[0].probabilities
    assert alone.keys() == preds[2].probabilities.keys()
    assert list(alone.values()) == pytest.approx(list(preds[2].probabilities.values()), abs=1e-5)

    monkeypatch.setattr(classifier_folder, "load_model", lambda spec, device=None, dtype=None: base(seed=1))
    with pytest.raises(UserError, match="fingerprint"):
        load_classifier(tmp_path / "run")
    with pytest.raises(UserError, match="not a classifier folder"):
        load_classifier(tmp_path)
    info = json.loads((tmp_path / "run" / "classifier.json").read_text())
    (tmp_path / "run" / "classifier.json").write_text(json.dumps({**info, "surprise": 1}))
    with pytest.raises(UserError, match="damaged"):
        load_classifier(tmp_path / "run")
    (tmp_path / "run" / "classifier.json").write_text(json.dumps({**info, "dtype": "float99"}))
    with pytest.raises(UserError, match="unknown dtype"):
        load_classifier(tmp_path / "run")


class NoModel:
    """A base whose model must not be touched: the error has to come before loading and training."""

    tokenizer = ByteTokenizer()

    @property
    def model(self):
        raise AssertionError("the model was used before the input was checked")


def test_unknown_label_values(tmp_path):
    rows = learnable_rows(30) + [("kklm", "maybe")]
    data = write_csv(tmp_path / "d.csv", rows)
    with pytest.raises(UserError, match="'maybe'.*not one of"):
        finetune_classifier(config(tmp_path, data, labels=["no", "yes"]), base=NoModel())


def test_empty_text(tmp_path):
    data = write_csv(tmp_path / "d.csv", [*learnable_rows(30), ("  ", "no")])
    with pytest.raises(UserError, match="empty text"):
        finetune_classifier(config(tmp_path, data), base=NoModel())


def test_missing_columns(tmp_path):
    data = write_csv(tmp_path / "d.csv", learnable_rows(30), header=("message", "label"))
    with pytest.raises(UserError, match="no text column named 'text'"):
        finetune_classifier(config(tmp_path, data), base=NoModel())
    with pytest.raises(UserError, match="no label column named 'category'"):
        finetune_classifier(config(tmp_path, data, text_column="message", label_column="category"), base=NoModel())
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"message": t, "label": y}) for t, y in learnable_rows(30)))
    with pytest.raises(UserError, match="no text field 'text'"):
        finetune_classifier(config(tmp_path, jsonl), base=NoModel())


def test_class_count_mismatch_between_checkpoint_and_data(tmp_path):
    two = write_csv(tmp_path / "two.csv", learnable_rows(30))
    finetune_classifier(config(tmp_path, two, epochs=1, eval_every=0), base=base())
    three = write_csv(tmp_path / "three.csv", learnable_rows(30, classes=("no", "yes", "twice")))
    with pytest.raises(UserError, match="trained with 2 classes"):
        finetune_classifier(config(tmp_path, three, resume=True), base=NoModel())
    # Without classifier.json the checkpoint's head still tells its class count.
    (tmp_path / "run" / "classifier.json").unlink()
    with pytest.raises(UserError, match="head for 2 classes"):
        finetune_classifier(config(tmp_path, three, resume=True), base=NoModel())


def test_other_mistakes_fail_early(tmp_path):
    data = write_csv(tmp_path / "d.csv", learnable_rows(30))
    finetune_classifier(config(tmp_path, data, epochs=1, eval_every=0), base=base())
    with pytest.raises(UserError, match="already holds a classifier run"):
        finetune_classifier(config(tmp_path, data), base=NoModel())
    with pytest.raises(UserError, match="exceeds the model's context length 64"):
        finetune_classifier(config(tmp_path, data, max_length=65, overwrite=True), base=base())
    with pytest.raises(UserError, match="trainable must be"):
        finetune_classifier(config(tmp_path, data, trainable="first-block", overwrite=True), base=NoModel())
    with pytest.raises(UserError, match="neither 'sms-spam' nor an existing file"):
        finetune_classifier(config(tmp_path, tmp_path / "nope.csv", overwrite=True), base=NoModel())
    with pytest.raises(UserError, match="epochs must be >= 1"):
        finetune_classifier(config(tmp_path, data, epochs=0, overwrite=True), base=NoModel())


def test_a_users_file_by_a_name_the_run_writes_is_kept(tmp_path):
    data = write_csv(tmp_path / "d.csv", learnable_rows(30))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "report.json").write_text("mine")
    with pytest.raises(UserError, match="report.json is not from one of our runs"):
        finetune_classifier(config(tmp_path, data, epochs=1), base=NoModel())  # refused before the model loads
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["report.json"]
    assert (tmp_path / "run" / "report.json").read_text() == "mine"


def test_resume_continues_a_run(tmp_path):
    data = write_csv(tmp_path / "d.csv", learnable_rows(30))
    first = finetune_classifier(config(tmp_path, data, epochs=1, eval_every=0), base=base())
    assert first["train"]["steps"] == 2
    again = finetune_classifier(config(tmp_path, data, epochs=2, eval_every=0, resume=True), base=base())
    assert again["train"]["steps"] == 4 and again["train"]["resumed_from"].endswith("step-00000002")


def test_sms_spam_uses_the_books_split():
    mirror_file("SMSSpamCollection")
    (train, val, test), desc = load_classification_splits("sms-spam")
    assert desc["rows"] == {"train": 1045, "validation": 149, "test": 300}
    assert desc["balanced"] and train.label_names == val.label_names == test.label_names == ["ham", "spam"]
    (train, _, _), desc = load_classification_splits("sms-spam", balanced=False)
    assert sum(desc["rows"].values()) == 5574
    with pytest.raises(UserError, match="sms-spam has the labels"):
        load_classification_splits("sms-spam", labels=["spam", "ham"])
