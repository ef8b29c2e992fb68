import os
import subprocess
import sys

import pytest

from shared import failpoints


def test_failpoints_are_off_unless_configured() -> None:
    failpoints.configure("")
    failpoints.hit("wal.before_fsync")  # nothing happens


def test_a_raise_failpoint_fires_on_exactly_its_nth_hit() -> None:
    failpoints.configure("delivery.mid_upload=raise@2")
    try:
        failpoints.hit("delivery.mid_upload")
        with pytest.raises(failpoints.FailpointError):
            failpoints.hit("delivery.mid_upload")
        failpoints.hit("delivery.mid_upload")
    finally:
        failpoints.configure("")


@pytest.mark.parametrize(
    "spec", ["nope=crash", "wal.before_fsync=explode", "wal.before_fsync=crash@x"]
)
def test_a_bad_spec_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="EDGEMQ_FAILPOINTS"):
        failpoints.configure(spec)


def test_a_crash_failpoint_exits_the_process_like_kill_9() -> None:
    env = {**os.environ, "EDGEMQ_FAILPOINTS": "outbox.after_ack=crash"}
    code = "from shared import failpoints; failpoints.hit('outbox.after_ack'); print('survived')"
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 137
    assert "survived" not in done.stdout
    assert "failpoint outbox.after_ack fired" in done.stderr
