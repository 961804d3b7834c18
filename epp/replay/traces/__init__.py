"""Request traces: readers for Mooncake JSONL, epp JSONL and Azure CSV, and the compact request model."""

from epp.replay.traces.model import SegmentPrompt, TokenPrompt, Trace, TraceIssue, TraceRequest
from epp.replay.traces.reader import TraceError, read_trace

__all__ = ["SegmentPrompt", "TokenPrompt", "Trace", "TraceError", "TraceIssue", "TraceRequest", "read_trace"]
