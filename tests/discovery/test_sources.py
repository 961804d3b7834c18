"""Choosing ``epp serve``'s one endpoint source from flags and the config's ``dataLayer.discovery``."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from epp.cli import build_parser
from epp.config import EndpointPickerConfig, parse_config_text
from epp.datastore import Datastore
from epp.discovery.sources import SourceError, SourceFlags, select_source
from epp.serve_config import ServeConfig

HEADER = "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\n"
ENDPOINTS = "endpoints:\n- {name: vllm-0, address: 10.0.0.1, port: '8000'}\n- {name: vllm-1, address: 10.0.0.2, port: '8000'}\n"


def file_config(path: Path, plugin_type: str = "file-discovery", watch: bool = True) -> EndpointPickerConfig:
    return parse_config_text(
        f"{HEADER}plugins:\n- {{name: files, type: {plugin_type}, parameters: {{path: '{path}', watchFile: {str(watch).lower()}}}}}\n"
        "- {type: max-score-picker}\ndataLayer:\n  discovery: {pluginRef: files}\n"
    )


def flags(*argv: str) -> SourceFlags:
    """The discovery section of ``epp serve``'s configuration for these flags."""
    return ServeConfig.from_args(build_parser().parse_args(["serve", *argv])).discovery


async def test_config_file_discovery_fills_the_datastore(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text(ENDPOINTS)
    datastore = Datastore()
    source = select_source(flags(), file_config(path), datastore, CollectorRegistry())
    assert source.name == "file" and source.files is not None and source.files.reload
    assert not source.ready()
    async with source.running:
        assert source.ready()
        assert sorted(s.name for s in datastore.endpoints()) == ["vllm-0", "vllm-1"]
        path.write_text(ENDPOINTS.split("- {name: vllm-1")[0])
        assert source.files.check()  # one watch step, no waiting
        assert [s.name for s in datastore.endpoints()] == ["vllm-0"]


async def test_endpoints_file_flag(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text(ENDPOINTS)
    datastore = Datastore()
    source = select_source(flags("--endpoints-file", str(path), "--watch-endpoints-file=false"), EndpointPickerConfig(),
                           datastore, CollectorRegistry())
    assert source.files is not None and not source.files.reload
    async with source.running:
        assert len(datastore) == 2


async def test_static_endpoints(tmp_path: Path) -> None:
    datastore = Datastore()
    source = select_source(flags("--static-endpoints", "127.0.0.1:8000"), EndpointPickerConfig(), datastore,
                           CollectorRegistry())
    async with source.running:
        assert source.ready() and [s.name for s in datastore.endpoints()] == ["127.0.0.1:8000"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--static-endpoints", "127.0.0.1:1"], r"conflicting endpoint sources \(--static-endpoints, dataLayer"),
        (["--endpoints-file", "other.yaml"], r"conflicting endpoint sources \(--endpoints-file, dataLayer"),
        (["--pool-name", "pool"], r"conflicting endpoint sources \(--pool-name, dataLayer"),
    ],
)
def test_config_discovery_excludes_the_flags(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(SourceError, match=message):
        select_source(flags(*argv), file_config(tmp_path / "e.yaml"), Datastore(), CollectorRegistry())


def test_discovery_must_name_a_file_discovery_plugin(tmp_path: Path) -> None:
    config = parse_config_text(f"{HEADER}plugins:\n- {{type: max-score-picker}}\ndataLayer:\n  discovery: {{pluginRef: max-score-picker}}\n")
    with pytest.raises(SourceError, match="'max-score-picker' is of type 'max-score-picker'; epp serve supports 'file-discovery'"):
        select_source(flags(), config, Datastore(), CollectorRegistry())


def test_bad_file_discovery_parameters(tmp_path: Path) -> None:
    config = parse_config_text(
        f"{HEADER}plugins:\n- {{name: files, type: file-discovery, parameters: {{watchFile: true}}}}\n"
        "dataLayer:\n  discovery: {pluginRef: files}\n"
    )
    with pytest.raises(ValueError, match="'path' parameter is required"):
        select_source(flags(), config, Datastore(), CollectorRegistry())


def test_unreferenced_file_discovery_plugin_is_not_a_source(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config_text(f"{HEADER}plugins:\n- {{name: files, type: file-discovery, parameters: {{path: x}}}}\n")
    with pytest.raises(SourceError, match="no endpoint source"):
        select_source(flags(), config, Datastore(), CollectorRegistry())
    assert "not referenced by dataLayer.discovery" in caplog.text
