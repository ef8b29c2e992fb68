"""`edgemq read`'s progress line: the rate counts from when reading starts, not from
when planning (listing and reading the manifests) started."""

from __future__ import annotations

import io

from edgemq.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_leaves_out_planning_time() -> None:
    clock, out = Clock(), io.StringIO()
    progress = Progress(out, total_segments=0, total_bytes=0, enabled=True, clock=clock)
    clock.now += 30.0  # planning: 30 s reading manifests, no segment bytes
    progress.manifests_read(3, 3)
    progress.start_reading(2, 4 * 1024 * 1024)
    clock.now += 2.0
    progress.add_bytes(2 * 1024 * 1024)
    progress.segment_done()
    line = progress.line()
    assert "1/2 segments" in line
    assert "2.0 MiB/4.0 MiB" in line
    assert line.endswith("1.0 MiB/s"), line  # 2 MiB in 2 s, not in 32 s
    progress.close()
    assert out.getvalue().startswith("\rreading manifests 3/3")
    assert out.getvalue().endswith("1.0 MiB/s\n")
