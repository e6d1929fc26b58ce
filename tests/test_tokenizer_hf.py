"""Hugging Face tokenizer.json files: our ids equal the `tokenizers` library's (the oracle) on the same file.

The files are made here with the `tokenizers` library (trained on mirror text) or written by hand, for the
three pre-tokenizer shapes we support: ByteLevel (GPT-2), Sequence[Digits, ByteLevel] (SmolLM2) and
Sequence[Split(regex), ByteLevel(use_regex=false)] (Llama-3).
"""

from __future__ import annotations

import json

import pytest
from conftest import mirror_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmscratch.tokenizer import Tokenizer, load_tokenizer
from llmscratch.tokenizer.byte_level import bytes_to_unicode
from llmscratch.tokenizer.files import read_gpt2_files
from llmscratch.tokenizer.hf_json import hf_tokenizer_json, read_hf_tokenizer_json
from llmscratch.tokenizer.pretokenize import LLAMA3_PATTERN
from llmscratch.utils import UserError

tokenizers = pytest.importorskip("tokenizers")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
KINDS = ["gpt2", "gpt2-prefix-space", "smollm", "llama3"]
TEXTS = st.lists(
    st.one_of(
        st.text(st.characters(codec="utf-8", exclude_categories=("Cn",)), max_size=10),
        st.sampled_from(SPECIALS + ["<|im_", " ", "  ", "\n\n", "\t ", "\r\n", "123", " 4567", "a  1", "'S",
                                    "'ll", "😀", "👍🏽", "日本", "٣", "1,000,000", "The", " the"]),
    ),
    max_size=12,
).map("".join)


def _pre_tokenizer(kind: str):
    pre = tokenizers.pre_tokenizers
    if kind == "gpt2":
        return pre.ByteLevel(add_prefix_space=False)
    if kind == "gpt2-prefix-space":
        return pre.ByteLevel(add_prefix_space=True)
    if kind == "smollm":
        return pre.Sequence([pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False)])
    return pre.Sequence([
        pre.Split(tokenizers.Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


@pytest.fixture(scope="module")
def corpus() -> str:
    verdict = mirror_file("the-verdict.txt").read_text(encoding="utf-8")
    sms = mirror_file("SMSSpamCollection").read_text(encoding="utf-8")[:60_000]
    return verdict + sms


@pytest.fixture(scope="module", params=KINDS)
def hf_pair(request, corpus, tmp_path_factory):
    """(our tokenizer, the `tokenizers` oracle) loaded from one tokenizer.json trained here."""
    kind = request.param
    tk = tokenizers.Tokenizer(tokenizers.models.BPE())
    tk.pre_tokenizer = _pre_tokenizer(kind)
    tk.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=SPECIALS,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([corpus], trainer)
    path = tmp_path_factory.mktemp(kind) / "tokenizer.json"
    tk.save(str(path))
    return read_hf_tokenizer_json(path), tokenizers.Tokenizer.from_file(str(path)), kind


def test_pre_tokenizer_is_recognised(hf_pair):
    ours, _, kind = hf_pair
    expected = {"gpt2": "gpt2", "gpt2-prefix-space": "gpt2", "smollm": "smollm", "llama3": "llama-bpe"}[kind]
    assert ours.pre_tokenizer.name == expected
    assert ours.pre_tokenizer.add_prefix_space == (kind == "gpt2-prefix-space")
    assert set(ours.special_tokens) == set(SPECIALS) and ours.eos_id == ours.special_tokens["<|endoftext|>"]


def test_written_back_the_special_tokens_keep_their_ids(hf_pair, corpus):
    """Our tokenizer.json of a tokenizer whose special tokens come first (ids 0-2, as SmolLM2's) gives `tokenizers`
    the same ids: an added token missing from the vocabulary would get a new id after it."""
    ours, oracle, _ = hf_pair
    back = tokenizers.Tokenizer.from_str(json.dumps(hf_tokenizer_json(ours)))
    assert [back.token_to_id(t) for t in SPECIALS] == [oracle.token_to_id(t) for t in SPECIALS] == [0, 1, 2]
    text = "<|im_start|>user\n" + corpus[:3000] + "<|im_end|>\n<|endoftext|>"
    assert back.encode(text).ids == oracle.encode(text).ids


@pytest.mark.parametrize("name", ["the-verdict.txt", "SMSSpamCollection", "instruction-data.json"])
def test_ids_equal_tokenizers_on_mirror_texts(hf_pair, name):
    ours, oracle, _ = hf_pair
    text = mirror_file(name).read_text(encoding="utf-8")[:100_000]
    ids = ours.encode(text, allowed_special="all")
    assert ids == oracle.encode(text, add_special_tokens=False).ids
    assert ours.decode(ids) == oracle.decode(ids, skip_special_tokens=False)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS)
def test_ids_equal_tokenizers_on_random_text(hf_pair, text):
    ours, oracle, kind = hf_pair
    ids = ours.encode(text, allowed_special="all")
    assert ids == oracle.encode(text, add_special_tokens=False).ids
    if kind != "gpt2-prefix-space":
        assert ours.decode(ids) == text


def test_digits_split_matters_and_is_followed():
    # Same vocabulary, with and without digit splitting: "a  1" differs (the run of two spaces is one
    # chunk only when the digit is cut off first).
    tokens = [bytes_to_unicode()[b] for b in range(256)] + ["ĠĠ"]
    gpt2 = Tokenizer.from_vocab_and_merges(tokens, ["Ġ Ġ"], pre="gpt2")
    smollm = Tokenizer.from_vocab_and_merges(tokens, ["Ġ Ġ"], pre="smollm")
    assert smollm.encode("a  1") == [97, 256, 49]
    assert gpt2.encode("a  1") == [97, 32, 32, 49]


def _hand_made_json(ignore_merges: bool) -> dict:
    alphabet = [bytes_to_unicode()[b] for b in range(256)]
    vocab = {t: i for i, t in enumerate(alphabet + ["Ġt", "he", "Ġth", "Ġthe"])}
    return {
        "version": "1.0",
        "added_tokens": [{"id": 260, "content": "<|begin_of_text|>", "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": [["Ġ", "t"], ["h", "e"], ["Ġt", "h"]]},
    }


@pytest.mark.parametrize("ignore_merges", [False, True])
def test_hand_written_llama3_style_file(tmp_path, ignore_merges):
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(_hand_made_json(ignore_merges)), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|begin_of_text|>"}}))
    ours = load_tokenizer(str(tmp_path))
    oracle = tokenizers.Tokenizer.from_file(str(path))
    assert ours.ignore_merges == ignore_merges and ours.bos_id == 260 and ours.eos_id == 260
    for text in ["<|begin_of_text|> the them", " the", "THE 12345 the'S"]:
        assert ours.encode(text, allowed_special="all") == oracle.encode(text, add_special_tokens=False).ids
    # Merges alone stop at Ġt + he ("Ġt he" is no merge); ignore_merges takes the whole chunk " the".
    assert ours.encode(" the") == ([259] if ignore_merges else [256, 257])


def test_gpt2_files_through_tokenizers_agree_with_tiktoken_rule(tmp_path):
    """GPT-2's own vocabulary read as a tokenizer.json ("merges" rule) gives the same ids as the
    tiktoken-rule tokenizer made from encoder.json + vocab.bpe, and as `tokenizers` itself."""
    encoder, merges = mirror_file("gpt2/encoder.json"), mirror_file("gpt2/vocab.bpe")
    tk = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(str(encoder), str(merges)))
    tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = tokenizers.decoders.ByteLevel()
    tk.add_special_tokens(["<|endoftext|>"])
    path = tmp_path / "tokenizer.json"
    tk.save(str(path))
    from_json = load_tokenizer(str(path))
    from_files = read_gpt2_files(encoder, merges)
    assert from_json.merge_rule == "merges" and from_files.merge_rule == "tokens"
    text = mirror_file("SMSSpamCollection").read_text(encoding="utf-8")[:60_000] + "<|endoftext|>"
    ids = from_json.encode(text, allowed_special="all")
    assert ids == tk.encode(text, add_special_tokens=False).ids
    assert ids == from_files.encode(text, allowed_special="all")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda j: j.update(normalizer={"type": "NFKC"}), "normalizer NFKC"),
        (lambda j: j.update(pre_tokenizer={"type": "Whitespace"}), "Whitespace"),
        (lambda j: j["model"].update(type="WordPiece"), "only BPE"),
        (lambda j: j["model"].update(byte_fallback=True), "byte_fallback"),
    ],
)
def test_unsupported_tokenizer_json_is_a_user_error(tmp_path, change, message):
    data = _hand_made_json(False)
    change(data)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(UserError, match=message):
        read_hf_tokenizer_json(path)
