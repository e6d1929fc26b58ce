"""Our byte-level BPE: GPT-2 parity with tiktoken (oracle, built from the same local files), training,
save/load, special tokens and bad input."""

from __future__ import annotations

import json

import pytest
from conftest import mirror_file
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmscratch.tokenizer import Tokenizer, train
from llmscratch.tokenizer import bpe as bpe_module
from llmscratch.tokenizer.bpe import merge_heap, merge_scan
from llmscratch.tokenizer.byte_level import bytes_to_unicode, text_to_token, texts_to_tokens, token_to_text
from llmscratch.tokenizer.files import read_gpt2_files
from llmscratch.tokenizer.pretokenize import GPT2_PATTERN, get_pre_tokenizer
from llmscratch.utils import UserError

EOT = "<|endoftext|>"
MIRROR_TEXTS = ["the-verdict.txt", "SMSSpamCollection", "instruction-data.json"]
SETTINGS = settings(max_examples=120, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def gpt2_files():
    return mirror_file("gpt2/encoder.json"), mirror_file("gpt2/vocab.bpe")


@pytest.fixture(scope="module")
def gpt2(gpt2_files) -> Tokenizer:
    return read_gpt2_files(*gpt2_files)


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_files):
    """tiktoken's gpt2 encoding built from the same local files (no download, no cache written)."""
    tiktoken_load = pytest.importorskip("tiktoken.load")
    import tiktoken

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")
        ranks = tiktoken_load.data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(gpt2_files[1]), encoder_json_file=str(gpt2_files[0])
        )
    return tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256})


# Random text that stresses pre-tokenization: any assigned character, plus pieces that look like special
# tokens, contractions, whitespace runs, digits and emoji.
FRAGMENTS = st.sampled_from([
    EOT, "<|endoftext", "|>", "<|", "'s", "'ll", "'S", " ", "  ", "\n", "\n\n", "\t", " \n ", "\r\n", "   x",
    "123", " 4567", "1,000", "😀", "👍🏽", "🇩🇪", "é", "ß", "日本語", "Ω", "\u00a0", "\u3000", "٣",
])
# Characters unassigned in Python's Unicode tables (Cn) are left out: the `regex` package and the oracles carry
# Unicode tables of different versions, so a code point assigned lately (U+3D000, a letter to regex 2026.11 and
# unassigned to tiktoken) splits differently before the text even reaches BPE.
TEXTS = st.lists(st.one_of(st.text(st.characters(codec="utf-8", exclude_categories=("Cn",)), max_size=12), FRAGMENTS),
                 max_size=12).map("".join)


# ---------------------------------------------------------------------- byte-level alphabet


def test_byte_level_alphabet_is_a_bijection_onto_printable_characters():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    every_byte = bytes(range(256))
    assert text_to_token(token_to_text(every_byte)) == every_byte
    # Characters outside the alphabet (found in some hand-made vocabularies) stand for their UTF-8 bytes.
    assert text_to_token("\xadĠ日\n") == "\xad".encode() + b" " + "日".encode() + b"\n"


# ---------------------------------------------------------------------- GPT-2 parity with tiktoken


@pytest.mark.parametrize("name", MIRROR_TEXTS)
def test_gpt2_ids_equal_tiktoken_on_mirror_texts(gpt2, tiktoken_gpt2, name):
    text = mirror_file(name).read_text(encoding="utf-8")
    ids = gpt2.encode(text)
    assert ids == tiktoken_gpt2.encode(text)
    assert gpt2.decode(ids) == text
    assert gpt2.decode(ids) == tiktoken_gpt2.decode(ids)


def test_gpt2_attributes(gpt2):
    assert gpt2.vocab_size == 50257
    assert gpt2.special_tokens == {EOT: 50256}
    assert gpt2.eos_id == 50256 and gpt2.bos_id == 50256 and gpt2.pad_id is None
    assert gpt2.encode("Hello world") == [15496, 995]  # the ids every GPT-2 tutorial shows
    assert gpt2.token_bytes(995) == b" world"


@SETTINGS
@given(TEXTS)
def test_gpt2_parity_on_random_text(gpt2, tiktoken_gpt2, text):
    ordinary = gpt2.encode_ordinary(text)
    assert ordinary == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2.encode(text, allowed_special="all") == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2.encode(text, disallowed_special=()) == ordinary
    assert gpt2.decode(ordinary) == text
    assert gpt2.decode_bytes(ordinary) == text.encode("utf-8")


@pytest.mark.parametrize("text", [" " * 3000, "x" * 3000 + "!" * 500, "😀" * 400, "ab" * 2000 + "\n" * 300])
def test_long_chunks_use_the_heap_and_match_tiktoken(gpt2, tiktoken_gpt2, text):
    assert max(len(c.encode()) for c in gpt2.pre_tokenizer.split(text)) > bpe_module.HEAP_THRESHOLD
    gpt2.clear_cache()
    assert gpt2.encode_ordinary(text) == tiktoken_gpt2.encode_ordinary(text)


@SETTINGS
@given(st.lists(st.sampled_from(list("aabbcd ") + ["th", "e", "😀"]), min_size=2, max_size=80).map("".join))
def test_heap_merge_equals_scan_merge(gpt2, chunk):
    ids = [gpt2._byte_ids[b] for b in chunk.encode()]
    assert merge_heap(list(ids), gpt2._pairs) == merge_scan(list(ids), gpt2._pairs)


def test_a_full_cache_is_emptied_without_losing_chunks(gpt2, tiktoken_gpt2, monkeypatch):
    monkeypatch.setattr(bpe_module, "CACHE_MAX", 20)
    text = mirror_file("the-verdict.txt").read_text(encoding="utf-8")[:2000]
    gpt2.clear_cache()
    for part in (text[:500], text[:1000], text):
        assert gpt2.encode_ordinary(part) == tiktoken_gpt2.encode_ordinary(part)
    gpt2.clear_cache()


def test_surrogates_are_replaced_like_tiktoken(gpt2, tiktoken_gpt2):
    text = "a\ud800b"
    assert gpt2.encode(text) == tiktoken_gpt2.encode(text)


# ---------------------------------------------------------------------- special tokens


def test_disallowed_special_token_raises_a_clear_error(gpt2):
    with pytest.raises(ValueError) as err:
        gpt2.encode(f"Hello{EOT}world")
    message = str(err.value)
    assert EOT in message and "allowed_special" in message and "--allow-special" not in message


def test_allowed_special_token_gets_its_id(gpt2, tiktoken_gpt2):
    text = f"Hello{EOT} world{EOT}"
    ids = gpt2.encode(text, allowed_special={EOT})
    assert ids == [15496, 50256, 995, 50256]
    assert gpt2.encode(text, allowed_special="all") == ids
    assert gpt2.encode(text, allowed_special=EOT) == ids  # one string is one token
    assert gpt2.decode(ids) == text
    as_text = gpt2.encode(text, disallowed_special=())
    assert as_text == tiktoken_gpt2.encode(text, disallowed_special=()) and 50256 not in as_text
    assert gpt2.encode_ordinary(text) == as_text


def test_longest_special_token_wins():
    tok = train("abc abc", 260, ["<a>", "<a><b>"])
    ids = tok.encode("x<a><b>y<a>", allowed_special="all")
    assert ids[1] == tok.special_tokens["<a><b>"] and ids[3] == tok.special_tokens["<a>"]


# ---------------------------------------------------------------------- decoding bad input


def test_decoding_an_id_outside_the_vocabulary_names_it(gpt2):
    for bad in (50257, 10**9, -1):
        with pytest.raises(ValueError, match=str(bad)):
            gpt2.decode([15496, bad])
    with pytest.raises(ValueError, match="50257"):
        gpt2.token_bytes(50257)


def test_invalid_utf8_is_replaced_unless_strict(gpt2, tiktoken_gpt2):
    ids = gpt2.encode("😀")  # 4 bytes, several tokens
    assert len(ids) > 1
    partial = ids[:-1]
    assert gpt2.decode(partial) == tiktoken_gpt2.decode(partial)
    assert "\ufffd" in gpt2.decode(partial)
    with pytest.raises(UnicodeDecodeError):
        gpt2.decode(partial, errors="strict")
    assert gpt2.decode_bytes(partial) == "😀".encode()[: len(gpt2.decode_bytes(partial))]


def test_decode_accepts_tensors(gpt2):
    torch = pytest.importorskip("torch")
    assert gpt2.decode(torch.tensor([15496, 995])) == "Hello world"


# ---------------------------------------------------------------------- training


def test_training_reproduces_a_merge_order_derived_by_hand():
    # "aaabdaaabac" is one chunk for GPT-2's pattern (all letters). Byte ids: a=97 b=98 c=99 d=100.
    # Pair counts: (a,a)=4 (two in each "aaa"), (a,b)=2, (b,d)=1, (d,a)=1, (b,a)=1, (a,c)=1.
    # 1. (a,a) -> 256 "aa". Left to right: aa a b d aa a b a c.
    #    Counts: (256,a)=2, (a,b)=2, (b,d), (d,256), (b,a), (a,c) = 1.
    # 2. Tie at 2: (97,98) beats (256,97) (smaller left id) -> 257 "ab": 256 257 d 256 257 a c.
    # 3. (256,257)=2 -> 258 "aaab": 258 d 258 a c.
    # 4. All pairs count 1: (258,100), (100,258), (258,97), (97,99); smallest left id -> (97,99) = 259 "ac".
    # 5. Now 258 d 258 259: (100,258) has the smallest left id -> 260 "daaab".
    tok = train("aaabdaaabac", 261)
    assert tok.merges == [(97, 97), (97, 98), (256, 257), (97, 99), (100, 258)]
    assert [tok.token_bytes(i) for i in range(256, 261)] == [b"aa", b"ab", b"aaab", b"ac", b"daaab"]
    assert tok.encode("aaabdaaabac") == [258, 260, 259]
    assert tok.decode([258, 260, 259]) == "aaabdaaabac"


def test_training_respects_chunks_and_special_tokens():
    text = f"low lower{EOT}lowest low{EOT}"
    tok = train(text, 262, [EOT])
    assert tok.vocab_size == 262 and tok.special_tokens == {EOT: 261} and tok.eos_id == 261
    learned = [tok.token_bytes(i) for i in range(256, 261)]
    assert all(b"<|" not in t and b"|>" not in t for t in learned)  # special tokens are never learned
    assert all(b" " not in t[1:] for t in learned)  # no merge crosses a chunk boundary
    ids = tok.encode(text, allowed_special="all")
    assert ids.count(261) == 2 and tok.decode(ids) == text


def test_training_stops_when_pairs_run_out():
    tok = train("ab ab ab", 1000)
    assert tok.vocab_size < 1000 and tok.decode(tok.encode("ab ab")) == "ab ab"
    assert train("ab ab cd", 1000, min_frequency=2).merges == [(97, 98)]  # then every pair occurs once


def test_vocab_too_small_is_refused():
    with pytest.raises(ValueError, match="too small"):
        train("hello", 256, [EOT])


@SETTINGS
@given(TEXTS)
def test_trained_tokenizer_round_trips_any_text(text):
    tok = _small_trained()
    assert tok.decode(tok.encode(text, allowed_special="all")) == text
    assert tok.decode(tok.encode_ordinary(text)) == text


_TRAINED: list[Tokenizer] = []


def _small_trained() -> Tokenizer:
    if not _TRAINED:
        _TRAINED.append(train("the cat sat on the mat; the 123 cats 😀😀 sat!\n\n  " * 20, 300, [EOT]))
    return _TRAINED[0]


# ---------------------------------------------------------------------- save / load


def test_save_load_round_trip(tmp_path):
    tok = train(mirror_file("the-verdict.txt").read_text(encoding="utf-8"), 600, [EOT, "<|pad|>"], pre="smollm")
    path = tmp_path / "verdict.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["format"] == "llmscratch-bpe" and data["version"] == 1 and len(data["merges"]) == 600 - 258
    loaded = Tokenizer.load(path)
    assert loaded.merges == tok.merges and loaded.special_tokens == tok.special_tokens
    assert loaded.pre_tokenizer == tok.pre_tokenizer and loaded.eos_id == tok.eos_id
    text = f"I had always thought Jack Gisburn 1908{EOT}"
    assert loaded.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    view = (tmp_path / "verdict.vocab").read_text(encoding="utf-8")
    assert "256 [" in view and f"[{EOT}] special" in view and " <- [" in view


def test_gpt2_save_load_keeps_tiktoken_rule(gpt2, tmp_path):
    path = tmp_path / "gpt2.json"
    gpt2.save(path, vocab_view=False)
    loaded = Tokenizer.load(path)
    assert loaded.merge_rule == "tokens" and loaded.vocab_size == 50257
    text = mirror_file("the-verdict.txt").read_text(encoding="utf-8")[:3000]
    assert loaded.encode(text) == gpt2.encode(text)
    assert not (tmp_path / "gpt2.vocab").exists()


def test_load_refuses_other_versions_and_damaged_files(tmp_path):
    tok = train("hello hello", 258)
    path = tmp_path / "t.json"
    tok.save(path)
    data = json.loads(path.read_text())
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="version 99"):
        Tokenizer.load(path)
    data["version"] = 1
    data["merges"] = ["h nope"]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="damaged"):
        Tokenizer.load(path)
    with pytest.raises(UserError, match="not found"):
        Tokenizer.load(tmp_path / "missing.json")


# ---------------------------------------------------------------------- raw-list constructor (GGUF shape)


def test_from_vocab_and_merges_with_gguf_token_types():
    tokens = ["<|endoftext|>", "<|im_start|>", "<custom>"] + [bytes_to_unicode()[b] for b in range(256)]
    tokens += ["Ġt", "he", "Ġthe"]
    merges = ["Ġ t", "h e", "Ġt he"]
    types = [3, 3, 4] + [1] * 259
    tok = Tokenizer.from_vocab_and_merges(tokens, merges, pre="gpt-2", bos_id=1, eos_id=0, pad_id=0,
                                          token_types=types)
    assert tok.special_tokens == {"<|endoftext|>": 0, "<|im_start|>": 1, "<custom>": 2}
    assert tok.vocab_size == 262 and (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 0, 0)
    assert tok.encode("<|im_start|> the<custom>", allowed_special="all") == [1, 261, 2]
    assert tok.encode(" the the") == [261, 261]
    assert tok.decode([1, 261]) == "<|im_start|> the"
    with pytest.raises(ValueError, match="<custom>"):
        tok.encode("a <custom>")
    with pytest.raises(ValueError, match="unknown pre-tokenizer 'nope'"):
        Tokenizer.from_vocab_and_merges(tokens, merges, pre="nope")
    with pytest.raises(ValueError, match="missing from the vocabulary"):
        Tokenizer.from_vocab_and_merges(tokens, ["Ġ zz"])
    with pytest.raises(ValueError, match="merge #1 'h' 'e' 'x' names"):
        Tokenizer.from_vocab_and_merges(tokens, ["Ġ t", "h e x"])


@pytest.mark.parametrize("bad", [(97, 257), (257, 97), (97, 300), (-1, 97), (98, -2)])
def test_a_merge_of_a_special_or_unknown_id_names_its_rank(bad):
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab"}
    with pytest.raises(ValueError, match=rf"merge #1 \({bad[0]}, {bad[1]}\) does not join"):
        Tokenizer(vocab, [(97, 98), bad], {"<|endoftext|>": 257})


def test_repeated_bytes_and_merges_keep_the_first():
    vocab = {i: bytes([i]) for i in range(256)} | {256: b"ab", 257: b"ab"}
    tok = Tokenizer(vocab, [(97, 98), (97, 98)])
    assert tok._bytes_to_id[b"ab"] == 256 and tok._pairs[(97, 98)] == (0, 256)
    assert tok.encode("ab") == [256] and tok.decode([257]) == "ab"


# ---------------------------------------------------------------------- pre-tokenizers


def _smollm_by_definition(text: str) -> list[str]:
    """Hugging Face's Sequence[Digits(individual_digits=True), ByteLevel]: cut every digit out on its own,
    then GPT-2's pattern on each piece between digits."""
    import regex

    chunks = []
    for piece in regex.split(r"(\p{N})", text):
        if piece:
            chunks.extend(regex.findall(GPT2_PATTERN, piece))
    return chunks


@SETTINGS
@given(TEXTS)
def test_smollm_single_pattern_equals_its_two_step_definition(text):
    assert get_pre_tokenizer("smollm").split(text) == _smollm_by_definition(text)


@SETTINGS
@given(TEXTS)
def test_pre_tokenizers_cover_the_text(text):
    for name in ("gpt2", "smollm", "llama-bpe"):
        assert "".join(get_pre_tokenizer(name).split(text)) == text


@pytest.mark.parametrize("texts", [
    [token_to_text(bytes([b])) for b in range(256)] + ["Ġthe", ""],  # the whole alphabet, and an empty text
    ["Ġthe", "日本", "a\u0085b"],  # characters outside the alphabet: the one-by-one path
    ["a\ue000b", "Ġx"],  # a text holding the separator of the joined form
    [],
])
def test_many_texts_become_the_bytes_of_each_one(texts):
    assert texts_to_tokens(texts) == [text_to_token(t) for t in texts]


@given(st.lists(st.text(max_size=6), max_size=8))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_many_arbitrary_texts_become_the_bytes_of_each_one(texts):
    assert texts_to_tokens(texts) == [text_to_token(t) for t in texts]
