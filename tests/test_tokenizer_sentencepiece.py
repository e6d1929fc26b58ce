"""SentencePiece-style BPE: ids equal the `tokenizers` library's on the same vocabulary, exact round trip,
streaming bytes, special and user-defined tokens, our file format, and the real Gemma 3 vocabulary."""

from __future__ import annotations

import json

import pytest
from conftest import mirror_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmscratch.tokenizer import SentencePieceTokenizer, encode_prompt, load_tokenizer
from llmscratch.tokenizer.hf_json import read_hf_tokenizer_json
from llmscratch.tokenizer.sentencepiece import BYTE, CONTROL, NORMAL, SPACE, USER_DEFINED
from llmscratch.utils import UserError

tokenizers = pytest.importorskip("tokenizers")

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
USER = ["\n", "\n\n", "  ", "   ", "<h1>"]
FALLBACK_TEXT = "Hello world! Ünïcödé, 日本語, emoji 👍🏽 and tabs\tand  runs   of    spaces\n\nnew paragraph."
TEXTS = [
    "",
    " ",
    "Hello world",
    " leading space and trailing space ",
    FALLBACK_TEXT,
    "<start_of_turn>user\nHi<end_of_turn>\n<bos>x",
    "a" * 300 + " " + "ab" * 200,
    "<h1>Title</h1>\n\n\n\nBody      text",
]


def _training_text() -> str:
    try:
        return mirror_file("the-verdict.txt").read_text(encoding="utf-8")[:20000]
    except Exception:  # no mirror: a text every machine has
        import pydoc

        return pydoc.render_doc(str, renderer=pydoc.plaintext)[:20000]


def _build_json(words: bool) -> dict:
    """A Gemma-style tokenizer.json: trained with `tokenizers`, then laid out as Gemma's file is (control
    tokens, user-defined tokens, 256 byte pieces, then the learned pieces). `words`: train on words that
    start with "▁" (pieces only start with it), else on whole lines (pieces with "▁" inside)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Replace(" ", SPACE)
    if words:
        trainer_tok.pre_tokenizer = pre_tokenizers.Split(SPACE, behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=400, limit_alphabet=40, show_progress=False)
    trainer_tok.train_from_iterator(_training_text().splitlines(), trainer)
    trained = json.loads(trainer_tok.to_str())["model"]
    pieces = SPECIALS + USER + [f"<0x{b:02X}>" for b in range(256)]
    learned = sorted(trained["vocab"].items(), key=lambda kv: kv[1])
    vocab = {p: i for i, p in enumerate(pieces)}
    for p, _ in learned:
        vocab.setdefault(p, len(vocab))
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": t in SPECIALS}
        for i, t in enumerate(SPECIALS + USER)
    ]
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
            "vocab": vocab, "merges": trained["merges"],
        },
    }


@pytest.fixture(scope="module", params=[True, False], ids=["word-pieces", "pieces-across-spaces"])
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "tokenizer.json"
    path.write_text(json.dumps(_build_json(request.param), ensure_ascii=False))
    return read_hf_tokenizer_json(path), tokenizers.Tokenizer.from_file(str(path))


def _theirs(hf, text: str) -> list[int]:
    return hf.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("text", TEXTS)
def test_ids_equal_tokenizers_and_round_trip(pair, text):
    ours, hf = pair
    ids = ours.encode(text, allowed_special="all")
    assert ids == _theirs(hf, text)
    assert ours.decode(ids) == text


def test_mirror_texts_equal_tokenizers(pair):
    ours, hf = pair
    text = _training_text()[:8000] + "\n" + FALLBACK_TEXT
    for line in text.split("\n\n"):
        assert ours.encode(line, allowed_special="all") == _theirs(hf, line)
    assert ours.encode(text) == _theirs(hf, text)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=60)
       | st.text(alphabet=" \n\tabcdeht<>1👍é", max_size=60))
def test_random_unicode_equals_tokenizers(pair, text):
    ours, hf = pair
    ids = ours.encode(text, allowed_special="all")
    assert ids == _theirs(hf, text)
    assert ours.decode(ids) == text


def test_pieces_kinds_and_bos(pair):
    ours, hf = pair
    assert ours.kinds[2] == CONTROL and ours.kinds[len(SPECIALS)] == USER_DEFINED
    assert ours.kinds[len(SPECIALS) + len(USER)] == BYTE and ours.kinds[-1] == NORMAL
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.unk_id) == (2, 1, 0, 3)
    assert ours.add_bos
    assert encode_prompt(ours, "Hi there") == hf.encode("Hi there").ids  # BOS first, as the post-processor adds
    assert encode_prompt(ours, "<bos>Hi") == hf.encode("Hi").ids  # never twice


def test_special_tokens_need_permission_user_defined_do_not(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="<start_of_turn>"):
        ours.encode("<start_of_turn>user")
    assert ours.encode("<start_of_turn>", disallowed_special=()) != [ours.special_tokens["<start_of_turn>"]]
    assert ours.encode("a\n\nb").count(SPECIALS.__len__() + 1) == 1  # "\n\n" is one user-defined token
    assert ours.is_special(4) and not ours.is_special(len(SPECIALS))


def test_token_bytes_stream_multibyte_characters(pair):
    ours, _ = pair
    text = "日本 👍🏽 x"
    ids = ours.encode(text)
    assert any(ours.kinds[i] == BYTE for i in ids)  # the characters fell back to bytes
    assert b"".join(ours.token_bytes(i) for i in ids) == text.encode("utf-8")
    with pytest.raises(ValueError, match="not in the vocabulary"):
        ours.token_bytes(ours.vocab_size)


def test_our_file_round_trips(pair, tmp_path):
    ours, _ = pair
    ours.save(tmp_path / "tok.json")
    loaded = load_tokenizer(tmp_path / "tok.json")
    assert isinstance(loaded, SentencePieceTokenizer)
    assert loaded.encode(FALLBACK_TEXT) == ours.encode(FALLBACK_TEXT) and loaded.add_bos
    damaged = ours.to_dict() | {"version": 99}
    (tmp_path / "bad.json").write_text(json.dumps(damaged))
    with pytest.raises(UserError, match="version 99"):
        load_tokenizer(tmp_path / "bad.json")


def test_merges_by_score_equal_merges_by_list_when_scores_follow_the_list():
    pieces = ["<unk>", "a", "b", "c", "▁", "ab", "bc", "abc", "▁a"]
    kinds = [2] + [NORMAL] * 8
    scores = [0, -1, -2, -3, -4, -5, -6, -7, -8]  # "ab" before "bc": "abc" comes from ab + c
    by_score = SentencePieceTokenizer(pieces, kinds, scores, unk_id=0)
    by_list = SentencePieceTokenizer(pieces, kinds, merges=[(1, 2), (2, 3), (5, 3), (4, 1)], unk_id=0)
    for text in ("abc", "a bc", "bcab", " abcx"):
        assert by_score.encode(text) == by_list.encode(text)
    assert by_score.encode("abc") == [7]
    assert by_score.encode(" abcx") == [4, 7, 0]  # ab (best), then abc, never ▁a; x unknown (no byte pieces)
    assert by_score.encode(" ax") == [8, 0]


def test_written_tokenizer_json_gives_the_same_ids(pair, tmp_path):
    from llmscratch.tokenizer.hf_json import write_hf_tokenizer

    ours, _ = pair
    assert write_hf_tokenizer(ours, tmp_path, 64) == ["tokenizer.json", "tokenizer_config.json"]
    theirs = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    back = load_tokenizer(tmp_path)
    for text in TEXTS:
        ids = ours.encode(text, allowed_special="all")
        assert _theirs(theirs, text) == ids and back.encode(text, allowed_special="all") == ids
        assert theirs.decode(ids, skip_special_tokens=False) == text
    assert back.add_bos and (back.bos_id, back.eos_id, back.pad_id, back.unk_id) == (2, 1, 0, 3)
    auto = pytest.importorskip("transformers").AutoTokenizer.from_pretrained(str(tmp_path))
    assert auto("Hi there").input_ids == encode_prompt(ours, "Hi there")


def test_merges_implied_by_scores_are_written_best_first(tmp_path):
    from llmscratch.tokenizer.hf_json import write_hf_tokenizer

    pieces = ["<unk>", "<bos>", "a", "b", "c", "▁", "ab", "bc", "abc", "▁a"] + [f"<0x{b:02X}>" for b in range(256)]
    kinds = [2, CONTROL] + [NORMAL] * 8 + [BYTE] * 256
    scores = [0.0, 0.0, -1, -2, -3, -4, -5, -6, -7, -8] + [0.0] * 256
    ours = SentencePieceTokenizer(pieces, kinds, scores, bos_id=1, unk_id=0, add_bos=True)
    assert [(pieces[a], pieces[b]) for a, b in ours.merge_list()] == [("a", "b"), ("b", "c"), ("a", "bc"),
                                                                       ("ab", "c"), ("▁", "a")]
    write_hf_tokenizer(ours, tmp_path)
    theirs = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    for text in ("abc", "a bc", " abcx", "bcab abc", "é x"):
        assert _theirs(theirs, text) == ours.encode(text)
