"""What goes to the LLM and what comes back: message normalizing, the request key that the
cache and the sampling seed are derived from, and the strict parse of structured replies
(with the texts of the schema and repair requests).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any, TypeVar

import httpx
from langchain_core.messages import AIMessage, BaseMessage, convert_to_messages, convert_to_openai_messages
from pydantic import BaseModel, ValidationError

from facsynth.agent.config import LLMConfig
from facsynth.errors import LLMError

MessagesLike = Sequence[BaseMessage | dict[str, Any] | tuple[str, str] | str]
T = TypeVar("T", bound=BaseModel)


class ReplyParseError(LLMError):
    """The LLM's reply did not match the requested schema, even after one repair request."""


def to_messages(messages: MessagesLike) -> list[BaseMessage]:
    """Normalize langchain messages, ``{"role", "content"}`` dicts, ``(role, text)`` pairs or strings."""
    if isinstance(messages, str):
        messages = [messages]
    return list(convert_to_messages(list(messages)))


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def request_key(
    cfg: LLMConfig, messages: Sequence[BaseMessage], schema: type[BaseModel] | None = None, variant: int = 0
) -> str:
    """sha256 of everything that determines a reply: model, messages, sampling parameters, schema.

    ``variant`` tells apart deliberate repeats of one prompt (several samples at
    temperature > 0); 0 leaves the key as it would be without it.
    """
    payload: dict[str, Any] = {
        "model": cfg.model,
        "messages": convert_to_openai_messages(list(messages)),
        "temperature": cfg.temperature,
        "max_tokens": cfg.max_tokens,
        "top_p": cfg.top_p,
        "schema": None if schema is None else {"name": schema.__name__, "json_schema": schema.model_json_schema()},
    }
    if variant:
        payload["variant"] = variant
    if cfg.seed:
        payload["seed"] = cfg.seed
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()


_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL)


def parse_reply(schema: type[T], text: str) -> T:
    """Strict parse: one JSON document (optionally in one ```json fence) that validates as ``schema``."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    return schema.model_validate_json(body)


def schema_instruction(schema: type[BaseModel]) -> str:
    return (
        f"Reply with one JSON object and nothing else. It must validate against this JSON schema "
        f"({schema.__name__}):\n{json.dumps(schema.model_json_schema(), separators=(',', ':'))}"
    )


def repair_instruction(error: str) -> str:
    return (
        "That reply is not valid for the requested schema: "
        f"{error}\nReply again with only the corrected JSON object."
    )


def validation_summary(exc: ValidationError) -> str:
    """``field: problem`` for each error, without pydantic's URLs."""
    parts = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err.get("loc", ())) or "reply"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def short_error(exc: BaseException, limit: int = 600) -> str:
    text = str(exc).strip().replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tokens_of(message: AIMessage) -> tuple[int, int]:
    usage = message.usage_metadata
    if usage:
        return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))
    raw = message.response_metadata.get("token_usage") or {}
    return int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0)


def text_of(message: AIMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "".join(part if isinstance(part, str) else str(part.get("text", "")) for part in content)


def message_from_response(response: object) -> AIMessage | None:
    """The reply inside a raw chat-completion HTTP response (langchain attaches it to parse errors)."""
    if not isinstance(response, httpx.Response):
        return None
    try:
        body = response.json()
        content = body["choices"][0]["message"].get("content") or ""
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None
    usage = body.get("usage") or {}
    return AIMessage(content, response_metadata={"token_usage": usage})
