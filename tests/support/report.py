"""One JSON report line per fault scenario (issue #7): printed (pytest -s or the
captured output of a failure shows it) and appended to
`$EDGEMQ_REPORT_DIR/reliability.jsonl` when that variable is set, which is how
docs/reliability.md gets its figures.

    report("DUR-01", cycles=30, acked=123456, lost_acked=0, duplicates=12, recovery_p95_s=0.41)
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

REPORT_DIR_ENV = "EDGEMQ_REPORT_DIR"


def report(scenario: str, **figures: Any) -> dict[str, Any]:
    line = {
        "scenario": scenario,
        "at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **figures,
    }
    text = json.dumps(line, sort_keys=False, default=str)
    print(f"REPORT {text}", flush=True)
    directory = os.environ.get(REPORT_DIR_ENV)
    if directory:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "reliability.jsonl"), "a") as f:
            f.write(text + "\n")
    return line
