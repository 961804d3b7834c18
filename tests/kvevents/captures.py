"""Captured vLLM 0.32 KV-event messages (``tests/kvevents/data``) as the ZMQ frames the engine sent.

The captures are JSON; ``frames`` re-encodes one with msgpack exactly as vLLM's msgspec encoder does
(events as ``type``-tagged maps, ``0x…`` hex hashes back to 32-byte ``bin``), or, with
``encoding="array"``, as the tagged arrays older vLLM and SGLang sent (fields in declaration order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import msgpack

from epp.kvevents.decode import REMOVED_FIELDS, STORED_FIELDS

DATA = Path(__file__).parent / "data"
_ORDER = {"BlockStored": STORED_FIELDS, "BlockRemoved": REMOVED_FIELDS, "AllBlocksCleared": ()}


def messages(name: str) -> list[dict[str, Any]]:
    """The messages of ``data/<name>.jsonl``, in order."""
    with (DATA / f"{name}.jsonl").open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _wire(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("0x") and len(value) == 66:
        return bytes.fromhex(value[2:])
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


def _event(event: dict[str, Any], encoding: Literal["map", "array"]) -> Any:
    wire = {k: _wire(v) for k, v in event.items()}
    if encoding == "map":
        return wire
    fields = _ORDER[event["type"]]
    values = [wire.get(f) for f in fields]
    while values and values[-1] is None:  # msgspec omits trailing defaults
        values.pop()
    return [event["type"], *values]


def frames(message: dict[str, Any], encoding: Literal["map", "array"] = "map") -> list[bytes]:
    """``[topic, 8-byte seq, msgpack payload]`` of one captured message."""
    ts, events, rank = message["payload"]
    payload = msgpack.packb([ts, [_event(e, encoding) for e in events], rank], use_bin_type=True)
    return [message.get("topic", "").encode(), int(message["seq"]).to_bytes(8, "big"), payload]
