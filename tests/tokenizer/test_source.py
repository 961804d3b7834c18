"""A served model name finds its tokenizer the way the engine finds its model: a folder, an explicit
map, llm-d's discovery folder, or the Hugging Face cache (offline: never a download)."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path

import pytest

from epp.tokenizer.load import SIM
from epp.tokenizer.hf import HFTokenizer
from epp.tokenizer.source import ModelTokenizers, TokenizerNotFound, resolve_model_dir

MODEL_DIR = Path(__file__).parents[1] / "data" / "vllm-0.32-cpu" / "tiny-llama"


@pytest.fixture(autouse=True)
def _no_ambient_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("LOCAL_TOKENIZER_DIR", str(tmp_path / "no-discovery"))


def hub_cache(root: Path, repo_id: str, *, ref: bool = True) -> Path:
    """A Hugging Face hub cache holding ``repo_id``'s tokenizer files, laid out as the hub client does."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(MODEL_DIR, snapshot)
    if ref:
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0123abcd")
    return snapshot


def test_a_folder_name_is_its_own_tokenizer() -> None:
    assert resolve_model_dir(str(MODEL_DIR)) == MODEL_DIR
    assert resolve_model_dir("m", model_map={"m": str(MODEL_DIR / "tokenizer.json")}) == MODEL_DIR


def test_hugging_face_ids_are_found_in_the_cache_hf_home_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snapshot = hub_cache(tmp_path / "hf-home" / "hub", "acme/tiny-llama")
    assert resolve_model_dir("acme/tiny-llama") == snapshot
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    other = hub_cache(tmp_path / "elsewhere", "acme/tiny-llama", ref=False)
    assert resolve_model_dir("acme/tiny-llama") == other
    assert resolve_model_dir("acme/tiny-llama", cache_dir=str(tmp_path / "hf-home" / "hub")) == snapshot


def test_llm_d_discovery_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(MODEL_DIR, tmp_path / "models" / "org" / "tiny")
    monkeypatch.setenv("LOCAL_TOKENIZER_DIR", str(tmp_path / "models"))
    assert resolve_model_dir("org/tiny") == tmp_path / "models" / "org" / "tiny"


def test_offline_a_missing_model_says_where_it_looked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TokenizerNotFound, match="Hugging Face cache.*HF_HUB_OFFLINE"):
        resolve_model_dir("acme/absent", allow_download=True)
    with pytest.raises(TokenizerNotFound, match="looked at folder"):
        resolve_model_dir("not a model id!")


def test_each_model_gets_its_own_and_unknown_ones_the_fallback_once(caplog: pytest.LogCaptureFixture) -> None:
    tokenizers = ModelTokenizers(fallback=SIM)
    with caplog.at_level(logging.INFO):
        assert tokenizers.for_model("sim-model") is SIM
        assert tokenizers.for_model("sim-model") is SIM
    assert len([r for r in caplog.records if "sim-model" in r.getMessage()]) == 1
    tiny = tokenizers.for_model(str(MODEL_DIR))
    assert isinstance(tiny, HFTokenizer) and tokenizers.for_model(str(MODEL_DIR)) is tiny
    pinned = ModelTokenizers(fallback=None, model=str(MODEL_DIR))
    assert isinstance(pinned.for_model("any alias"), HFTokenizer)
    assert ModelTokenizers(fallback=None).for_model("absent") is None


def test_serving_loads_off_the_pick_path() -> None:
    """After ``start_background`` a model's first request does not wait for the file: it gets None
    (matched approximately) until the thread has loaded it."""
    loaded: list[Path] = []
    release = threading.Event()

    def blocked_load(folder: Path) -> HFTokenizer:
        assert release.wait(30), "never released"
        loaded.append(folder)
        return HFTokenizer.from_dir(folder)

    tokenizers = ModelTokenizers(fallback=SIM, load=blocked_load)
    tokenizers.start_background()
    assert tokenizers.for_model(str(MODEL_DIR)) is None  # returned while the load is still blocked
    assert tokenizers.for_model(str(MODEL_DIR)) is None
    assert tokenizers.for_model("unknown-model") is SIM  # not found: known at once, no thread
    release.set()
    deadline = time.monotonic() + 30
    while tokenizers.for_model(str(MODEL_DIR)) is None:
        assert time.monotonic() < deadline, "tokenizer never loaded"
        time.sleep(0.01)
    assert loaded == [MODEL_DIR]


def test_client_chosen_model_names_are_bounded() -> None:
    tokenizers = ModelTokenizers(fallback=SIM, max_models=3)
    for i in range(10):
        assert tokenizers.for_model(f"made-up-{i}") is SIM
    assert len(tokenizers._loaded) == 3
