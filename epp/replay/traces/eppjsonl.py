"""epp's own trace format: JSON Lines, one request per line.

```json
{"timestamp": 0.25, "model": "llama", "prompt": "You are ...", "output_length": 128}
{"timestamp": 0.40, "messages": [{"role": "user", "content": "hi"}], "output_length": 64, "session": "u1"}
{"timestamp": 0.41, "prompt_token_ids": [128000, 2028, 374], "output_length": 16, "priority": 1}
```

- ``timestamp`` (required): arrival in **seconds** from the trace start (number ≥ 0).
- exactly one prompt field: ``prompt`` (completion text), ``messages`` (OpenAI chat messages, rendered
  with the engine simulator's chat template) or ``prompt_token_ids`` (list of uint32 token ids).
- ``output_length`` (required): tokens to generate (integer ≥ 1).
- ``model``, ``session`` (strings), ``priority`` (integer, default 0): optional, passed to the scheduler.

Text is tokenized as the engine simulator does (one token id per 4 UTF-8 bytes), so equal leading text
gives equal leading tokens, and offline replay sees the same token ids a live ``epp sim`` would.
"""

from __future__ import annotations

from typing import Any

from epp._util.byte_tokenizer import encode, render_chat
from epp.replay.traces.model import TokenPrompt, TraceRequest
from epp.replay.traces.tokens import UINT32_LIMIT

PROMPT_FIELDS = ("prompt", "messages", "prompt_token_ids")


def looks_like(obj: dict[str, Any]) -> bool:
    return any(k in obj for k in PROMPT_FIELDS)


def _prompt(obj: dict[str, Any]) -> TokenPrompt:
    given = [k for k in PROMPT_FIELDS if k in obj]
    if len(given) != 1:
        raise ValueError(f"need exactly one of {', '.join(PROMPT_FIELDS)}; got {given or 'none'}")
    (key,) = given
    value = obj[key]
    if key == "prompt":
        if not isinstance(value, str):
            raise ValueError("'prompt' must be a string (use 'prompt_token_ids' for token ids)")
        tokens = tuple(encode(value))
    elif key == "messages":
        if not isinstance(value, list) or not value:
            raise ValueError("'messages' must be a non-empty list of message objects")
        tokens = tuple(encode(render_chat(value)))
    else:
        if not isinstance(value, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < UINT32_LIMIT for t in value
        ):
            raise ValueError("'prompt_token_ids' must be a list of uint32 integers")
        tokens = tuple(value)
    if not tokens:
        raise ValueError(f"{key!r} is empty")
    return TokenPrompt(tokens)


def _optional_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key!r} must be a string, got {value!r}")
    return value


def parse(obj: dict[str, Any]) -> TraceRequest:
    """One line's request (``arrival`` = its raw timestamp); ValueError says what is wrong."""
    ts = obj.get("timestamp")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or ts < 0:
        raise ValueError(f"'timestamp' must be a non-negative number of seconds, got {ts!r}")
    output = obj.get("output_length")
    if not isinstance(output, int) or isinstance(output, bool) or output < 1:
        raise ValueError(f"'output_length' must be an integer ≥ 1, got {output!r}")
    priority = obj.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ValueError(f"'priority' must be an integer, got {priority!r}")
    return TraceRequest(
        float(ts), _prompt(obj), output, _optional_str(obj, "model"), _optional_str(obj, "session"), priority
    )
