"""Fetch the public request traces that `epp replay`, bench/replay_all.py, bench/sim.py and bench/peers.py
read into ``traces/`` (ignored by git), each checked against its published SHA-256.

    python bench/fetch_traces.py                   # download from GitHub (about 4 MB, ~25 MB for the cut)
    python bench/fetch_traces.py --from DIR        # copy from a local mirror holding the same files
    python bench/fetch_traces.py --only azure_llm_2023_conv.csv

Sources are pinned to upstream commits (docs/replay.md, "Public traces"); the Mooncake conversation trace
is cut to its first 30 minutes (timestamps below 1,800,000 ms, lines unmodified), as bench/replay.md used it.
Nothing else in the repository downloads: the tests read the excerpts in tests/replay/data/.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
TRACES_DIR = REPO / "traces"
MOONCAKE = ("https://raw.githubusercontent.com/kvcache-ai/Mooncake/3cca71daccf2a7afb8fe3f0295358f70e3a69fdb/"
            "FAST25-release/traces/")
AZURE = "https://raw.githubusercontent.com/Azure/AzurePublicDataset/790921015d50dd6aae7f7e47f39ba0e235ad6b08/data/"
THIRTY_MINUTES_MS = 1_800_000


@dataclass(frozen=True, slots=True)
class PublicTrace:
    name: str
    url: str
    sha256: str
    cut_before_ms: int | None = None  # keep only Mooncake lines with an earlier timestamp


TRACES = (
    PublicTrace("mooncake_fast25_synthetic_trace.jsonl", MOONCAKE + "synthetic_trace.jsonl",
                "bd070915a98fc0ed264d7cfef2ce746002eb3076a695ec31ba2674c0111ec131"),
    PublicTrace("mooncake_fast25_conversation_first30min.jsonl", MOONCAKE + "conversation_trace.jsonl",
                "0b278e6a285958f6f087394ad02026d734591c67f44cccecb0e0f9a59d509b98", THIRTY_MINUTES_MS),
    PublicTrace("azure_llm_2023_code.csv", AZURE + "AzureLLMInferenceTrace_code.csv",
                "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6"),
    PublicTrace("azure_llm_2023_conv.csv", AZURE + "AzureLLMInferenceTrace_conv.csv",
                "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8"),
)


class FetchError(Exception):
    """A trace could not be fetched or does not match its checksum; the message says which and why."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cut(lines: Iterable[bytes], before_ms: int) -> Iterable[bytes]:
    """The Mooncake lines whose ``timestamp`` is below ``before_ms``, unmodified."""
    for line in lines:
        if line.strip() and orjson.loads(line)["timestamp"] < before_ms:
            yield line


def fetch(trace: PublicTrace, dest: Path, mirror: Path | None) -> str:
    """Place ``trace`` in ``dest`` (already there and intact: left alone); returns what was done."""
    target = dest / trace.name
    if target.exists() and sha256(target) == trace.sha256:
        return "already there"
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        raw = Path(tmp) / "raw"
        if mirror is not None:
            source = mirror / trace.name
            if not source.exists():
                raise FetchError(f"{trace.name}: not in {mirror}")
            shutil.copyfile(source, raw)
        else:
            try:
                with urllib.request.urlopen(trace.url, timeout=60) as reply, raw.open("wb") as out:  # noqa: S310
                    shutil.copyfileobj(reply, out)
            except OSError as exc:
                raise FetchError(f"{trace.name}: cannot download {trace.url}: {exc}") from None
        if trace.cut_before_ms is not None and sha256(raw) != trace.sha256:  # a mirror may hold the cut already
            made = Path(tmp) / "cut"
            with raw.open("rb") as src, made.open("wb") as out:
                out.writelines(cut(src, trace.cut_before_ms))
            raw = made
        got = sha256(raw)
        if got != trace.sha256:
            raise FetchError(f"{trace.name}: SHA-256 {got} is not the published {trace.sha256}; not kept")
        raw.replace(target)
    return "copied" if mirror is not None else "downloaded"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=TRACES_DIR, help="where the traces go (default: traces/)")
    parser.add_argument("--from", dest="mirror", type=Path, default=None, metavar="DIR",
                        help="copy from this directory instead of downloading (same file names)")
    parser.add_argument("--only", action="append", choices=[t.name for t in TRACES], help="fetch only this trace")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    failed = False
    for trace in TRACES:
        if args.only and trace.name not in args.only:
            continue
        try:
            print(f"{trace.name}: {fetch(trace, args.dest, args.mirror)}")
        except FetchError as exc:
            print(f"fetch_traces: {exc}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def require(path: Path) -> Path:
    """``path`` if it exists, else exit naming the command that fetches it (for the bench scripts)."""
    if not path.exists():
        sys.exit(f"{path} is missing: fetch the public traces with `python bench/fetch_traces.py` (docs/replay.md)")
    return path


if __name__ == "__main__":
    sys.exit(main())
