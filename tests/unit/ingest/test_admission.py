"""ingest.admission: which 503 reason wins, where each limit starts refusing, the
counters behind /metrics, and the disk sampler."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ingest.admission import Admission, free_bytes
from ingest.metrics import NodeMetrics
from ingest.settings import Limits
from wal import WalFailed, WalSettings, WriteAheadLog

LIMITS = Limits(
    inflight_bytes_max=1000,
    unshipped_bytes_max=5000,
    disk_reserve_bytes=10_000,
)


@dataclass
class FakeWal:
    """The two things admission reads from a WAL."""

    failed: WalFailed | None = None
    unshipped_bytes: int = 0


def admission(limits: Limits = LIMITS) -> Admission:
    a = Admission(limits, NodeMetrics())
    a.free_disk_bytes = 1_000_000
    return a


def sample(metrics: NodeMetrics, name: str, **labels: str) -> float | None:
    text = metrics.render().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


def test_nothing_is_refused_within_every_limit() -> None:
    a = admission()
    assert a.refuse_reason(FakeWal(unshipped_bytes=5000), 1000) is None


CONDITIONS = ["draining", "wal_failed", "disk", "backlog", "inflight"]


def _set(a: Admission, wal: FakeWal, condition: str) -> None:
    if condition == "draining":
        a.draining = True
    elif condition == "wal_failed":
        wal.failed = WalFailed("fsync failed")
    elif condition == "disk":
        a.free_disk_bytes = LIMITS.disk_reserve_bytes - 1
    elif condition == "backlog":
        wal.unshipped_bytes = LIMITS.unshipped_bytes_max + 1
    elif condition == "inflight":
        a.add_inflight(LIMITS.inflight_bytes_max)


@pytest.mark.parametrize("winner", CONDITIONS)
def test_each_reason_wins_over_every_reason_after_it_in_the_documented_order(
    winner: str,
) -> None:
    a, wal = admission(), FakeWal()
    for condition in CONDITIONS[CONDITIONS.index(winner) :]:
        _set(a, wal, condition)
    assert a.refuse_reason(wal, 1) == winner


@pytest.mark.parametrize("condition", CONDITIONS)
def test_each_reason_alone_refuses(condition: str) -> None:
    a, wal = admission(), FakeWal()
    _set(a, wal, condition)
    assert a.refuse_reason(wal, 1) == condition


def test_backlog_refuses_only_once_unshipped_bytes_pass_the_quota() -> None:
    a = admission()
    at_quota = FakeWal(unshipped_bytes=LIMITS.unshipped_bytes_max)
    over = FakeWal(unshipped_bytes=LIMITS.unshipped_bytes_max + 1)
    assert a.refuse_reason(at_quota, 1) is None
    assert a.refuse_reason(over, 1) == "backlog"


def test_inflight_counts_the_request_being_admitted() -> None:
    a = admission()
    a.add_inflight(600)
    assert a.refuse_reason(None, 400) is None
    assert a.refuse_reason(None, 401) == "inflight"
    a.done_inflight(600)
    assert a.refuse_reason(None, 1000) is None
    assert a.refuse_reason(None, 1001) == "inflight"


def test_disk_refuses_under_the_reserve_and_not_before_the_first_sample() -> None:
    a = admission()
    a.free_disk_bytes = None  # not sampled yet (or the sample failed)
    assert a.refuse_reason(None, 1) is None
    a.free_disk_bytes = LIMITS.disk_reserve_bytes
    assert a.refuse_reason(None, 1) is None
    a.free_disk_bytes = LIMITS.disk_reserve_bytes - 1
    assert a.refuse_reason(None, 1) == "disk"


def test_without_a_wal_only_node_wide_limits_apply() -> None:
    a = admission()
    assert a.refuse_reason(None, 1) is None
    a.draining = True
    assert a.refuse_reason(None, 1) == "draining"


async def test_a_real_wal_over_its_quota_is_refused_as_backlog(tmp_path: Path) -> None:
    limits = Limits(unshipped_bytes_max=1024, inflight_bytes_max=1 << 20, disk_reserve_bytes=0)
    a = admission(limits)
    wal = await WriteAheadLog.open(str(tmp_path / "wal"), settings=WalSettings())
    try:
        assert a.refuse_reason(wal, 600) is None
        await wal.append([b"x" * 600], tenant=1)
        assert a.refuse_reason(wal, 600) is None
        await wal.append([b"y" * 600], tenant=1)
        assert wal.unshipped_bytes > limits.unshipped_bytes_max
        assert a.refuse_reason(wal, 1) == "backlog"
    finally:
        await wal.close()


def test_refusals_are_counted_by_reason_and_the_inflight_gauge_follows() -> None:
    metrics = NodeMetrics()
    a = Admission(LIMITS, metrics)
    a.refused("backlog")
    a.refused("backlog")
    a.refused("disk")
    assert sample(metrics, "edgemq_ingest_rejected_total", reason="backlog") == 2
    assert sample(metrics, "edgemq_ingest_rejected_total", reason="disk") == 1
    a.add_inflight(300)
    a.add_inflight(200)
    assert sample(metrics, "edgemq_ingest_inflight_bytes") == 500
    a.done_inflight(300)
    assert a.inflight_bytes == 200
    assert sample(metrics, "edgemq_ingest_inflight_bytes") == 200


async def test_the_disk_sampler_updates_free_space_and_forgets_a_failed_sample() -> None:
    a = admission()
    a.free_disk_bytes = None
    answers: list[int | OSError] = [123_456, OSError(5, "EIO"), 789]
    seen: list[int | None] = []

    def fake_sample(path: str) -> int:
        assert path == "/data"
        answer = answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        return answer

    async def fake_sleep(delay_s: float) -> None:
        seen.append(a.free_disk_bytes)
        if not answers:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await a.watch_disk("/data", sample=fake_sample, sleep=fake_sleep)
    assert seen == [123_456, None, 789]


def test_free_bytes_reads_the_file_system(tmp_path: Path) -> None:
    assert free_bytes(str(tmp_path)) > 0
    with pytest.raises(FileNotFoundError):
        free_bytes(str(tmp_path / "missing"))
