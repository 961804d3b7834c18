"""file-discovery with real files: validation, reload on edit / atomic rename / symlink swap, bad edits kept out."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from epp.datastore import Datastore, Endpoint
from epp.discovery import EndpointsFileError, FileDiscovery, load_endpoints, parse_endpoints

TWO = """
endpoints:
  - name: vllm-0
    address: "10.0.0.1"
    port: "8000"
    labels: {llm-d.ai/role: decode}
  - name: vllm-1
    namespace: prod
    address: 10.0.0.2
    port: 8001
    metricsHost: "10.0.0.2:9090"
"""


def members(ds: Datastore) -> dict[str, Endpoint]:
    return {s.name: s.endpoint for s in ds.endpoints()}


def write_atomically(path: Path, text: str) -> None:
    """What vim/VS Code/kubectl-cp style editors do: write a temp file, rename it over the original."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_file_entries_become_endpoints(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text(TWO)
    assert load_endpoints(path) == [
        Endpoint("vllm-0", "10.0.0.1", 8000, namespace="default", labels={"llm-d.ai/role": "decode"}),
        Endpoint("vllm-1", "10.0.0.2", 8001, namespace="prod", metrics_port=9090),
    ]


def test_json_and_ipv6_and_explicit_empty_list() -> None:
    doc = '{"endpoints": [{"name": "a", "address": "fd00::1", "port": "80", "metricsHost": "[fd00::1]:9000"}]}'
    (endpoint,) = parse_endpoints(doc)
    assert (endpoint.hostport, endpoint.metrics_port) == ("[fd00::1]:80", 9000)
    assert parse_endpoints("endpoints: []") == []


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        pytest.param("", "expected a mapping with an 'endpoints' list", id="empty-document"),
        pytest.param("endpionts: []", "'endpoints' list", id="typo-top-level-key"),
        pytest.param("endpoints: {a: 1}", "must be a list", id="not-a-list"),
        pytest.param("endpoints: [", "not valid YAML", id="not-yaml"),
        pytest.param("endpoints: [42]", r"endpoints\[0\]: expected a mapping", id="entry-not-mapping"),
        pytest.param('endpoints: [{address: "10.0.0.1", port: "80"}]', r"endpoints\[0\]: 'name' is required", id="no-name"),
        pytest.param('endpoints: [{name: a, address: "vllm.svc", port: "80"}]', r"endpoints\[0\] \('a'\): 'address' must be an IP", id="hostname"),
        pytest.param('endpoints: [{name: a, address: "10.0.0.256", port: "80"}]', "'address' must be an IP", id="bad-ipv4"),
        pytest.param('endpoints: [{name: a, address: "10.0.0.1", port: "0"}]', "'port' must be an integer 1-65535", id="port-zero"),
        pytest.param('endpoints: [{name: a, address: "10.0.0.1", port: "65536"}]', "1-65535", id="port-high"),
        pytest.param('endpoints: [{name: a, address: "10.0.0.1", port: "80a"}]', "1-65535", id="port-text"),
        pytest.param('endpoints: [{name: a, address: "10.0.0.1", port: true}]', "1-65535", id="port-bool"),
        pytest.param('endpoints: [{name: a, address: "10.0.0.1"}]', "'port'", id="port-missing"),
        pytest.param('endpoints: [{name: a, address: "10.0.0.1", port: "80", labels: {gpu: 1}}]', "quote numbers", id="label-int"),
        pytest.param('endpoints: [{name: a, address: "10.0.0.1", port: "80", metricsHost: "10.0.0.9:9090"}]', "another host", id="metrics-other-host"),
        pytest.param('endpoints: [{name: a, address: "10.0.0.1", port: "80", metricsHost: "9090"}]', "metricsHost", id="metrics-no-colon"),
        pytest.param(
            'endpoints: [{name: a, address: "10.0.0.1", port: "80"}, {name: a, namespace: other, address: "10.0.0.2", port: "80"}]',
            r"endpoints\[1\] \('a'\): duplicate name, first used by endpoints\[0\]",
            id="duplicate-name",
        ),
    ],
)
def test_invalid_documents_name_the_problem(doc: str, message: str) -> None:
    with pytest.raises(EndpointsFileError, match=message):
        parse_endpoints(doc)


def test_every_bad_entry_is_reported_at_once() -> None:
    doc = 'endpoints: [{name: a, address: "x", port: "80"}, {name: ok, address: "10.0.0.1", port: "80"}, {name: c, address: "10.0.0.3", port: "-1"}]'
    with pytest.raises(EndpointsFileError) as err:
        parse_endpoints(doc, "eps.yaml")
    assert str(err.value).startswith("eps.yaml: ")
    assert "endpoints[0] ('a')" in str(err.value) and "endpoints[2] ('c')" in str(err.value) and "'ok'" not in str(err.value)


def test_oversized_and_missing_files_are_errors(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("endpoints: []\n" + "#" * (1 << 20))
    with pytest.raises(EndpointsFileError, match="1 MiB"):
        load_endpoints(big)
    with pytest.raises(EndpointsFileError, match="cannot read"):
        load_endpoints(tmp_path / "absent.yaml")


def test_unknown_entry_keys_are_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    (endpoint,) = parse_endpoints('endpoints: [{name: a, address: "10.0.0.1", port: "80", lables: {x: y}}]')
    assert endpoint.labels == {}
    assert "ignoring unknown keys lables" in caplog.text


async def test_bad_file_at_start_is_fatal_and_leaves_the_datastore_alone(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text('endpoints: [{name: a, address: "10.0.0.1", port: "99999"}]')
    ds = Datastore()
    with pytest.raises(EndpointsFileError, match=r"endpoints\[0\] \('a'\)"):
        await FileDiscovery(path, ds).start()
    assert len(ds) == 0 and not ds.synced


async def test_start_applies_and_marks_synced_without_watching(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text(TWO)
    ds = Datastore()
    async with FileDiscovery(path, ds) as discovery:
        assert ds.synced and set(members(ds)) == {"vllm-0", "vllm-1"}
        with pytest.raises(RuntimeError, match="already started"):
            await discovery.start()


async def test_edits_add_remove_and_relabel(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text(TWO)
    ds = Datastore()
    discovery = FileDiscovery(path, ds, reload=True)
    await discovery.start()
    try:
        ds.request_started("vllm-0", 10)
        assert not discovery.check()  # unchanged file: nothing to do

        # In-place edit: relabel vllm-0, drop vllm-1, add vllm-2.
        path.write_text(
            'endpoints:\n- {name: vllm-0, address: "10.0.0.1", port: "8000", labels: {llm-d.ai/role: prefill}}\n'
            '- {name: vllm-2, address: "10.0.0.3", port: "8000"}\n'
        )
        assert discovery.check()
        assert set(members(ds)) == {"vllm-0", "vllm-2"}
        kept = ds.get("vllm-0")
        assert kept is not None and kept.endpoint.role == "prefill" and kept.inflight_requests == 1  # same state, relabelled

        write_atomically(path, 'endpoints:\n- {name: vllm-3, address: "10.0.0.4", port: "8000"}\n')
        assert discovery.check()
        assert set(members(ds)) == {"vllm-3"}
    finally:
        await discovery.stop()


async def test_bad_edit_keeps_previous_membership_and_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text(TWO)
    ds = Datastore()
    discovery = FileDiscovery(path, ds, reload=True)
    await discovery.start()
    before = members(ds)
    for broken in ("endpoints: [{name: vllm-0, address: 10.0.0.1, port: '8000'", "", 'endpoints: [{name: x, address: "10.0.0.1", port: "0"}]'):
        write_atomically(path, broken)
        for _ in range(3):
            assert not discovery.check()
        assert members(ds) == before
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3 and "port" in errors[-1].getMessage()

    path.unlink()
    assert not discovery.check() and not discovery.check()
    assert members(ds) == before
    assert sum("missing" in r.getMessage() for r in caplog.records) == 1

    write_atomically(path, 'endpoints:\n- {name: fixed, address: "10.0.0.9", port: "8000"}\n')
    assert discovery.check()
    assert set(members(ds)) == {"fixed"}
    await discovery.stop()


async def test_configmap_style_symlink_swap(tmp_path: Path) -> None:
    """Kubernetes mounts ConfigMaps as file -> ..data/file, ..data -> ..<timestamp>/; updates swap ..data."""
    first, second = tmp_path / "..2026_01", tmp_path / "..2026_02"
    first.mkdir()
    second.mkdir()
    (first / "endpoints.yaml").write_text(TWO)
    (second / "endpoints.yaml").write_text('endpoints:\n- {name: swapped, address: "10.0.0.7", port: "8000"}\n')
    (tmp_path / "..data").symlink_to(first.name)
    path = tmp_path / "endpoints.yaml"
    path.symlink_to("..data/endpoints.yaml")
    ds = Datastore()
    discovery = FileDiscovery(path, ds, reload=True)
    await discovery.start()
    (tmp_path / "..data_tmp").symlink_to(second.name)
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")
    assert discovery.check()
    assert set(members(ds)) == {"swapped"}
    await discovery.stop()


async def test_watch_task_picks_up_an_atomic_rename(tmp_path: Path) -> None:
    path = tmp_path / "endpoints.yaml"
    path.write_text(TWO)
    ds = Datastore()
    async with FileDiscovery(path, ds, reload=True, poll_interval=0.01):
        write_atomically(path, 'endpoints:\n- {name: renamed, address: "10.0.0.5", port: "8000"}\n')
        for _ in range(1000):  # bounded wait for the watch loop
            if set(members(ds)) == {"renamed"}:
                break
            await asyncio.sleep(0.01)
        assert set(members(ds)) == {"renamed"}


def test_from_parameters_follows_the_reference_plugin() -> None:
    ds = Datastore()
    discovery = FileDiscovery.from_parameters({"path": "/etc/epp/endpoints.yaml", "watchFile": True}, ds)
    assert (discovery.path, discovery.reload) == (Path("/etc/epp/endpoints.yaml"), True)
    assert not FileDiscovery.from_parameters({"path": "/x.yaml"}, ds).reload
    with pytest.raises(ValueError, match="'path' parameter is required"):
        FileDiscovery.from_parameters({}, ds)
    with pytest.raises(ValueError, match="'watchFile' must be true or false"):
        FileDiscovery.from_parameters({"path": "/x.yaml", "watchFile": "yes"}, ds)
