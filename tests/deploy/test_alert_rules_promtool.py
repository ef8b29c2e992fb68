"""deploy/monitoring/alerts.test.yaml through promtool, the real PromQL engine: each
rule fires on the series it is meant for and stays silent on the others. promtool is
not a Python dependency (Debian's `prometheus` package has it): skipped without it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .sources import ROOT

MONITORING = ROOT / "deploy" / "monitoring"


def _test_rules(where: Path) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    return subprocess.run(
        [promtool, "test", "rules", "alerts.test.yaml"],
        cwd=where,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_alert_rules_pass_their_promtool_unit_tests() -> None:
    done = _test_rules(MONITORING)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_unit_tests_fail_when_a_rule_does_not_fire(tmp_path: Path) -> None:
    """The connection-cap alert's threshold raised above what its test series reach."""
    rules = (MONITORING / "alerts.yaml").read_text()
    threshold = 'reason="connections"}[5m])) > 0.1'
    assert rules.count(threshold) == 1
    raised = threshold.replace("> 0.1", "> 2")
    (tmp_path / "alerts.yaml").write_text(rules.replace(threshold, raised))
    (tmp_path / "alerts.test.yaml").write_text((MONITORING / "alerts.test.yaml").read_text())
    done = _test_rules(tmp_path)
    assert done.returncode != 0, done.stdout
    assert "EdgeMQHTTPConnectionCap" in done.stdout + done.stderr
