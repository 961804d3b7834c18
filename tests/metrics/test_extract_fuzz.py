"""Whatever a server returns, the extractor yields a snapshot or ``MetricsError`` — nothing else."""

from __future__ import annotations

from pathlib import Path

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


DATA = Path(__file__).parent / "data"
REAL_PAGES = {p.stem: p.read_bytes() for p in sorted(DATA.glob("*.prom"))}
PAGE_ENGINE = {"sglang": "sglang", "sglang_old": "sglang", "triton": "triton",
               "triton_trtllm": "triton-tensorrt-llm", "trtllm": "trtllm-serve"}


@st.composite
def damaged_pages(draw: st.DrawFn) -> tuple[str, str]:
    """A real engine page cut short, with bytes overwritten, lines repeated or a huge value pasted in,
    decoded the way the poller decodes a response (UTF-8 with replacement)."""
    name = draw(st.sampled_from(sorted(REAL_PAGES)))
    page = bytearray(REAL_PAGES[name])
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(page) - 1))
        op = draw(st.sampled_from(["overwrite", "insert", "delete", "huge"]))
        chunk = draw(st.binary(min_size=1, max_size=8))
        if op == "overwrite":
            page[at:at + len(chunk)] = chunk
        elif op == "insert":
            page[at:at] = chunk
        elif op == "delete":
            del page[at:at + draw(st.integers(1, 200))]
        else:
            page[at:at] = b"9" * 5000 + b'"' + b"x" * 5000
    cut = draw(st.integers(0, len(page)))
    return PAGE_ENGINE.get(name, "vllm"), bytes(page[:cut]).decode("utf-8", errors="replace")


@settings(max_examples=150, deadline=None)
@given(page=damaged_pages())
def test_damaged_real_pages_give_snapshot_or_metrics_error(page: tuple[str, str]) -> None:
    engine, text = page
    extractor = EXTRACTORS[engine]
    try:
        result = extractor.extract(text, 1.0)
    except MetricsError:
        return
    assert isinstance(result, EndpointMetrics)
    assert result.waiting >= 0 and result.running >= 0 and 0 <= result.kv_usage


def test_line_memo_stays_bounded_under_ever_new_lines() -> None:
    """A server printing a new value every scrape must not grow the per-line parse memo without bound."""
    extractor = EngineExtractor(ENGINES["vllm"], memo_size=64)
    base = REAL_PAGES["vllm"].decode()
    for i in range(500):
        extractor.extract(base.replace("vllm:num_requests_waiting{", f"vllm:num_requests_waiting{{x=\"{i}\",", 1), 1.0)
        assert len(extractor._parsed) <= 64
