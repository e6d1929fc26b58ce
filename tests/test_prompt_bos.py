"""BOS for models that expect it (Gemma: `add_bos`): every path that turns a raw text into prompt ids puts exactly
one BOS first (server completions, classification data and prediction); chat templates render their own."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import torch
from conftest import ByteTokenizer
from serve_helpers import byte_tokenizer, running_server

from llmscratch.chat import chat_prompt_ids
from llmscratch.data.classification import ClassificationData, ClassificationDataset
from llmscratch.generate import SamplingConfig, generate_text
from llmscratch.model import build_model, get_config
from llmscratch.serve.app import ServerState, prepare
from llmscratch.serve.config import ServeConfig
from llmscratch.serve.protocol import parse_chat, parse_completion, parse_hf
from llmscratch.train.tasks.classify import predict
from llmscratch.weights import LoadedModel

BOS_TEMPLATE = (  # Gemma's shape: the template writes the BOS itself
    "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>' }}{% endif %}"
)


def bos_byte_tokenizer(add_bos: bool = True):
    """The server tests' byte tokenizer with <|endoftext|> (256) as a BOS the model expects."""
    tok = byte_tokenizer()
    tok.bos_id, tok.add_bos = 256, add_bos
    return tok


class BosBytes(ByteTokenizer):
    bos_id = 256
    add_bos = True


def server_state(tok, template=None) -> ServerState:
    loaded = SimpleNamespace(tokenizer=tok, model=SimpleNamespace(config=SimpleNamespace(context_length=256)))
    return ServerState(ServeConfig(model="test"), loaded=loaded, engine=SimpleNamespace(max_len=256),
                       template=template)


def test_server_text_prompts_get_one_bos():
    tok = bos_byte_tokenizer()
    state = server_state(tok)
    job = parse_completion({"prompt": ["Hi", "<|endoftext|>Yo"], "max_tokens": 3}, 4, 100, 259)
    ids, _, _ = prepare(state, job)
    assert ids == [[256, *b"Hi"], [256, *b"Yo"]]  # never twice, even when the text starts with it
    ids, _, _ = prepare(state, parse_hf({"inputs": "Hi", "parameters": {"max_new_tokens": 3}}, 100))
    assert ids == [[256, *b"Hi"]]
    ids, _, _ = prepare(state, parse_completion({"prompt": [72, 105], "max_tokens": 3}, 4, 100, 259))
    assert ids == [[72, 105]]  # token ids are taken as given
    ids, _, _ = prepare(server_state(bos_byte_tokenizer(add_bos=False)), job)
    assert ids == [list(b"Hi"), [256, *b"Yo"]]  # models without add_bos: unchanged


def tiny_gemma():
    """gemma3-tiny over the byte tokenizer's 259 ids, with varied greedy tokens (as conftest's varied_tiny_model)."""
    torch.manual_seed(0)
    model = build_model(get_config("gemma3-tiny", vocab_size=259)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "tok_emb.weight":
                p.normal_(0.0, 0.02)
            elif p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


def test_served_gemma_completion_is_what_generate_text_gives():
    model, tok = tiny_gemma(), bos_byte_tokenizer()
    want = generate_text(model, tok, "Hello", SamplingConfig(max_new_tokens=8))[0]  # encode_prompt: BOS first
    with running_server(LoadedModel(model, tok, "tiny-gemma", BOS_TEMPLATE, "test")) as (url, _):
        r = httpx.post(url + "/v1/completions", json={"prompt": "Hello", "max_tokens": 8, "temperature": 0},
                       timeout=60).json()
    assert r["choices"][0]["text"] == want and r["usage"]["prompt_tokens"] == 1 + len("Hello")


def test_chat_prompts_have_one_bos_from_the_template():
    tok = bos_byte_tokenizer()
    messages = [{"role": "user", "content": "Hi"}]
    want = [256, 257, *b"Hi", 258, 257]
    assert chat_prompt_ids(tok, BOS_TEMPLATE, messages) == want
    ids, _, _ = prepare(server_state(tok, BOS_TEMPLATE), parse_chat({"messages": messages}, 4, 100))
    assert ids == [want]


def test_classification_texts_get_one_bos():
    data = ClassificationData(["ab", "cde"], [0, 1], ["x", "y"])
    ds = ClassificationDataset(data, BosBytes(), max_length=2)
    assert [ds[i][0].tolist() for i in range(2)] == [[256, 97], [256, 99]]
    assert ClassificationDataset(data, ByteTokenizer()).encoded == [[97, 98], [99, 100, 101]]


class Recorder(torch.nn.Module):
    """A 'classifier' that records the ids it sees and answers class logits of zero."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def forward(self, ids):
        self.seen += ids.tolist()
        return torch.zeros(*ids.shape, 2)  # (B, T, num_classes)


def test_prediction_texts_get_one_bos():
    model = Recorder()
    out = predict(model, BosBytes(), ["ab"], ["x", "y"], max_length=8, pad_id=0)
    assert model.seen == [[256, 97, 98]] and out[0].probabilities == {"x": 0.5, "y": 0.5}
