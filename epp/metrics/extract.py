"""Prometheus exposition text → ``EndpointMetrics``, for one engine kind.

A vLLM ``/metrics`` page is 10–60 KB, mostly histograms we never read. Parsing it all with
prometheus-client's pure-Python parser costs milliseconds per scrape — at a 50 ms tick over dozens of
endpoints that would steal the event loop from gRPC. So a compiled regular expression first keeps
only the sample lines of the families the engine's spec reads (C speed, comments dropped), and only
those few lines go through prometheus-client's parser, memoised per line. ``bench/metrics_parse.py``
measures it: ~7 ms → ~0.09 ms per 46 KB vLLM page. Parsing stays on the event loop: a worker thread
would add a ~0.2 ms hop and still hold the GIL while parsing.

Consequence worth knowing: a malformed line in a family we do not read is not an error here (the
reference's Go parser would reject the whole page). Malformed lines in families we read are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from epp.datastore.endpoint import EndpointMetrics
from epp.metrics.engines import EngineSpec, Selector

MODEL_LABEL = "model_name"
_NAME_CHAR = r"[A-Za-z0-9_:]"


class MetricsError(ValueError):
    """The page cannot be mapped: unparsable, a required family missing, or a bad value.

    The only exception ``EngineExtractor.extract`` raises for any input text.
    """


class EngineExtractor:
    """Maps one engine kind's exposition text to a snapshot; build once per engine and share it.

    Parsed lines are memoised (bounded): info gauges and idle endpoints repeat the same lines every
    tick, and prometheus-client's parser costs ~20 µs per line (~90 µs for vLLM's cache_config_info).
    """

    __slots__ = ("spec", "_lines", "_parsed", "_memo_size")

    def __init__(self, spec: EngineSpec, memo_size: int = 4096) -> None:
        self.spec = spec
        names = "|".join(re.escape(n) for n in sorted(spec.family_names))
        # A line starting with one of our names, not followed by another name character. Anchoring on
        # a literal "\n" (not ``^`` + MULTILINE) lets the regex engine skip ahead with a fast search
        # for the newline: ~10x faster on a vLLM page (bench/metrics_parse.py).
        self._lines = re.compile(rf"\n((?:{names})(?!{_NAME_CHAR}).*)")
        self._parsed: dict[str, Sample] = {}
        self._memo_size = memo_size

    def keep_lines(self, text: str) -> list[str]:
        """Only the sample lines of families the spec reads, in page order (comments and others dropped)."""
        return self._lines.findall("\n" + text)

    def extract(self, text: str, scraped_at: float) -> EndpointMetrics:
        """The snapshot for ``text``; raises ``MetricsError`` when it cannot be built."""
        samples: dict[str, list[Sample]] = {}
        for line in self.keep_lines(text):
            sample = self._parse_line(line)
            samples.setdefault(sample.name, []).append(sample)
        spec = self.spec
        queue = _required(samples, spec.queue)
        running = _required(samples, spec.running)
        kv = 0.0
        if spec.kv:
            found = _first(samples, spec.kv)
            if found is None:
                raise MetricsError(f"missing KV usage family (looked for {', '.join(s.name for s in spec.kv)})")
            kv = found
        active, waiting, max_lora = _lora(samples.get(spec.lora, ())) if spec.lora else (frozenset(), frozenset(), None)
        block_size, num_blocks = _cache_shape(samples, spec)
        return EndpointMetrics(
            prompt_tokens=_first(samples, spec.prompt_tokens),
            cached_prompt_tokens=_first(samples, spec.cached_tokens),
            scraped_at=scraped_at,
            waiting=int(queue),
            running=int(running),
            kv_usage=kv,
            active_loras=active,
            waiting_loras=waiting,
            max_lora=max_lora,
            block_size=block_size,
            num_gpu_blocks=num_blocks,
            models=_models(samples.values()),
        )

    def _parse_line(self, line: str) -> Sample:
        sample = self._parsed.get(line)
        if sample is None:
            sample = parse_line(line)
            if len(self._parsed) >= self._memo_size:
                self._parsed.clear()
            self._parsed[line] = sample
        return sample


def parse_line(line: str) -> Sample:
    """One sample line via prometheus-client's text parser; its ``ValueError`` becomes ``MetricsError``.

    The parser raises ``ValueError`` for malformed lines and ``OverflowError`` for a timestamp too large
    for a float (an integer of hundreds of digits); the property test in tests/metrics/test_extract_fuzz.py
    keeps checking that nothing else escapes.
    """
    try:
        families = list(text_string_to_metric_families(line))
    except (ValueError, OverflowError) as exc:
        raise MetricsError(f"unparsable sample line {line[:120]!r}: {exc!r}"[:300]) from exc
    if len(families) != 1 or len(families[0].samples) != 1:
        raise MetricsError(f"unparsable sample line {line[:120]!r}")
    return families[0].samples[0]



def family_sample(line: str, name: str) -> Sample | None:
    """``line``'s sample when it is one of metric ``name``'s (``name`` then ``{`` or a space, so a longer
    name that starts with it is another family), else ``None``; ``MetricsError`` when such a line is
    malformed. The extractors of other HTTP sources (DCGM, the multicluster metrics) read one or two
    families of a page line by line with it, without an ``EngineSpec``."""
    if not line.startswith(name) or line[len(name):len(name) + 1] not in ("{", " "):
        return None
    return parse_line(line)

def _finite(name: str, value: float) -> float:
    try:
        number = float(value)  # the parser keeps integer text as int, of any size
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise MetricsError(f"{name}: value {str(value)[:40]!r} is not a finite non-negative number")
    return number


def _newest(series: Iterable[Sample]) -> Sample | None:
    """The series with the newest sample timestamp; without timestamps, the first (as the reference)."""
    best: Sample | None = None
    for sample in series:
        if best is None or (
            sample.timestamp is not None and (best.timestamp is None or float(sample.timestamp) > float(best.timestamp))
        ):
            best = sample
    return best


def _latest(samples: Mapping[str, Sequence[Sample]], selector: Selector) -> float | None:
    """Value of the newest series matching ``selector``; None when no series matches."""
    best = _newest(s for s in samples.get(selector.name, ()) if selector.matches(s.labels))
    return None if best is None else _finite(selector.name, best.value)


def _first(samples: Mapping[str, Sequence[Sample]], selectors: Sequence[Selector]) -> float | None:
    """The value of the first of ``selectors`` that matches a series; None when none does."""
    return next((v for v in (_latest(samples, s) for s in selectors) if v is not None), None)


def _required(samples: Mapping[str, Sequence[Sample]], selector: Selector) -> float:
    value = _latest(samples, selector)
    if value is None:
        labels = ",".join(f'{k}="{v}"' for k, v in selector.labels.items())
        raise MetricsError(f"missing family {selector.name}" + (f"{{{labels}}}" if labels else ""))
    return value


def _int_label(name: str, labels: Mapping[str, str], key: str) -> int | None:
    raw = labels.get(key, "").strip()
    if not raw or raw == "None":  # vLLM writes an unset config value as "None"
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise MetricsError(f"{name}: label {key}={raw!r} is not a non-negative integer")
    return int(raw)


def _adapters(csv: str) -> frozenset[str]:
    return frozenset(a for a in (part.strip() for part in csv.split(",")) if a)


def _lora(series: Sequence[Sample]) -> tuple[frozenset[str], frozenset[str], int | None]:
    """The series with the largest value (vLLM sets it to the series' creation time); absent → no data."""
    best: Sample | None = None
    for sample in series:
        _finite(sample.name, sample.value)
        if best is None or sample.value > best.value:
            best = sample
    if best is None:
        return frozenset(), frozenset(), None
    labels = best.labels
    return (
        _adapters(labels.get("running_lora_adapters", "")),
        _adapters(labels.get("waiting_lora_adapters", "")),
        _int_label(best.name, labels, "max_lora"),
    )


def _cache_shape(samples: Mapping[str, Sequence[Sample]], spec: EngineSpec) -> tuple[int | None, int | None]:
    """Block size and block count: info-gauge labels when that family is present, else plain gauges."""
    info = spec.cache_info
    if info is not None:
        chosen = _newest(samples.get(info.name, ()))
        if chosen is not None:
            return (
                _int_label(info.name, chosen.labels, info.block_size_label),
                _int_label(info.name, chosen.labels, info.num_blocks_label),
            )
    size = _latest(samples, spec.block_size) if spec.block_size else None
    count = _latest(samples, spec.num_blocks) if spec.num_blocks else None
    return (None if size is None else int(size)), (None if count is None else int(count))


def _models(groups: Iterable[Sequence[Sample]]) -> frozenset[str]:
    return frozenset(s.labels[MODEL_LABEL] for group in groups for s in group if s.labels.get(MODEL_LABEL))
