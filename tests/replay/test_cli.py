"""``epp replay`` end to end, in-process: files written, JSON shape, errors users can act on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from epp.cli import main
from epp.replay.summary import SUMMARY_KEYS

SMALL = ["--sp-groups", "3", "--sp-prompts-per-group", "4", "--sp-system-len", "512", "--sp-question-len", "32",
         "--sp-output-len", "8", "--sp-rate", "20"]


def test_summary_json_keys_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["replay", "--synthetic", "shared-prefix", *SMALL, "--policy", "default", "--policy", "least-inflight",
                 "--rate-scale", "1,4", "--engines", "2", "--jobs", "2", "--out", str(out), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "summary.json").read_text())
    assert [(s["policy"], s["rate_scale"]) for s in written] == [
        ("default", 1.0), ("default", 4.0), ("least-inflight", 1.0), ("least-inflight", 4.0)
    ]
    for summary in written:
        assert tuple(summary) == SUMMARY_KEYS
        assert summary["requests"] == summary["completed"] == 12 and summary["shed"] == 0
        assert 0 <= summary["hit_ratio"] <= summary["ideal_hit_ratio"]
        assert summary["ideal_hit_ratio"] == pytest.approx(3 * 3 * 512 / (12 * 544))
    assert [s["policy"] for s in printed] == [s["policy"] for s in written]
    for name in ("ttft_cdf.png", "hit_ratio_over_time.png", "engine_load.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_malformed_lines_are_listed_with_line_numbers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.jsonl"
    good = {"timestamp": 0, "input_length": 600, "output_length": 2, "hash_ids": [0, 1]}
    trace.write_text("\n".join([json.dumps(good), "garbage", json.dumps({**good, "timestamp": 500})]) + "\n")
    assert main(["replay", str(trace), "--policy", "default", "--engines", "1", "--json"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 malformed line(s)" in captured.err and "line 2: not valid JSON" in captured.err
    (summary,) = json.loads(captured.out)
    assert summary["requests"] == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--policy", "nope"], "policy 'nope': 'nope' is neither a preset"),
        (["--profile", "tpu"], "unknown profile 'tpu'"),
        (["--profile", "llama-3.1-8b-h100:4,tpu:4"], "unknown profile 'tpu'"),
        (["--profile", "llama-3.1-8b-h100:4,llama-3.2-1b-h100:3"], "counts sum to 7, not to --engines 8"),
        (["--profile", "llama-3.1-8b-h100:four"], "each part must be profile:count"),
        ([], "give a TRACE file or --synthetic KIND"),
    ],
)
def test_user_errors_exit_2_with_a_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    extra = [] if not argv else ["--synthetic", "multi-turn"]
    assert main(["replay", *extra, *argv]) == 2
    assert message in capsys.readouterr().err


def test_find_knee_writes_its_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "knee"
    argv = ["replay", "--synthetic", "shared-prefix", *SMALL, "--find-knee", "default", "--engines", "1",
            "--out", str(out), "--json"]
    assert main(argv) == 0
    knee = json.loads(capsys.readouterr().out)
    assert knee == json.loads((out / "knee.json").read_text())
    assert knee["policy"] == "default" and knee["threshold"] == 2 * knee["unloaded_ttft_p90"] > 0
    assert knee["probes"] and all(p90 is not None for _, p90 in knee["probes"])


def test_a_config_file_is_a_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text(
        "apiVersion: llm-d.ai/v1alpha1\nkind: EndpointPickerConfig\nplugins:\n- {type: round-robin-picker}\n"
        "schedulingProfiles:\n- name: default\n  plugins:\n  - {pluginRef: round-robin-picker}\n"
    )
    argv = ["replay", "--synthetic", "shared-prefix", *SMALL, "--policy", str(config), "--engines", "3", "--json"]
    assert main(argv) == 0
    (summary,) = json.loads(capsys.readouterr().out)
    assert summary["policy"] == str(config) and summary["imbalance"] == 1.0

    config.write_text("kind: EndpointPickerConfig\nplugins: 7\n")
    assert main(argv) == 2
    assert f"policy '{config}'" in capsys.readouterr().err


MIX = "llama-3.1-8b-h100:1,llama-3.2-1b-h100:2,llama-3.1-70b-h100-tp4:1"


def test_a_mixed_pool_replays_deterministically_by_seed(capsys: pytest.CaptureFixture[str]) -> None:
    """``--profile p:n,...`` builds a mixed pool (the title says which; no policy is told), and the same
    seed gives the same run, number for number."""
    def run(seed: int) -> list[dict[str, object]]:
        argv = ["replay", "--synthetic", "shared-prefix", *SMALL, "--policy", "default", "--engines", "4",
                "--profile", MIX, "--seed", str(seed), "--jobs", "1", "--json"]
        assert main(argv) == 0
        captured = capsys.readouterr()
        assert "1 × llama-3.1-8b-h100 + 2 × llama-3.2-1b-h100 + 1 × llama-3.1-70b-h100-tp4" in captured.out + captured.err
        summaries: list[dict[str, object]] = json.loads(captured.out[captured.out.index("["):])
        for s in summaries:
            s.pop("wall_s")
        return summaries

    first = run(3)
    assert run(3) == first
    assert run(4) != first
def test_progress_is_printed_when_not_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["replay", "--synthetic", "shared-prefix", *SMALL, "--policy", "least-inflight", "--engines", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "1 run(s), 2 at a time" in captured.err
    assert "least-inflight ×1: 12/12 requests (100%), 1/1 runs done" in captured.err
    assert "TTFT p50" in captured.out and "ms" in captured.out


def test_ctrl_c_ends_a_replay_with_one_line_and_no_traceback() -> None:
    # Sent to the whole process group, as a terminal's Ctrl-C is: the worker processes get it too.
    # Four runs, two at a time: the interrupt lands while the first two replay and two more wait, however
    # slow the machine (a fixed sleep let a busy machine finish first).
    replay = subprocess.Popen(
        [sys.executable, "-m", "epp", "replay", "--synthetic", "shared-prefix", "--sp-groups", "64",
         "--policy", "default", "--policy", "gie-default", "--rate-scale", "1,2", "--jobs", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        assert replay.stderr is not None
        assert "run(s), 2 at a time" in replay.stderr.readline()  # runs are starting
        assert "requests (" in replay.stderr.readline()  # the first progress line: the workers are replaying
        os.killpg(replay.pid, signal.SIGINT)
        out, err = replay.communicate(timeout=60)
    finally:
        if replay.poll() is None:
            os.killpg(replay.pid, signal.SIGKILL)
            replay.wait()
    assert replay.returncode == 130, err
    assert err.strip().splitlines()[-1] == "epp replay: interrupted"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_without_matplotlib_out_fails_at_once_naming_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    argv = ["replay", "--synthetic", "shared-prefix", *SMALL, "--policy", "random", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "pip install 'epp[replay]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_the_serving_commands_never_import_matplotlib() -> None:
    code = ("import sys, epp.cli, epp.app, epp.service, epp.replay.app, epp.replay.cli; epp.cli.build_parser(); "
            "sys.exit('matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60, check=False).returncode == 0
