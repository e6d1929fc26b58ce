"""Chat: render a conversation with the model's chat template, and hold a multi-turn session.

`render_chat` follows Hugging Face's `apply_chat_template`: a sandboxed jinja2 environment with
trim_blocks/lstrip_blocks, the `raise_exception` and `strftime_now` helpers, a `tojson` filter that keeps
non-ASCII text, and the special tokens (bos_token, eos_token) passed to the template.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from functools import lru_cache

from llmscratch.generate import SamplingConfig, check_fits, stream_text
from llmscratch.tokenizer import with_bos
from llmscratch.utils import UserError

# Tokens that end a turn in common chat templates (ChatML, Llama 3, Phi-3, Gemma, Llama 2, GPT-2 style).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>", "<|endoftext|>")
ROLES = ("system", "user", "assistant")


@lru_cache(maxsize=8)
def compile_template(template: str):
    """The jinja2 template object for `template` (sandboxed; cached)."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise UserError(f"the chat template is not valid jinja2 (line {e.lineno}: {e.message})") from None


def render_chat(
    template: str,
    messages: Sequence[Mapping[str, str]],
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
    **extra,
) -> str:
    """The prompt text for `messages` ([{"role": ..., "content": ...}, ...]) under chat `template`."""
    import jinja2

    try:
        return compile_template(template).render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token or "",
            eos_token=eos_token or "",
            **extra,
        )
    except jinja2.exceptions.TemplateError as e:
        raise UserError(f"the chat template refused this conversation: {e}") from None


def end_of_turn_ids(tokenizer) -> list[int]:
    """Ids that end the assistant's turn: the tokenizer's EOS plus known end-of-turn special tokens it has."""
    ids = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    special = getattr(tokenizer, "special_tokens", {}) or {}
    ids += [special[t] for t in END_OF_TURN_TOKENS if t in special and special[t] not in ids]
    return ids


def _token_text(tokenizer, token_id: int | None) -> str | None:
    return None if token_id is None else tokenizer.decode([token_id])


# Wraps each message's content while rendering, so that the rendered text can be cut into template and content
# (a character from Unicode's private use area, which no template writes)
_CONTENT_MARK = "\ue000"


def chat_prompt_ids(tokenizer, template: str, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of `messages` rendered with chat `template`, ending with the assistant's turn opener (what the
    chat session and the server's chat route feed the model).

    Special tokens come from the template only: a message that spells one ("<|im_end|>") gets it as plain text,
    so that no message can end its turn or open another one. Where a template changes the content it renders
    (so the content cannot be told apart from the template), such a message is refused. BOS comes first for
    models that expect it, also when the template does not write it."""
    specials = [t for t in (getattr(tokenizer, "special_tokens", None) or {}) if t]

    def render(msgs) -> str:
        return render_chat(template, msgs, add_generation_prompt=True,
                           bos_token=_token_text(tokenizer, tokenizer.bos_id),
                           eos_token=_token_text(tokenizer, tokenizer.eos_id))

    text = render(messages)
    spelled = [i for i, m in enumerate(messages) if any(t in str(m.get("content", "")) for t in specials)]
    if not spelled:  # the usual case
        return with_bos(tokenizer, tokenizer.encode(text, allowed_special="all"))
    if any(_CONTENT_MARK in str(m.get("content", "")) for m in messages):
        raise UserError(f"messages[{spelled[0]}].content spells a special token of this model's tokenizer, and "
                        "another message holds the character U+E000", params=f"messages[{spelled[0]}].content")
    marked = [{**m, "content": f"{_CONTENT_MARK}{m['content']}{_CONTENT_MARK}"} if i in spelled else m
              for i, m in enumerate(messages)]
    parts = render(marked).split(_CONTENT_MARK)  # template, content, template, ...
    if "".join(parts) != text or len(parts) != 2 * len(spelled) + 1:
        where = f"messages[{spelled[0]}].content"
        raise UserError(f"{where} spells a special token of this model's tokenizer, which this chat template does not "
                        "let it keep as plain text", params=where)
    ids: list[int] = []
    for i, part in enumerate(parts):
        ids += tokenizer.encode(part, allowed_special="all") if i % 2 == 0 else tokenizer.encode_ordinary(part)
    return with_bos(tokenizer, ids)


class ChatSession:
    """A multi-turn conversation with one model: add a user message, stream the reply, repeat.

    The whole conversation is rendered with the chat template each turn. When it no longer fits the context
    (prompt + max_new_tokens), the oldest user/assistant turns are dropped (the system message stays);
    `add_user` returns how many were dropped.
    """

    def __init__(self, model, tokenizer, template: str, sampling: SamplingConfig, system: str | None = None):
        if not template:
            raise UserError("this model has no chat template; give one (template=FILE) or generate without a chat "
                            "(`llmscratch generate`)", params="template")
        self.model, self.tokenizer, self.template = model, tokenizer, template
        stops = end_of_turn_ids(tokenizer)
        self.sampling = dataclasses.replace(sampling, stop_ids=tuple(sampling.stop_ids) + tuple(stops))
        self.sampling.validate()
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def prompt_ids(self, messages: Sequence[Mapping[str, str]] | None = None) -> list[int]:
        """Token ids of the conversation so far, ending with the assistant's turn opener."""
        return chat_prompt_ids(self.tokenizer, self.template, self.messages if messages is None else messages)

    def add_user(self, text: str) -> int:
        """Append a user message; drop the oldest turns until the prompt fits. Returns the number dropped.

        A message that cannot fit even alone is refused (UserError) and the conversation is left as it was.
        """
        before = list(self.messages)
        self.messages.append({"role": "user", "content": text})
        dropped = 0
        ctx, room = self.model.config.context_length, self.sampling.max_new_tokens
        while len(ids := self.prompt_ids()) + room > ctx:
            first = 1 if self.messages[0]["role"] == "system" else 0
            if len(self.messages) - first <= 1:  # only this message left: it cannot fit at all
                self.messages = before
                check_fits(self.model, len(ids), room)
            del self.messages[first : first + 2 if self.messages[first + 1]["role"] == "assistant" else first + 1]
            dropped += 1
        return dropped

    def stream_reply(self) -> Iterator[str]:
        """Generate the assistant's reply to the last user message, yielding text as it comes.

        The reply is added to the conversation when generation ends (also when the caller stops early).
        """
        if not self.messages or self.messages[-1]["role"] != "user":
            raise UserError("add a user message before asking for a reply")
        ids = self.prompt_ids()
        pieces: list[str] = []
        try:
            for piece in stream_text(self.model, self.tokenizer, ids, self.sampling):
                pieces.append(piece)
                yield piece
        finally:
            self.messages.append({"role": "assistant", "content": "".join(pieces).strip()})

    def reply(self, text: str) -> str:
        """Add `text` as the user's message and return the whole reply."""
        self.add_user(text)
        return "".join(self.stream_reply())
