"""`edgemq bench`'s report: rows from each script's JSON, the Markdown table, the
README markers. Fake result documents, shaped like the scripts' `--json` output."""

from __future__ import annotations

from typing import Any

from edgemq.bench_cmd import SPECS
from edgemq.bench_report import (
    END,
    EXTRACTORS,
    START,
    Row,
    render_block,
    render_table,
    replace_block,
    rows_from,
)


def _expected(script: str) -> tuple[str, ...]:
    return next(s.expected for s in SPECS if s.script == script)


def _docs() -> dict[str, dict[str, Any]]:
    return {
        "wal_append": {
            "median": {
                "ratio_of_medians": 0.95,
                "baseline_mb_s": 180.0,
                "wal_mb_s": 171.0,
                "wal_lat_p99_ms": 4.5,
            }
        },
        "view_materialize": {
            "median": {"ratio_of_medians": 1.1, "duckdb_mb_s": 100.0, "edgemq_mb_s": 110.0}
        },
        "http_ingest": {
            "h1": {
                "median": {
                    "ratio_records_s": 0.6,
                    "plain_records_s": 800_000.0,
                    "node_records_s": 480_000.0,
                }
            },
            "h2": {
                "median": {
                    "ratio_req_s": 0.95,
                    "p99_ratio": 1.5,
                    "plain_req_s": 10_000.0,
                    "node_req_s": 9_500.0,
                    "node_p99_ms": 15.0,
                    "plain_p99_ms": 10.0,
                }
            },
            "e1": {
                "ratio": 0.8,
                "records_s": 384_000.0,
                "h1_node_records_s": 480_000.0,
                "bounded": False,
            },
        },
        "mqtt_ingest": {
            "m1": {
                "median": {"ratio": 1.3, "node_msg_s": 130e3, "mosquitto_msg_s": 100e3},
                "met": True,
            },
            "m2": {"median": {"ratio": 25.0, "node_msg_s": 125e3, "amqtt_msg_s": 5e3}, "met": True},
            "r1": {
                "node": {"kib_per_connection": 3.8, "connections": 10000},
                "mosquitto": {"kib_per_connection": 0.8},
                "met": True,
            },
        },
        "restart_recovery": {
            "config": {"wal_mib": 1024},
            "median": {
                "ratio": 1.5,
                "full_ingest_s_median": 0.9,
                "full_ingest_s_max": 1.1,
                "empty_ingest_s_median": 0.6,
            },
            "met": True,
        },
        "control_api": {
            "stores": {
                "sqlite": {
                    "exchange": {
                        "ratio": 0.4,
                        "control": {"req_s_median": 450.0},
                        "baseline": {"req_s_median": 1125.0},
                    },
                    "targets": {"exchange_met": False, "list_met": True},
                    "worst_list_query": "limit=50&offset=9950",
                    "list": {
                        "limit=50&offset=9950": {
                            "p99_ratio": 2.0,
                            "control": {"p99_ms": 12.0},
                            "baseline": {"p99_ms": 6.0},
                        }
                    },
                }
            }
        },
    }


def _rows(script: str, doc: Any, status: str = "ok") -> list[Row]:
    return rows_from(script, _expected(script), doc, status=status, command="cmd", duration_s=1.25)


def test_every_script_has_an_extractor_and_ratios_and_verdicts_follow_the_targets() -> None:
    assert set(EXTRACTORS) == {s.script for s in SPECS}
    docs = _docs()
    rows = {
        r.id + (r.name[-8:] if r.id.startswith("C") else ""): r
        for s in SPECS
        for r in _rows(s.script, docs[s.script])
    }
    assert rows["W1"].met is True
    assert rows["W1"].ratio == 0.95
    assert rows["W1"].baseline == 180.0
    assert rows["W1"].measured == 171.0
    assert rows["V1"].met is True
    assert rows["H1"].met is False
    assert rows["H1"].ratio == 0.6
    assert rows["H2"].met is False  # req/s ratio met, p99 1.5x is not
    assert rows["E1"].met is False  # ratio met, backlog not bounded
    assert rows["M1"].met is True
    assert rows["M1"].baseline == 100e3
    assert rows["M2"].ratio_text == "25.0×"
    assert rows["M0"].status.startswith("not run")
    assert rows["M0"].met is None
    assert rows["R1"].measured == 3.8
    assert rows["R1"].met is True
    assert rows["R2"].measured == 0.9
    assert rows["R2"].baseline == 0.6
    assert rows["R2"].met is True
    assert rows["C1(sqlite)"].met is False
    assert rows["C2(sqlite)"].measured == 12.0
    assert all(r.command == "cmd" and r.duration_s == 1.2 for r in rows.values())


def test_a_failed_or_timed_out_script_reports_every_target_with_its_status() -> None:
    rows = _rows("mqtt_ingest", None, status="timeout after 480 s")
    assert [r.id for r in rows] == ["M0", "M1", "M2", "R1"]
    assert {r.status for r in rows} == {"timeout after 480 s"}
    assert all(r.met is None for r in rows)
    table = render_table(rows)
    assert table.count("timeout after 480 s") == 4
    assert "| n/a |" in table


def test_json_that_does_not_have_the_expected_shape_is_a_failure_not_a_crash() -> None:
    rows = _rows("wal_append", {"median": {}})
    assert len(rows) == 1
    assert rows[0].status.startswith("failed (unreadable JSON")


def test_table_has_one_line_per_row_and_escapes_pipes() -> None:
    rows = _rows("http_ingest", _docs()["http_ingest"])
    rows.append(Row("X1", "a | b", "t", absolute="x"))
    lines = render_table(rows).splitlines()
    assert lines[0] == "| Id | Benchmark | Target | Measured ratio | Absolute figures | Met |"
    assert len(lines) == 2 + 4
    assert lines[2].startswith("| H1 |")
    assert lines[2].endswith("| **no** |")
    assert "| 0.95; p99 1.50× |" in lines[3]
    assert "a \\| b" in lines[5]


def test_nan_figures_become_null_in_json() -> None:
    row = Row("R1", "n", "t", baseline=float("nan"))
    assert row.as_json()["baseline"] is None


def _report() -> dict[str, Any]:
    return {
        "date": "2026-11-30",
        "profile": "quick",
        "duration_s": 720.0,
        "machine": {
            "git_commit": "0123456789abcdef",
            "git_dirty": False,
            "cpu_count": 2,
            "kernel": "6.1",
            "python": "3.11.7",
            "loadavg_start": "1.00 1.00 1.00",
            "loadavg_end": "2.00 1.50 1.20",
        },
    }


def test_block_names_the_profile_machine_load_and_json_file() -> None:
    rows = _rows("wal_append", _docs()["wal_append"])
    block = render_block(_report(), rows)
    assert block.startswith("`edgemq bench --quick` on 2026-11-30 (commit 0123456789;")
    assert "load average 1.00 1.00 1.00 at the start, 2.00 1.50 1.20 at the end" in block
    assert "1 of 1 targets met" in block
    assert "benchmarks/results/2026-11-30.json" in block
    assert "| W1 |" in block


def test_replace_block_only_touches_the_text_between_the_markers() -> None:
    readme = f"# Benchmarks\n\nintro\n\n{START}\nold table\n{END}\n\n## W1\n\ntext {START[:4]}\n"
    out = replace_block(readme, "new table\n")
    assert out == readme.replace("old table", "new table")
    assert replace_block(out, "new table\n") == out


def test_replace_block_without_markers_adds_a_latest_report_section_at_the_top() -> None:
    readme = "# Benchmarks\n\nMethod: see docs.\n\n## W1\n"
    out = replace_block(readme, "T\n")
    assert (
        out
        == f"# Benchmarks\n\n## Latest report\n\n{START}\nT\n{END}\n\nMethod: see docs.\n\n## W1\n"
    )
    assert replace_block(out, "U\n") == out.replace("\nT\n", "\nU\n")


def test_a_store_that_failed_is_reported_and_the_other_store_keeps_its_figures() -> None:
    doc = _docs()["control_api"]
    doc["stores"]["postgresql"] = {"error": "CalledProcessError(1, ['pg_ctl'])"}
    rows = rows_from(
        "control_api",
        _expected("control_api"),
        doc,
        status="failed (exit 1)",
        command="cmd",
        duration_s=3.0,
    )
    by_name = {r.name: r for r in rows}
    assert by_name["control API token exchange (sqlite)"].status == "ok"
    assert by_name["control API token exchange (sqlite)"].measured == 450.0
    failed = by_name["control API token exchange (postgresql)"]
    assert failed.status == "failed: CalledProcessError(1, ['pg_ctl'])"
    assert failed.met is None
    assert [r.id for r in rows] == ["C1", "C1", "C2", "C2"]
