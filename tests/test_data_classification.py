"""Classification data: SMS spam (the book's split), generic tables, errors, padding collate."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch
from conftest import ByteTokenizer, mirror_file

from llmscratch.data.classification import (
    ClassificationData,
    ClassificationDataset,
    balance_classes,
    collate_classification,
    encode_text,
    load_sms_spam,
    load_table,
    pad_id_of,
    sms_spam_splits,
    split_data,
)
from llmscratch.train.tasks.classify import ClassificationTask
from llmscratch.utils import UserError


def _fingerprint(part: ClassificationData) -> str:
    return hashlib.sha256("".join(f"{y}\t{t}\n" for t, y in zip(part.texts, part.labels)).encode()).hexdigest()


# ------------------------------------------------------------------------------------------- SMS spam


def test_sms_spam_counts():
    data = load_sms_spam(mirror_file("SMSSpamCollection"))
    assert len(data) == 5574
    assert data.label_names == ["ham", "spam"]
    assert data.label_counts() == {"ham": 4827, "spam": 747}
    assert not any(t.endswith("\r") for t in data.texts)  # CRLF line ends are not part of the text


def test_sms_spam_book_split_sizes():
    train, val, test = sms_spam_splits(mirror_file("SMSSpamCollection"))
    assert (len(train), len(val), len(test)) == (1045, 149, 300)  # the book's sizes
    texts = train.texts + val.texts + test.texts
    assert len(texts) == 1494 and sum(train.labels + val.labels + test.labels) == 747  # 747 ham + 747 spam
    again = sms_spam_splits(mirror_file("SMSSpamCollection"))
    assert [p.texts for p in again] == [train.texts, val.texts, test.texts]  # deterministic


def test_sms_spam_book_compat_reproduces_the_books_rows():
    """Fingerprints of the book's train/validation/test tables, computed with pandas 3.1.1 and the book's
    code (read_csv sep='\\t', sample(747, random_state=123), concat, sample(frac=1, random_state=123))."""
    train, val, test = sms_spam_splits(mirror_file("SMSSpamCollection"), book_compat=True)
    assert len(train) + len(val) + len(test) == 1494
    assert (sum(train.labels), sum(val.labels), sum(test.labels)) == (517, 79, 151)
    assert train.texts[0] == "Dude how do you like the buff wind."
    assert _fingerprint(train) == "25c64e8ab72705d09db68b0925f0b7beb58262769a571f490ec9cc30dcded5e2"
    assert _fingerprint(val) == "f896abdf037e44edc1d10e4d1c43ea0a6d36ce7120bf61edd780f58f17da0fe7"
    assert _fingerprint(test) == "faa2fa8d17688678738a0b6b632595f29811efc4be6a1ab358d50d9cded5e611"
    assert len(load_sms_spam(mirror_file("SMSSpamCollection"), book_compat=True)) == 5572


def test_sms_spam_unbalanced_split():
    train, val, test = sms_spam_splits(mirror_file("SMSSpamCollection"), balanced=False)
    assert (len(train), len(val), len(test)) == (3901, 557, 1116)


def test_sms_spam_default_path_goes_through_registry():
    mirror_file("SMSSpamCollection")
    assert len(load_sms_spam()) == 5574


# ------------------------------------------------------------------------------------------- tables


def test_csv_jsonl_json_tsv_with_three_classes(tmp_path):
    rows = [("good film", "pos"), ("bad, very bad", "neg"), ("meh", "neutral"), ("great", "pos")]
    csv_path = tmp_path / "reviews.csv"
    csv_path.write_text("id,review,sentiment\n" + "".join(f'{i},"{t}",{y}\n' for i, (t, y) in enumerate(rows)))
    data = load_table(csv_path, "review", "sentiment")
    assert data.label_names == ["neg", "neutral", "pos"]  # sorted
    assert data.labels == [2, 0, 1, 2] and data.texts[1] == "bad, very bad"

    first = load_table(csv_path, "review", "sentiment", label_order="first-seen")
    assert first.label_names == ["pos", "neg", "neutral"] and first.labels == [0, 1, 2, 0]
    fixed = load_table(csv_path, "review", "sentiment", labels=["neutral", "neg", "pos"])
    assert fixed.label_to_id == {"neutral": 0, "neg": 1, "pos": 2}

    jsonl = tmp_path / "reviews.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in rows) + "\n")
    assert load_table(jsonl).texts == [t for t, _ in rows]
    js = tmp_path / "reviews.json"
    js.write_text(json.dumps([{"t": t, "y": i % 2} for i, (t, _) in enumerate(rows)]))
    numeric = load_table(js, "t", "y")
    assert numeric.label_names == ["0", "1"] and numeric.labels == [0, 1, 0, 1]

    tsv = tmp_path / "reviews.tsv"
    tsv.write_text('text\tlabel\n"quoted start\tpos\nplain\tneg\n')
    assert load_table(tsv).texts == ['"quoted start', "plain"]  # TSV: quote characters are text


def test_numeric_labels_sort_numerically(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "".join(f"t{i},{y}\n" for i, y in enumerate([10, 2, 1, 2])))
    assert load_table(p).label_names == ["1", "2", "10"]


def test_missing_column_names_the_columns(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("message,category\nhi,a\nyo,b\n")
    with pytest.raises(UserError, match=r"no text column named 'text'; columns: \['message', 'category'\]"):
        load_table(p)
    with pytest.raises(UserError, match="no label column named 'label'"):
        load_table(p, "message")
    j = tmp_path / "d.jsonl"
    j.write_text('{"text": "a", "label": "x"}\n{"text": "b"}\n')
    with pytest.raises(UserError, match="line 2: no label field 'label'"):
        load_table(j)


def test_empty_text_names_the_row(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('text,label\nhello,a\n"  ",b\n')
    with pytest.raises(UserError, match=r"row 2 \(line 3\): empty text in column 'text'"):
        load_table(p)


def test_unknown_label_names_row_and_value(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\nhello,ham\nbuy now,spam\nwhat,eggs\n")
    with pytest.raises(UserError, match=r"row 3 \(line 4\): label 'eggs' in column 'label' is not one of"):
        load_table(p, labels=["ham", "spam"])


def test_fewer_than_two_classes(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\nhello,ham\nhi,ham\n")
    with pytest.raises(UserError, match=r"at least 2 classes, found only \['ham'\]"):
        load_table(p)
    with pytest.raises(UserError, match="at least 2 classes"):
        load_table(p, labels=["ham", "spam"])


def test_headerless_and_missing_file(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("a\tone\nb\ttwo\n")
    assert load_table(p, 1, 0, header=False).texts == ["one", "two"]
    with pytest.raises(UserError, match="0-based numbers"):
        load_table(p, "text", "label", header=False)
    with pytest.raises(UserError, match="not found"):
        load_table(tmp_path / "nope.csv")


def test_balance_and_split_three_classes():
    data = ClassificationData([f"t{i}" for i in range(12)], [0] * 6 + [1] * 2 + [2] * 4, ["a", "b", "c"])
    balanced = balance_classes(data, seed=1)
    assert balanced.label_counts() == {"a": 2, "b": 2, "c": 2}
    assert balanced.texts[2:4] == ["t6", "t7"]  # the smallest class: all rows, file order
    train, val, test = split_data(balanced, 0.5, 0.25, seed=3)
    assert (len(train), len(val), len(test)) == (3, 1, 2)
    assert sorted(train.texts + val.texts + test.texts) == sorted(balanced.texts)
    with pytest.raises(UserError, match="fractions"):
        split_data(balanced, 0.8, 0.3)


# ------------------------------------------------------------------------------------------- tensors


def test_dataset_truncates_and_collate_pads_with_mask_and_last_index():
    data = ClassificationData(["abcdef", "ab", "abcd"], [1, 0, 1], ["ham", "spam"])
    tok = ByteTokenizer()
    ds = ClassificationDataset(data, tok, max_length=5)
    assert ds[0][0].tolist() == list(b"abcde") and ds[0][1] == 1
    assert ds.longest == 5
    batch = collate_classification([ds[0], ds[1], ds[2]], pad_id=pad_id_of(tok))
    assert batch.input_ids.shape == (3, 5) and batch.attention_mask.dtype == torch.bool
    assert batch.input_ids[1].tolist() == [97, 98, 256, 256, 256]  # eos pads when there is no pad id
    assert batch.attention_mask.tolist() == [[True] * 5, [True, True, False, False, False], [True] * 4 + [False]]
    assert batch.last_index.tolist() == [4, 1, 3]
    assert batch.labels.tolist() == [1, 0, 1]
    picked = batch.input_ids.gather(1, batch.last_index[:, None])[:, 0]
    assert picked.tolist() == [ord("e"), ord("b"), ord("d")]  # the last real token of each row
    wide = collate_classification([ds[1]], pad_id=0, pad_to=8)
    assert wide.input_ids.shape == (1, 8) and len(wide) == 1
    with pytest.raises(ValueError, match="pad_to"):
        collate_classification([ds[0]], pad_id=0, pad_to=2)


def test_pad_id_choice():
    tok = ByteTokenizer()
    tok.pad_id = 7
    assert pad_id_of(tok) == 7
    tok.pad_id, tok.eos_id = None, None
    with pytest.raises(UserError, match="neither a pad id nor an end-of-text id"):
        pad_id_of(tok)


def test_classification_batches_are_resumable():
    data = ClassificationData([f"text {i}" * (i % 3 + 1) for i in range(30)], [i % 2 for i in range(30)], ["a", "b"])
    ds = ClassificationDataset(data, ByteTokenizer())
    task = ClassificationTask(ds, ds, pad_id=256, seed=9)

    def rows(batches):
        return [labels.tolist() + ids[:, 0].tolist() + last.tolist() for ids, _, last, labels in batches]

    epoch0 = rows(task.train_batches(0, 4))
    assert len(epoch0) == 7
    assert rows(task.train_batches(0, 4, start=3)) == epoch0[3:]


def test_a_text_that_spells_a_special_token_is_plain_text():
    """Texts to classify are data: "<|endoftext|>" in one is its characters, not the end token (which our
    tokenizers would otherwise refuse with an error a command-line user cannot act on)."""
    data = ClassificationData(["fine", "bad <|endoftext|>"], [0, 1], ["a", "b"])
    ds = ClassificationDataset(data, ByteTokenizer())
    assert ds[1][0].tolist() == list(b"bad <|endoftext|>") and ByteTokenizer.eos_id not in ds[1][0].tolist()
    from llmscratch.tokenizer import load_tokenizer

    gpt2 = load_tokenizer("gpt2")
    assert encode_text(gpt2, "x <|endoftext|>") == gpt2.encode_ordinary("x <|endoftext|>")


def test_json_records_need_string_texts_and_string_or_integer_labels(tmp_path):
    path = tmp_path / "d.JSON"  # the extension in capitals is still a JSON list, not JSON lines
    ok = [{"text": "a", "label": "pos"}, {"text": "b", "label": " neg"}, {"text": "c", "label": "neg "}]
    path.write_text(json.dumps(ok))
    data = load_table(path)
    assert data.label_names == ["neg", "pos"] and data.labels == [1, 0, 0]  # labels read without their spaces
    for bad, what in (({"text": None, "label": "pos"}, "the text field 'text' must be a string, not null"),
                      ({"text": "x", "label": None}, "'label' must be a string or an integer, not null"),
                      ({"text": "x", "label": True}, "not true")):
        path.write_text(json.dumps([*ok, bad]))
        with pytest.raises(UserError, match=re.escape(what)):
            load_table(path)
