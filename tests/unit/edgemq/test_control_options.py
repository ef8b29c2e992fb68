"""`edgemq control`'s node-health options: defaults are the control plane's own, and a
timeout that does not exceed the interval is refused before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from control.services.common import ControlSettings
from edgemq.cli import build_parser


def test_heartbeat_option_defaults_are_the_settings_defaults() -> None:
    args = build_parser().parse_args(["control"])
    assert args.node_heartbeat_interval_s == ControlSettings().node_heartbeat_interval_s
    assert args.node_heartbeat_timeout_s == ControlSettings().node_heartbeat_timeout_s


def test_a_timeout_not_above_the_interval_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edgemq", "control", "--database-url", "sqlite:///unused.db"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("EDGEMQ_")},
            "EDGEMQ_NODE_HEARTBEAT_INTERVAL_S": "10",
            "EDGEMQ_NODE_HEARTBEAT_TIMEOUT_S": "10",
        },
        cwd=str(tmp_path),
    )
    assert result.returncode == 2, result.stderr
    assert "--node-heartbeat-timeout-s must exceed" in result.stderr
