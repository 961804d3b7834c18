"""A served model name → its tokenizer, found the way the engine finds its model.

vLLM serves ``--model X`` under the name ``X`` unless ``--served-model-name`` says otherwise, and X is
a local folder or a Hugging Face id. ``resolve_model_dir`` looks, in order, at:

1. an explicit map (llm-d's ``local.modelTokenizerMap``: model → ``tokenizer.json`` or its folder);
2. the name as a folder (absolute, or relative to epp's working directory);
3. ``<dir>/<name>`` under llm-d's auto-discovery folder (``local.autoDiscoveryDir``, env
   ``LOCAL_TOKENIZER_DIR``, default ``/mnt/models``), including Hugging Face cache layout there;
4. a Hugging Face id in the hub cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``; llm-d's ``hf.tokenizersCacheDir`` overrides), fetched from the hub
   only where downloading is allowed — never with ``HF_HUB_OFFLINE=1``, and only the tokenizer files.

``ModelTokenizers`` keeps one tokenizer per model. Finding the files is a few ``stat`` calls, done on
first sight of a model; loading a ``tokenizer.json`` takes tens to hundreds of milliseconds (a hub
download longer), so once ``start_background()`` was called (``epp serve``) that happens on a thread and
the model's requests are matched approximately until it is done; before that (replay, benches, tests)
loading happens on first use, which keeps those runs deterministic. A model that cannot be found gets
the fallback tokenizer (the simulator's), said once naming where epp looked. Model names come
from clients: at most ``max_models`` are remembered, later unknown names get the fallback.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, cast

from epp.tokenizer.hf import TOKENIZER_FILES, HFTokenizer

if TYPE_CHECKING:
    from epp.tokenizer.protocol import Tokenizer

log = logging.getLogger(__name__)

DEFAULT_DISCOVERY_DIR = "/mnt/models"
_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class TokenizerNotFound(ValueError):
    """No tokenizer files for a model name; the message says where epp looked."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hf_offline() -> bool:
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (not at import time)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _folder_of(path: Path) -> Path | None:
    """The model folder ``path`` names (a folder holding tokenizer.json, or the file itself)."""
    if path.is_file() and path.name == "tokenizer.json":
        return path.parent
    if (path / "tokenizer.json").is_file():
        return path
    return None


def _from_hub_cache(repo_id: str, cache_dir: Path) -> Path | None:
    """The cached snapshot of ``repo_id`` (revision ``main``) holding tokenizer.json, if any."""
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    ref = repo / "refs" / "main"
    snapshots = repo / "snapshots"
    if ref.is_file():
        folder = _folder_of(snapshots / ref.read_text().strip())
        if folder is not None:
            return folder
    if snapshots.is_dir():  # no ref (copied caches): the one snapshot that has the files
        for snapshot in sorted(snapshots.iterdir()):
            folder = _folder_of(snapshot)
            if folder is not None:
                return folder
    return None


def resolve_model_dir(
    model: str,
    *,
    model_map: Mapping[str, str] | None = None,
    discovery_dir: str | None = None,
    cache_dir: str | None = None,
    allow_download: bool = False,
    token: str | None = None,
) -> Path:
    """The folder with ``model``'s tokenizer files (see the module docstring for the order).
    Raises ``TokenizerNotFound`` saying where it looked."""
    looked: list[str] = []
    if model_map and model in model_map:
        folder = _folder_of(Path(model_map[model]).expanduser())
        if folder is not None:
            return folder
        looked.append(f"modelTokenizerMap entry {model_map[model]!r} (no tokenizer.json)")
    folder = _folder_of(Path(model).expanduser())
    if folder is not None:
        return folder
    looked.append(f"folder {os.path.abspath(model)!r}")
    discovery = discovery_dir or os.environ.get("LOCAL_TOKENIZER_DIR") or DEFAULT_DISCOVERY_DIR
    if Path(discovery).is_dir() and not os.path.isabs(model):
        folder = _folder_of(Path(discovery) / model)
        if folder is not None:
            return folder
        if _HF_ID.match(model):
            folder = _from_hub_cache(model, Path(discovery))
            if folder is not None:
                return folder
        looked.append(f"discovery folder {discovery!r}")
    if not _HF_ID.match(model):
        raise TokenizerNotFound(f"no tokenizer for model {model!r}: looked at {', '.join(looked)}")
    cache = Path(cache_dir).expanduser() if cache_dir else hf_cache_dir()
    folder = _from_hub_cache(model, cache)
    if folder is not None:
        return folder
    looked.append(f"Hugging Face cache {str(cache)!r}")
    if allow_download and not hf_offline():
        return _download(model, cache, token)
    why = "HF_HUB_OFFLINE is set" if hf_offline() else "downloading is not allowed here"
    raise TokenizerNotFound(f"no tokenizer for model {model!r}: looked at {', '.join(looked)}; {why}")


def _download(repo_id: str, cache: Path, token: str | None) -> Path:
    """Fetch only the tokenizer files of ``repo_id`` into the hub cache (the engine fetched the model
    the same way)."""
    from huggingface_hub import snapshot_download  # a dependency of tokenizers

    try:
        path = snapshot_download(repo_id, allow_patterns=list(TOKENIZER_FILES), cache_dir=str(cache),
                                 token=token or os.environ.get("HF_TOKEN") or None)  # fmt: skip
    except Exception as err:  # noqa: BLE001 - hub errors come in many types; the reason is what matters
        raise TokenizerNotFound(f"no tokenizer for model {repo_id!r}: download failed: {err}") from None
    folder = _folder_of(Path(path))
    if folder is None:
        raise TokenizerNotFound(f"model {repo_id!r} on the Hugging Face hub has no tokenizer.json")
    return folder


def load_model_tokenizer(model: str) -> HFTokenizer:
    """``model``'s tokenizer from local files or the offline cache (never downloads)."""
    return HFTokenizer.from_dir(resolve_model_dir(model))


_LOADING = object()  # a load is running on a thread
_MISSING = object()  # not found and no fallback


class ModelTokenizers:
    """Per served model, its own tokenizer (``TokenizerSource``); see the module docstring.

    ``model`` pins one model's tokenizer for every request (llm-d's ``modelName``); ``resolve`` finds
    a model's folder (``resolve_model_dir`` with the configured map and folders)."""

    def __init__(
        self,
        *,
        fallback: Tokenizer | None,
        model: str | None = None,
        resolve: Callable[..., Path] = resolve_model_dir,
        load: Callable[[Path], Tokenizer] = HFTokenizer.from_dir,
        allow_download: bool = False,
        max_models: int = 64,
    ) -> None:
        self.fallback = fallback
        self.max_models = max_models
        self.model = model
        self._resolve = resolve
        self._load = load
        self._allow_download = allow_download
        self._background = False
        self._loaded: dict[str, object] = {}  # model → tokenizer, the fallback, _LOADING or _MISSING
        self._lock = threading.Lock()

    def start_background(self) -> None:
        """From now on load on a thread (the pick path never waits for a file or the hub); a pinned
        model starts loading now."""
        self._background = True
        if self.model is not None:
            self.for_model(self.model)

    def for_model(self, model: str) -> Tokenizer | None:
        name = self.model or model
        tokenizer = self._loaded.get(name)
        if tokenizer is _LOADING or tokenizer is _MISSING:
            return None
        if tokenizer is not None:
            return cast("Tokenizer", tokenizer)
        if len(self._loaded) >= self.max_models:  # client-chosen names: do not remember more
            return self.fallback
        if not self._background:
            found = self._loaded[name] = self._find(name)
            return None if found is _MISSING else cast("Tokenizer", found)
        try:
            folder: Path | None = self._resolve(name, allow_download=False)
        except TokenizerNotFound as err:
            if not (self._allow_download and not hf_offline() and _HF_ID.match(name)):
                found = self._loaded[name] = self._missing(name, err)
                return None if found is _MISSING else cast("Tokenizer", found)
            folder = None  # fetch it from the hub, on the thread
        with self._lock:
            if name in self._loaded:
                return None
            self._loaded[name] = _LOADING
        threading.Thread(target=self._load_in_background, args=(name, folder), name=f"tokenizer:{name}", daemon=True).start()
        return None

    def _load_in_background(self, name: str, folder: Path | None) -> None:
        self._loaded[name] = self._find(name, folder)

    def _find(self, name: str, folder: Path | None = None) -> object:
        try:
            if folder is None:
                folder = self._resolve(name, allow_download=self._background and self._allow_download)
            tokenizer = self._load(folder)
        except ValueError as err:
            return self._missing(name, err)
        log.info("tokenizer for model %s loaded from %s", name, getattr(tokenizer, "name", folder))
        return tokenizer

    def _missing(self, name: str, err: ValueError) -> object:
        """The fallback or ``_MISSING``, said once per model (models are bounded by ``max_models``): a
        warning when the model's requests lose the precise view; only a note when they get the
        simulator's tokenizer, since with ``epp sim`` that is right and with a real engine the key
        agreement check warns as soon as the engine's blocks show it is wrong."""
        (log.info if self.fallback is not None else log.warning)(
            "%s; %s. Make the model's tokenizer files reachable (a folder, LOCAL_TOKENIZER_DIR or the"
            " Hugging Face cache) or set the precise-prefix-cache-producer's `tokenizer`.",
            err,
            "its requests are tokenized as `epp sim` does, which only that simulator agrees with (a real"
            " engine's feed stays unverified and its requests are matched in the approximate index)"
            if self.fallback is not None
            else "its requests are matched in the approximate index",
        )  # fmt: skip
        return _MISSING if self.fallback is None else self.fallback
