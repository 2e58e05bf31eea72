"""Medians, ratios, goals, latest.json's shape and the docs section rewrite of the bench harness."""

import json
from pathlib import Path
from typing import Any

import pytest
import summary


def fig(rps: float, p50_c1: float, rss: float | None) -> dict[str, Any]:
    return {
        "rps_c50": rps,
        "p50_us_c1": p50_c1,
        "p99_us_c1": p50_c1 * 2,
        "p50_us_c50": 900.0,
        "p99_us_c50": 1500.0,
        "rss_mib": rss,
        "rps_c1": 4000.0,
        "errors": 0,
    }


TARGETS = {
    "direct": summary.combine([fig(58000, 23, None)]),
    "gossamer": summary.combine([fig(30000, 123, 25.0)]),
    "envoy": summary.combine([fig(15000, 323, 68.0)]),
    "nginx": summary.combine([fig(45000, 103, 16.0)]),
    "haproxy": summary.combine([fig(44000, 123, 20.0)]),
    "mesh-path": summary.combine([fig(15000, 250, 50.0)]),
}


def meta() -> dict[str, Any]:
    r = summary.ratios(TARGETS)
    return {
        "date": "2026-11-22 00:00 UTC",
        "machine": {"nproc": 2, "cpu_model": "Test CPU", "kernel": "Linux 6"},
        "loadavg_start": "0.1 0.1 0.1",
        "loadavg_end": "0.2 0.1 0.1",
        "rounds": 1,
        "warmup_s": 2,
        "duration_s": 10,
        "command": "bench/run --rounds 1",
        "pinning": "pinned.",
        "versions": {"nginx": "1.22.1"},
        "ratios": r,
        "goals": summary.goals(TARGETS, r),
        "warnings": [],
    }


def test_combine_takes_medians_and_sums_errors() -> None:
    rounds = [fig(100, 10, 5.0), fig(300, 30, 7.0), fig(200, 20, 6.0)]
    rounds[1]["errors"] = 2
    out = summary.combine(rounds)
    assert out["rps_c50"] == 200.0
    assert out["p50_us_c1"] == 20.0
    assert out["rss_mib"] == 6.0
    assert out["errors"] == 2
    assert out["rounds"] == 3


def test_combine_without_rounds_keeps_the_keys_and_the_reason() -> None:
    out = summary.combine([], "gossamer exited with status 1")
    assert all(out[k] is None for k in summary.KEYS)
    assert out["error"] == "gossamer exited with status 1"


def test_ratios_against_each_peer() -> None:
    r = summary.ratios(TARGETS)
    assert r["rps_c50"]["gossamer/envoy"] == pytest.approx(2.0)
    assert r["rps_c50"]["gossamer/nginx"] == pytest.approx(0.667, abs=1e-3)
    assert r["added_p50_us_c1"]["gossamer"] == 100.0
    assert r["added_p50_us_c1"]["nginx"] == 80.0
    assert r["added_p50_c1"]["gossamer/nginx"] == pytest.approx(1.25)
    assert r["added_p50_c1"]["gossamer/envoy"] == pytest.approx(0.333, abs=1e-3)
    assert r["rss"]["gossamer/envoy"] == pytest.approx(0.368, abs=1e-3)


def test_ratios_are_none_when_a_side_is_missing() -> None:
    partial = {"gossamer": summary.combine([], "not built"), "nginx": TARGETS["nginx"]}
    r = summary.ratios(partial)
    assert r["rps_c50"]["gossamer/nginx"] is None
    assert r["added_p50_c1"]["gossamer/nginx"] is None


def test_goals_report_met_and_unmet() -> None:
    r = summary.ratios(TARGETS)
    goals = {g["goal"]: g["met"] for g in summary.goals(TARGETS, r)}
    assert goals["gossamer req/s at c=50 >= 0.7x envoy"] is True
    assert goals["gossamer req/s at c=50 >= 0.7x nginx"] is False
    assert goals["gossamer added p50 at c=1 <= 1.3x nginx's"] is True
    assert goals["gossamer RSS < 40 MiB"] is True


def test_document_has_every_target_at_top_level_and_round_trips(tmp_path: Path) -> None:
    doc = summary.document({k: v for k, v in TARGETS.items() if k != "haproxy"}, meta())
    path = tmp_path / "results" / "latest.json"
    summary.write_json(path, doc)
    loaded = json.loads(path.read_text())
    assert list(loaded) == [*summary.TARGETS, "meta"]
    for name in summary.TARGETS:
        assert set(summary.KEYS) <= set(loaded[name])
    assert loaded["haproxy"]["rps_c50"] is None
    assert loaded["haproxy"]["error"] == "not measured"
    assert loaded["gossamer"]["rps_c50"] == 30000.0


def test_update_docs_replaces_only_the_marked_section(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text(
        f"# Benchmarks\n\nintro\n\n{summary.BEGIN}\nold figures\n{summary.END}\n\nend\n"
    )
    section = summary.markdown_section(summary.document(TARGETS, meta()))
    summary.update_docs(page, section)
    text = page.read_text()
    assert "old figures" not in text
    assert text.startswith("# Benchmarks\n\nintro\n\n")
    assert text.endswith(f"{summary.END}\n\nend\n")
    assert "| gossamer | 30,000 |" in text
    assert "Command: `bench/run --rounds 1`" in text
    assert text.count(summary.BEGIN) == 1


def test_update_docs_appends_when_markers_are_missing(tmp_path: Path) -> None:
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n")
    summary.update_docs(page, f"{summary.BEGIN}\nx\n{summary.END}")
    assert page.read_text() == f"# Benchmarks\n\n{summary.BEGIN}\nx\n{summary.END}\n"


def test_table_shows_why_a_target_was_not_measured() -> None:
    targets = dict(TARGETS, gossamer=summary.combine([], "gossamer exited | see log"))
    table = summary.table(summary.document(targets, meta()))
    assert "| gossamer | not measured: gossamer exited / see log |" in table


def test_warnings_summarise_noise_failed_requests_and_lost_rounds() -> None:
    quiet = {"noise_pct_c50": 2.0, "noise_pct_c1": 3.0, "steal_pct": 0.5, "errors": 0}
    noisy = {"noise_pct_c50": 35.0, "noise_pct_c1": 12.5, "steal_pct": 1.0, "errors": 4}
    per_round = {"direct": [quiet, quiet], "gossamer": [quiet, noisy, dict(noisy, steal_pct=60.0)]}
    out = summary.warnings(per_round, {"gossamer": "wrk exited with 1"}, 10.0)
    assert out == [
        "gossamer: in 2 of 3 rounds other processes or steal took more than 10% of a core (35-60%)",
        "gossamer: 8 failed requests",
        "gossamer: a round failed: wrk exited with 1",
    ]
