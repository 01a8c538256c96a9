"""Deterministic completion bodies shaped like the real ones: choices, tool calls, logprobs, usage.

Two dialects:

- ``legacy``: what the simulator always served (vllm-proxy passthrough of vLLM's OpenAI objects),
  byte-identical to before when the request asks for nothing special.
- ``near``: NEAR's model nodes (inference-proxy in front of SGLang), as in the real stream of
  ``/work/shared/samples/near/direct_stream_exchange.json``: every delta carries
  ``reasoning_content`` (``null`` unless the model thinks), choices carry ``matched_stop``, the
  last chunk before ``[DONE]`` carries usage with ``reasoning_tokens`` and
  ``prompt_tokens_details`` even when the client did not ask for it, ids are 32 hex without a
  prefix, and bodies are compact JSON with keys sorted (spec 0.2).

What the request asks for decides the answer: ``n`` choices (bounded), ``tools`` give one tool
call to the first function named, ``logprobs``/``top_logprobs`` give per-token log probabilities,
``max_tokens`` cuts the text, and (NEAR) thinking turned on by ``reasoning_effort`` or
``chat_template_kwargs.enable_thinking`` gives ``reasoning_content`` before the answer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Literal

Dialect = Literal["legacy", "near"]

# More choices than this is refused: a test never needs it and it bounds the work of a request.
MAX_CHOICES = 8
PROMPT_TOKENS = 12
# SGLang reports the id of the stop token it matched (the real sample: 248046).
NEAR_MATCHED_STOP = 248046

_WORDS = ("Confidential", " inference", " runs", " inside", " an", " attested", " enclave,",
          " and", " every", " answer", " is", " signed", " by", " its", " key.")
_THOUGHTS = ("The", " user", " asks", " a", " question;", " answer", " briefly.")


def completion_tokens(max_tokens: int | None) -> list[str]:
    """Deterministic tokens: the same request always gets the same text (``max_tokens`` cuts it).

    Raises:
        Nothing.
    """
    count = len(_WORDS) if max_tokens is None else max(1, min(max_tokens, len(_WORDS)))
    return list(_WORDS[:count])


@dataclass(frozen=True, slots=True)
class Plan:
    """What one request asked for, decided once for the body or the stream."""

    kind: Literal["chat", "text"]
    choices: int
    tokens: tuple[str, ...]
    thoughts: tuple[str, ...]
    tool: str | None
    logprobs: bool
    top_logprobs: int

    @property
    def finish_reason(self) -> str:
        """``tool_calls`` when a tool is called, else ``stop``."""
        return "tool_calls" if self.tool else "stop"

    def usage(self, dialect: Dialect) -> dict[str, Any]:
        """Token counts of the whole answer."""
        completion = self.choices * (len(self.tokens) + len(self.thoughts))
        usage: dict[str, Any] = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
                                 "total_tokens": PROMPT_TOKENS + completion}
        if dialect == "near":
            usage["prompt_tokens_details"] = None
            usage["reasoning_tokens"] = self.choices * len(self.thoughts)
        return usage


def plan_for(payload: dict[str, Any], kind: Literal["chat", "text"], dialect: Dialect) -> Plan:
    """Read what the request asks for.

    Raises:
        ValueError: ``n`` outside 1..MAX_CHOICES, or ``tools`` not a list of functions.
    """
    n = payload.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES:
        raise ValueError(f"n must be an integer from 1 to {MAX_CHOICES}")
    max_tokens = payload.get("max_tokens")
    tokens = completion_tokens(max_tokens if isinstance(max_tokens, int) else None)
    tool = None
    tools = payload.get("tools")
    if kind == "chat" and tools:
        try:
            tool = str(tools[0]["function"]["name"])
        except (TypeError, KeyError, IndexError):
            raise ValueError("tools must be a list of {type: function, function: {name}}") from None
    thinking = dialect == "near" and kind == "chat" and (
        payload.get("reasoning_effort") not in (None, "none")
        or (payload.get("chat_template_kwargs") or {}).get("enable_thinking") is True)
    logprobs = payload.get("logprobs")
    top = payload.get("top_logprobs") if kind == "chat" else logprobs
    return Plan(kind=kind, choices=n, tokens=tuple(tokens),
                thoughts=_THOUGHTS if thinking else (), tool=tool,
                logprobs=bool(logprobs), top_logprobs=top if isinstance(top, int) else 0)


def _logprob(index: int) -> float:
    # A fixed, plausible value per position: deterministic and below zero.
    return -round(0.01 + 0.37 * math.log1p(index), 6)


def _token_logprob(token: str, index: int, top: int) -> dict[str, Any]:
    return {"token": token, "logprob": _logprob(index), "bytes": list(token.encode()),
            "top_logprobs": [{"token": token, "logprob": _logprob(index),
                              "bytes": list(token.encode())}][:top]}


def _tool_call(plan: Plan, choice: int) -> dict[str, Any]:
    return {"id": f"call_{choice:02d}simulated", "type": "function",
            "function": {"name": plan.tool, "arguments": json.dumps({"query": "attested"})}}


def _text_logprobs(plan: Plan) -> dict[str, Any]:
    offsets, position = [], 0
    for token in plan.tokens:
        offsets.append(position)
        position += len(token)
    return {"tokens": list(plan.tokens), "token_logprobs": [_logprob(i) for i in range(len(plan.tokens))],
            "top_logprobs": [{t: _logprob(i)} for i, t in enumerate(plan.tokens)] if plan.top_logprobs else None,
            "text_offset": offsets}


def completion_object(plan: Plan, dialect: Dialect, model: str, chat_id: str,
                      created: int) -> dict[str, Any]:
    """The non-streaming body as an object (serialise it per dialect with :func:`serialise`).

    Raises:
        Nothing.
    """
    text = "".join(plan.tokens)
    choices: list[dict[str, Any]] = []
    for index in range(plan.choices):
        if plan.kind == "chat":
            message: dict[str, Any] = {"role": "assistant", "content": None if plan.tool else text}
            if plan.tool:
                message["tool_calls"] = [_tool_call(plan, index)]
            if dialect == "near":
                message["reasoning_content"] = "".join(plan.thoughts) or None
            choice: dict[str, Any] = {"index": index, "message": message, "logprobs": None,
                                      "finish_reason": plan.finish_reason}
            if plan.logprobs and not plan.tool:
                choice["logprobs"] = {"content": [_token_logprob(t, i, plan.top_logprobs)
                                                  for i, t in enumerate(plan.tokens)]}
        else:
            choice = {"index": index, "text": text,
                      "logprobs": _text_logprobs(plan) if plan.logprobs else None,
                      "finish_reason": plan.finish_reason}
        if dialect == "near":
            choice["matched_stop"] = None if plan.tool else NEAR_MATCHED_STOP
        choices.append(choice)
    return {"id": chat_id, "object": "chat.completion" if plan.kind == "chat" else "text_completion",
            "created": created, "model": model, "choices": choices, "usage": plan.usage(dialect)}


def stream_chunks(plan: Plan, dialect: Dialect, model: str, chat_id: str, created: int, *,
                  include_usage: bool, continuous_usage: bool = False) -> list[dict[str, Any]]:
    """Every chunk of the stream, in order (without ``[DONE]``).

    Raises:
        Nothing.
    """
    obj = "chat.completion.chunk" if plan.kind == "chat" else "text_completion"
    near = dialect == "near"
    chunks: list[dict[str, Any]] = []
    emitted = 0

    def chunk(index: int, delta: dict[str, Any] | None, text: str | None,
              finish: str | None, logprobs: Any = None) -> None:
        nonlocal emitted
        if plan.kind == "chat":
            if near:
                delta = {"reasoning_content": None, **(delta or {})}
            choice: dict[str, Any] = {"index": index, "delta": delta or {}, "logprobs": logprobs,
                                      "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": logprobs,
                      "finish_reason": finish}
        if near:
            choice["matched_stop"] = (NEAR_MATCHED_STOP if finish == "stop" else None)
        body: dict[str, Any] = {"id": chat_id, "object": obj, "created": created, "model": model,
                                "choices": [choice]}
        if continuous_usage:
            body["usage"] = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": emitted,
                             "total_tokens": PROMPT_TOKENS + emitted}
        chunks.append(body)

    for index in range(plan.choices):
        if plan.kind == "chat":
            chunk(index, {"role": "assistant", "content": ""}, None, None)
            for thought in plan.thoughts:
                emitted += 1
                chunk(index, {"content": None, "reasoning_content": thought}, None, None)
            if plan.tool:
                emitted += len(plan.tokens)
                chunk(index, {"tool_calls": [{"index": 0, **_tool_call(plan, index)}]}, None, None)
            else:
                for position, token in enumerate(plan.tokens):
                    emitted += 1
                    logprobs = ({"content": [_token_logprob(token, position, plan.top_logprobs)]}
                                if plan.logprobs else None)
                    chunk(index, {"content": token}, None, None, logprobs)
            chunk(index, {}, None, plan.finish_reason)
        else:
            for token in plan.tokens:
                emitted += 1
                chunk(index, None, token, None)
            chunk(index, None, None, plan.finish_reason)
    if include_usage or near:
        # NEAR's nodes always end with a usage chunk (the real sample asked for none).
        chunks.append({"id": chat_id, "object": obj, "created": created, "model": model,
                       "choices": [], "usage": plan.usage(dialect)})
    return chunks


def serialise(obj: dict[str, Any], dialect: Dialect) -> bytes:
    """Body bytes: NEAR's nodes write compact JSON with sorted keys (spec 0.2); the legacy
    simulator wrote Python's default form, kept so older tests see the same bytes.

    Raises:
        Nothing.
    """
    if dialect == "near":
        return json.dumps(obj, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()
    return json.dumps(obj).encode()
