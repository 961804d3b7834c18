"""Whatever a server returns, the extractor yields a snapshot or ``MetricsError`` — nothing else."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from epp.datastore import EndpointMetrics
from epp.metrics import ENGINES, EngineExtractor, MetricsError

EXTRACTORS = {name: EngineExtractor(spec) for name, spec in ENGINES.items()}
NAMES = sorted({n for spec in ENGINES.values() for n in spec.family_names})

label_names = st.sampled_from(
    ["model_name", "max_lora", "running_lora_adapters", "waiting_lora_adapters", "block_size", "num_gpu_blocks",
     "page_size", "num_pages", "request_type", "kv_cache_block_type", "le", "__name__", "", "a b", "9x"]
)
label_values = st.text(alphabet=st.sampled_from(list('ab ,0123456789"\\{}=\n\t-+.eNaInf')), max_size=12)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-5, 10**20).map(str),
    st.sampled_from(["NaN", "+Inf", "-Inf", "", "1_0", "0x10", "1e", "--1", "１"]),
    st.text(max_size=6),
)


@st.composite
def sample_lines(draw: st.DrawFn) -> str:
    """Lines that reach the parser: a name we read, then perturbed labels, value and timestamp."""
    name = draw(st.sampled_from(NAMES))
    labels = draw(st.lists(st.tuples(label_names, label_values), max_size=3))
    body = ",".join(f'{k}="{v}"' for k, v in labels)
    opener, closer = draw(st.sampled_from([("{", "}"), ("{", ""), ("", "}"), ("", "")]))
    ts = draw(st.one_of(st.just(""), st.integers(-(10**15), 10**15).map(lambda t: f" {t}"), st.text(max_size=4)))
    sep = draw(st.sampled_from([" ", "\t", "", "  "]))
    return f"{name}{opener}{body}{closer}{sep}{draw(values)}{ts}"


pages = st.one_of(
    st.text(max_size=400),
    st.lists(st.one_of(sample_lines(), st.text(max_size=40)), max_size=12).map("\n".join),
)


@settings(max_examples=400, deadline=None)
@given(engine=st.sampled_from(sorted(EXTRACTORS)), text=pages)
def test_extract_returns_snapshot_or_raises_metrics_error(engine: str, text: str) -> None:
    try:
        result = EXTRACTORS[engine].extract(text, 1.0)
    except MetricsError:
        return
    assert isinstance(result, EndpointMetrics)
    assert result.waiting >= 0 and result.running >= 0 and result.kv_usage >= 0
