"""``epp replay`` end to end, in-process: files written, JSON shape, errors users can act on."""

from __future__ import annotations

import json
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
