"""Preference data: reading records, the book's split, bad pairs counted, the collate's masks."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ByteTokenizer, mirror_file

from llmscratch.data.instruction import book_split
from llmscratch.data.preference import (
    PreferenceDataset,
    PreferenceFields,
    collate_preference,
    load_preference_entries,
    read_preference_file,
)
from llmscratch.utils import UserError

TOK = ByteTokenizer()


def simple_format(record: dict) -> str:
    extra = f"\n{record['input']}" if record["input"] else ""
    return f"Q: {record['instruction']}{extra}\nA: "


def encode(record: dict) -> tuple[list[int], list[int]]:
    """As data.instruction's encode_example: (prompt ids, response ids) of a record whose output is the answer."""
    return TOK.encode(simple_format(record)), TOK.encode(record["output"])


def entry(instruction="Say hi", chosen="Hello.", rejected="Go away.", inp="", where="x") -> dict:
    return {"instruction": instruction, "input": inp, "chosen": chosen, "rejected": rejected, "where": where}


def test_reads_json_and_jsonl_with_field_names(tmp_path):
    rows = [{"question": "2+2?", "good": "4", "bad": "5"}, {"question": "Sky?", "good": "Blue", "bad": "Green"}]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    fields = PreferenceFields(prompt="question", chosen="good", rejected="bad")
    for name in ("p.json", "p.jsonl"):
        got = read_preference_file(tmp_path / name, fields)
        assert [(e["instruction"], e["input"], e["chosen"], e["rejected"]) for e in got] == [("2+2?", "", "4", "5"),
                                                                                  ("Sky?", "", "Blue", "Green")]
    with pytest.raises(UserError, match="no chosen field 'chosen'"):
        read_preference_file(tmp_path / "p.json", PreferenceFields(prompt="question"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_preference_file(tmp_path / "bad.json")
    with pytest.raises(UserError, match="no such file"):
        load_preference_entries(str(tmp_path / "missing.json"))


@pytest.mark.parametrize("name, content, message", [
    ("cut.jsonl", '{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{not json\n', "cut.jsonl, line 3 is not valid"),
    ("empty.jsonl", "", "is empty"),
    ("empty.json", "  \n", "is empty"),
    ("none.json", "[]", "holds no pairs"),
    ("latin1.json", "[{\"prompt\": \"caf\xe9\"}]".encode("latin-1"), "preference data .*latin1.json is not UTF-8"),
    ("folder", None, "folder.* is a folder, not a file"),
])
def test_unreadable_preference_files_are_one_clear_error(tmp_path, name, content, message):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_preference_file(path)


def test_prompt_field_defaults_to_instruction_then_prompt(tmp_path):
    rows = [{"instruction": "I", "input": "ctx", "chosen": "a", "rejected": "b"},
            {"prompt": "P", "chosen": "a", "rejected": "b"}]
    (tmp_path / "p.json").write_text(json.dumps(rows))
    got = read_preference_file(tmp_path / "p.json")
    assert (got[0]["instruction"], got[0]["input"]) == ("I", "ctx")
    assert (got[1]["instruction"], got[1]["input"]) == ("P", "")


def test_registry_data_and_book_split():
    mirror_file("instruction-data-with-preference.json")
    entries = load_preference_entries("instruction-data-preference")
    train, test, val = book_split(entries)
    assert (len(train), len(val), len(test)) == (935, 55, 110)
    assert test[0] == entries[935] and val[0] == entries[1045]  # file order, test before validation


def test_bad_pairs_are_counted_and_skipped():
    tok = TOK
    long_prompt = "x" * 40
    entries = [entry(), entry(chosen="same", rejected=" same "), entry(chosen="  "), entry(long_prompt),
               entry(chosen="abcdefghij-1", rejected="abcdefghij-2", where="cut")]
    prompt_len = len(simple_format(entry()))
    ds = PreferenceDataset(entries, encode, max_length=prompt_len + 12, end_id=tok.eos_id)
    assert len(ds) == 2  # the first pair, and the last one (its answers differ at their 12th token)
    assert (ds.skipped.equal, ds.skipped.empty, ds.skipped.no_room) == (1, 1, 1)
    assert "3 pairs" in ds.skipped.describe() and "within the maximum length" in ds.skipped.describe()
    assert PreferenceDataset(entries[:1], encode, max_length=99).skipped.describe() == "skipped none"
    ds2 = PreferenceDataset(entries[-1:], encode, max_length=prompt_len + 10, end_id=tok.eos_id)
    assert len(ds2) == 0 and ds2.skipped.equal == 1  # equal once both are cut to 10 answer tokens
    pair = ds[0]
    assert pair.prompt == tok.encode(simple_format(entry()))
    assert pair.chosen == tok.encode("Hello.") + [tok.eos_id]
    assert pair.rejected == tok.encode("Go away.") + [tok.eos_id]


def test_collate_masks_prompt_and_padding():
    tok = TOK
    ds = PreferenceDataset([entry(), entry("Longer instruction here", "Yes.", "No, never, not at all.")], encode,
                           max_length=200, end_id=tok.eos_id)
    batch = collate_preference([ds[0], ds[1]], pad_id=0, indices=[7, 9])
    assert batch["index"].tolist() == [7, 9]
    T = batch["chosen"].shape[1]
    assert batch["rejected"].shape == (2, T) == batch["chosen_mask"].shape == batch["rejected_mask"].shape
    for b, pair in enumerate((ds[0], ds[1])):
        for key in ("chosen", "rejected"):
            answer = getattr(pair, key)
            n, a = len(pair.prompt), len(answer)
            ids, mask = batch[key][b], batch[key + "_mask"][b]
            assert ids[: n + a].tolist() == pair.prompt + answer
            assert ids[n + a :].eq(0).all()
            assert mask.tolist() == [False] * n + [True] * a + [False] * (T - n - a)
    assert T == max(len(p.prompt) + max(len(p.chosen), len(p.rejected)) for p in (ds[0], ds[1]))
    assert batch["chosen"].dtype == torch.long and batch["chosen_mask"].dtype == torch.bool
