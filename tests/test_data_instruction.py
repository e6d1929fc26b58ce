"""Instruction data: reading entries (registry, JSON, JSONL, variants), the book's split and prompt formats."""

from __future__ import annotations

import json

import pytest
from conftest import mirror_file

from llmscratch.data.instruction import (
    InstructionDataset,
    book_split,
    collate_instruction,
    encode_example,
    epoch_order,
    format_prompt,
    format_response,
    load_entries,
    read_entries,
    split_entries,
)
from llmscratch.tokenizer import Tokenizer
from llmscratch.tokenizer.byte_level import bytes_to_unicode
from llmscratch.utils import UserError

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nBe brief.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
ENTRY = {"instruction": "Edit the following sentence for grammar.", "input": "He go to the park every day.",
         "output": "He goes to the park every day."}


def chatml_tokenizer() -> Tokenizer:
    vocab = [bytes_to_unicode()[b] for b in range(256)] + list(SPECIALS)
    return Tokenizer.from_vocab_and_merges(vocab, [], SPECIALS, bos_id=257, eos_id=258)


def test_instruction_data_from_registry_and_book_split():
    mirror_file("instruction-data.json")
    entries = load_entries("instruction-data")
    assert len(entries) == 1100
    split = book_split(entries)
    assert (len(split.train), len(split.test), len(split.val)) == (935, 110, 55)
    assert split.train[0] == entries[0] and split.test[0] == entries[935] and split.val[-1] == entries[-1]
    assert split_entries(entries, "validation") == split.val
    assert split_entries(entries, "all") == entries


def test_preference_data_keeps_its_extra_fields():
    mirror_file("instruction-data-with-preference.json")
    entries = load_entries("instruction-data-preference")
    assert len(entries) == 1100
    assert {"instruction", "input", "output", "chosen", "rejected"} <= set(entries[0])


def test_alpaca_format_is_the_books_text():
    prompt = format_prompt(ENTRY, "alpaca")
    assert prompt == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\nEdit the following sentence for grammar.\n\n### Input:\nHe go to the park "
        "every day.\n\n### Response:\n"
    )
    assert format_response(ENTRY, "alpaca") == "He goes to the park every day."
    no_input = format_prompt({**ENTRY, "input": ""}, "alpaca")
    assert "### Input" not in no_input and no_input.endswith("for grammar.\n\n### Response:\n")


def test_phi3_format():
    assert format_prompt(ENTRY, "phi3") == (
        "<|user|>\nEdit the following sentence for grammar.\n\nHe go to the park every day.<|end|>\n<|assistant|>\n")
    assert format_response(ENTRY, "phi3") == "He goes to the park every day.<|end|>"


def test_chat_format_uses_the_models_template():
    tok = chatml_tokenizer()
    prompt = format_prompt(ENTRY, "chat", tok, CHATML)
    assert prompt == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nEdit the following sentence for "
                      "grammar.\n\nHe go to the park every day.<|im_end|>\n<|im_start|>assistant\n")
    # the template's end of turn is the tokenizer's EOS: the collate appends it, so the response stops before
    assert format_response(ENTRY, "chat", tok, CHATML) == "He goes to the park every day."
    prompt_ids, response_ids = encode_example(ENTRY, "chat", tok, CHATML)
    assert prompt_ids[0] == 257 and prompt_ids.count(258) == 2 and 258 not in response_ids
    assert bytes(response_ids).decode() == ENTRY["output"]


def test_chat_format_without_template_is_a_clear_error():
    with pytest.raises(UserError, match="no chat template|has none"):
        format_prompt(ENTRY, "chat", chatml_tokenizer(), None)
    with pytest.raises(UserError, match="alpaca, phi3, chat"):
        format_prompt(ENTRY, "vicuna")


def test_messages_entries(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Answer in one word."},
                          {"role": "user", "content": "Capital of France?"},
                          {"role": "assistant", "content": "Paris"}]}]
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(rows))
    (entry,) = load_entries(path)
    assert entry["instruction"] == "Capital of France?" and entry["output"] == "Paris" and entry["input"] == ""
    assert format_prompt(entry, "alpaca").startswith("Answer in one word.\n\n### Instruction:\nCapital of France?")
    assert format_prompt(entry, "phi3") == ("<|system|>\nAnswer in one word.<|end|>\n<|user|>\nCapital of "
                                            "France?<|end|>\n<|assistant|>\n")
    assert format_prompt(entry, "chat", chatml_tokenizer(), CHATML).startswith(
        "<|im_start|>system\nAnswer in one word.<|im_end|>")
    two_turns = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                              {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    path.write_text(json.dumps([two_turns]))
    (entry,) = load_entries(path)
    assert format_prompt(entry, "phi3") == (
        "<|user|>\na<|end|>\n<|assistant|>\nb<|end|>\n<|user|>\nc<|end|>\n<|assistant|>\n")
    with pytest.raises(UserError, match="several user turns"):
        format_prompt(entry, "alpaca")


def test_jsonl_variants_and_bad_entries_are_counted(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    lines = [
        json.dumps(ENTRY),
        "this is not json",
        json.dumps({"instruction": "Say hi.", "context": "", "response": "Hi."}),  # Dolly-style names
        json.dumps({"instruction": "No answer.", "input": ""}),
        json.dumps({"instruction": "Empty answer.", "input": "", "output": "  "}),
        json.dumps([1, 2]),
        "",
    ]
    path.write_text("\n".join(lines))
    found = read_entries(path)
    assert [e["instruction"] for e in found.entries] == [ENTRY["instruction"], "Say hi."]
    assert found.entries[1]["output"] == "Hi." and found.entries[1]["input"] == ""
    assert found.skipped == {"lines that are not JSON": ["line 2"], "entries without 'output'": ["line 4"],
                             "entries with an empty output": ["line 5"],
                             "entries that are not JSON objects": ["line 6"]}
    load_entries(path)
    assert "skipped 4 of 6 entries" in capsys.readouterr().err
    assert len(load_entries(path, require_output=False, quiet=True)) == 4  # empty outputs allowed


def test_unusable_files_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"instruction": "x", "output": "y"},')
    with pytest.raises(UserError, match="not valid JSON"):
        load_entries(bad)
    bad.write_text('{"instruction": "x", "output": "y"}\n')
    assert len(load_entries(bad)) == 1  # one object on one line is JSONL
    bad.write_text('{\n"data": []\n}')
    with pytest.raises(UserError, match="one JSON object"):
        load_entries(bad)
    bad.write_text('[{"text": "x"}]')
    with pytest.raises(UserError, match="no usable instruction entries.*without 'instruction'"):
        load_entries(bad)
    with pytest.raises(UserError, match="neither a file nor a data set name"):
        load_entries(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------------------
# Collate, worked by hand
# ---------------------------------------------------------------------------------------------------------


def test_collate_the_books_chapter7_example():
    inputs, targets = collate_instruction([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], pad_id=50256)
    assert inputs.tolist() == [[0, 1, 2, 3, 4], [5, 6, 50256, 50256, 50256], [7, 8, 9, 50256, 50256]]
    assert targets.tolist() == [[1, 2, 3, 4, 50256], [6, 50256, -100, -100, -100], [8, 9, 50256, -100, -100]]
    inputs, targets = collate_instruction([[0, 1, 2, 3, 4], [5, 6], [7, 8, 9]], pad_id=50256, max_length=3)
    assert inputs.tolist() == [[0, 1, 2], [5, 6, 50256], [7, 8, 9]]
    assert targets.tolist() == [[1, 2, 3], [6, 50256, -100], [8, 9, 50256]]


def test_collate_end_and_pad_differ_and_masking_is_by_position():
    inputs, targets = collate_instruction([[10, 11], [12]], pad_id=0, end_id=2)
    assert inputs.tolist() == [[10, 11], [12, 2]]
    assert targets.tolist() == [[11, 2], [2, -100]]
    # an end-of-text id inside the text is a real target (the book's value-based mask would hide it)
    _, targets = collate_instruction([[5, 50256, 6]], pad_id=50256)
    assert targets.tolist() == [[50256, 6, 50256]]


def test_collate_masks_the_prompt():
    # rows: prompt [1, 2] + response [3, 4]; prompt [5, 6] + response [7]; end 9, pad 0
    inputs, targets = collate_instruction([[1, 2, 3, 4], [5, 6, 7]], pad_id=0, end_id=9, prompt_lengths=[2, 2])
    assert inputs.tolist() == [[1, 2, 3, 4], [5, 6, 7, 9]]
    assert targets.tolist() == [[-100, 3, 4, 9], [-100, 7, 9, -100]]


def test_dataset_collate_and_length_grouping():
    tok = chatml_tokenizer()
    entries = [{"instruction": "x" * n, "input": "", "output": "y" * (n % 5 + 1)} for n in range(1, 41)]
    ds = InstructionDataset(entries, tok, "phi3", max_length=75)
    assert len(ds) == 40 and ds.prompt_lengths[0] == len(format_prompt(entries[0], "phi3").encode())
    assert ds.truncated() == sum(len(r) > 75 for r in ds.ids) > 0 and ds.no_response() == []
    batch = ds.collate([0, 1], pad_id=0, end_id=tok.eos_id, mask_prompt=True)
    assert batch.targets[0, ds.prompt_lengths[0] - 2] == -100 and batch.targets[0, ds.prompt_lengths[0] - 1] != -100
    lengths = [len(r) for r in ds.ids]
    plain, grouped = epoch_order(lengths, 4, 1, 0), epoch_order(lengths, 4, 1, 0, group_by_length=True)
    assert sorted(plain) == sorted(grouped) == list(range(40))
    assert plain == epoch_order(lengths, 4, 1, 0) and plain != epoch_order(lengths, 4, 1, 1)

    def padding(order):
        return sum(max(lengths[i] for i in order[s:s + 4]) * 4 - sum(lengths[i] for i in order[s:s + 4])
                   for s in range(0, 40, 4))

    assert padding(grouped) < padding(plain)


def test_saved_chat_templates_write_the_formats():
    from llmscratch.chat import render_chat
    from llmscratch.data.instruction import chat_template_for

    entry = {**ENTRY, "input": ""}
    turn = [{"role": "user", "content": entry["instruction"]}]
    assert render_chat(chat_template_for("alpaca"), turn) == format_prompt(entry, "alpaca")
    assert render_chat(chat_template_for("phi3"), turn) == format_prompt(entry, "phi3")
    assert chat_template_for("chat", CHATML) == CHATML
    two = [*turn, {"role": "assistant", "content": "A."}, {"role": "user", "content": "Q2"}]
    assert render_chat(chat_template_for("alpaca"), two, eos_token="<|endoftext|>").endswith(
        "### Response:\nA.<|endoftext|>\n\n### Instruction:\nQ2\n\n### Response:\n")


def test_task_batches_resume_and_split_over_ranks():
    from llmscratch.train.tasks.instruct import InstructionTask

    tok = chatml_tokenizer()
    entries = [{"instruction": "x" * n, "input": "", "output": "y" * (n % 3 + 1)} for n in range(1, 26)]
    ds = InstructionDataset(entries, tok, "alpaca")
    task = InstructionTask(ds, ds, pad_id=0, end_id=tok.eos_id, group_by_length=True, seed=7)
    assert task.num_train_batches(4) == 6 and task.num_train_batches(2, world_size=2) == 6
    full = list(task.train_batches(1, 4))
    assert [b.inputs.tolist() for b in task.train_batches(1, 4, start=2)] == [b.inputs.tolist() for b in full[2:]]
    rank0, rank1 = list(task.train_batches(1, 2, rank=0, world_size=2)), list(task.train_batches(1, 2, 0, 1, 2))
    def rows(batch):  # each row without its end token and padding (the texts hold neither byte 0 nor 258)
        out = []
        for r in batch.inputs.tolist():
            while r and r[-1] in (0, tok.eos_id):
                r = r[:-1]
            out.append(tuple(r))
        return sorted(out)

    for whole, a, b in zip(full, rank0, rank1):  # the ranks' batch i together = the single process's batch i
        assert len(a.inputs) == len(b.inputs) == 2 and sorted(rows(a) + rows(b)) == rows(whole)
    val = list(task.val_batches(10))
    assert sum(len(b.inputs) for b in val) == 25
