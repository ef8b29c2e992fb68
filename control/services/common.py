"""What every service uses: the context, ids, times, pagination, field checks."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..auth import Principal, Signer
from ..errors import Forbidden, Invalid, NotFound, problem
from ..store.db import Database, Executor

log = logging.getLogger(__name__)
EPOCH_WATCH_INTERVAL_S = 1.0
"""How often each replica reads the config epoch to wake long polls for changes made
through other replicas (local changes wake them at commit)."""
LIMIT_DEFAULT = 50
LIMIT_MAX = 200
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """Knobs of one control-plane process (documented in docs/control-plane.md)."""

    segment_bytes_min: int = 8 * MIB
    """Smallest segment_bytes the API accepts (lowered by `edgemq up` for demos)."""
    segment_bytes_max: int = 1024 * MIB
    node_heartbeat_interval_s: float = 5.0
    """How often nodes heartbeat (told at registration; the node follows it)."""
    node_heartbeat_timeout_s: float = 30.0
    """A node that has not heartbeated for this long is unhealthy (keep it several
    intervals: a loaded node may miss one or two)."""
    validate_interval_s: float = 30.0
    """At most one destination validation per destination in this period (429)."""
    long_poll_max_s: float = 30.0
    public_url: str = "http://127.0.0.1:8081"
    """Base URL of this control plane, for signed local-store download links."""
    download_secret: bytes = b""
    """HMAC key of signed download links; generated at start when empty."""


@dataclass(slots=True)
class Context:
    db: Database
    signer: Signer
    settings: ControlSettings
    epoch_changed: asyncio.Event = field(default_factory=asyncio.Event)
    epoch_seen: int = 0
    """The newest config epoch this replica knows of (its watcher's or its own)."""
    watch_stop: asyncio.Event = field(default_factory=asyncio.Event)
    """Set to end `watch_epoch` (after its current read)."""
    closing: bool = False
    """Set when the server shuts down: long polls answer at once."""

    def close_long_polls(self) -> None:
        self.closing = True
        self.epoch_changed.set()

    async def bump_epoch(self, tx: Executor) -> int:
        """Every change nodes must see bumps the global config epoch (in `tx`)."""
        await tx.execute("UPDATE settings SET value = value + 1 WHERE name = 'config_epoch'")
        row = await tx.fetchone("SELECT value FROM settings WHERE name = 'config_epoch'")
        assert row is not None
        # Wake long polls once the new epoch is visible (after commit); a poll tick
        # covers changes made by other replicas.
        epoch = int(row["value"])
        callbacks = getattr(tx, "after_commit", None)
        if callbacks is None:
            self.epoch_committed(epoch)
        else:
            callbacks.append(lambda: self.epoch_committed(epoch))
        return epoch

    def epoch_committed(self, epoch: int) -> None:
        """This replica committed `epoch`: wake the polls now (the watcher then knows
        it and does not wake them a second time)."""
        self.epoch_seen = max(self.epoch_seen, epoch)
        self.wake_long_polls()

    def wake_long_polls(self) -> None:
        woken, self.epoch_changed = self.epoch_changed, asyncio.Event()
        woken.set()

    async def watch_epoch(self, interval_s: float = EPOCH_WATCH_INTERVAL_S) -> None:
        """Run for the life of the replica: read the config epoch every `interval_s`
        and wake the long polls when it moved (a change made through another
        replica). One query per interval, however many nodes wait."""
        first = True
        while not (self.closing or self.watch_stop.is_set()):
            try:
                epoch = await self.config_epoch()
            except Exception as err:  # a store hiccup: try again next tick
                log.warning("epoch watcher: %s: %s", type(err).__name__, err)
            else:
                if epoch > self.epoch_seen:
                    self.epoch_seen = epoch
                    if not first:
                        self.wake_long_polls()
                first = False
            # Stopped by `watch_stop`, never cancelled inside a query: a psycopg
            # connection cancelled mid-statement can stall the pool's close.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval_s):
                    await self.watch_stop.wait()

    async def config_epoch(self) -> int:
        row = await self.db.fetchone("SELECT value FROM settings WHERE name = 'config_epoch'")
        assert row is not None
        return int(row["value"])


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return str(uuid.uuid4())


def fmt_ts(ms: int | None) -> str | None:
    if ms is None:
        return None
    moment = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def fmt_ts_us(us: int) -> str:
    moment = dt.datetime.fromtimestamp(us / 1_000_000, tz=dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(value: object) -> dt.datetime:
    """An ISO 8601 date-time with a zone (Z or ±hh:mm); ValueError otherwise."""
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError("must be an ISO 8601 date-time string")
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("must include a time zone (e.g. Z)")
    try:
        utc = moment.astimezone(dt.UTC)
    except OverflowError as err:
        raise ValueError("must lie between the years 1 and 9999 in UTC") from err
    if not 1970 <= utc.year <= 9999:
        raise ValueError("must lie between 1970 and 9999 (UTC)")
    return moment


def ts_to_ms(moment: dt.datetime) -> int:
    return int(moment.timestamp() * 1000)


def is_uuid(value: object) -> bool:
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


def is_region_code(value: object) -> bool:
    """A region is three lowercase ASCII letters (iad, fra, lhr)."""
    return (
        isinstance(value, str)
        and len(value) == 3
        and value.isascii()
        and value.isalpha()
        and value.islower()
    )


def require_scope(principal: Principal, *allowed: str) -> None:
    if not principal.scopes & set(allowed):
        raise Forbidden(f"this operation needs the {' or '.join(allowed)} scope")


def account_of(principal: Principal) -> str:
    if principal.account_id is None:
        raise Forbidden("node keys cannot use the management API")
    return principal.account_id


def not_found(kind: str) -> NotFound:
    return NotFound(f"{kind} not found")


def check_id(value: str, kind: str) -> str:
    """Path ids that are not UUIDs cannot name anything: 404 like any unknown id."""
    if not is_uuid(value):
        raise not_found(kind)
    return value.lower()


@dataclass(frozen=True, slots=True)
class Page:
    limit: int
    offset: int

    def wrap(self, items: list[dict[str, Any]], total: int) -> dict[str, Any]:
        end = self.offset + len(items)
        return {
            "items": items,
            "total": total,
            "limit": self.limit,
            "offset": self.offset,
            "next_offset": end if end < total else None,
        }


def parse_int_param(
    query: Mapping[str, list[str]],
    name: str,
    problems: list[dict[str, str]],
    *,
    default: int,
    low: int,
    high: int | None,
) -> int:
    values = query.get(name)
    if not values:
        return default
    raw = values[-1]
    digits = raw[1:] if raw.startswith("-") else raw
    if not (digits.isascii() and digits.isdigit()) or len(raw) > 12:
        problems.append(problem(f"query.{name}", "must be an integer"))
        return default
    value = int(raw)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        problems.append(problem(f"query.{name}", f"must be {bound}"))
        return default
    return value


def parse_page(query: Mapping[str, list[str]], problems: list[dict[str, str]]) -> Page:
    limit = parse_int_param(query, "limit", problems, default=LIMIT_DEFAULT, low=1, high=LIMIT_MAX)
    offset = parse_int_param(query, "offset", problems, default=0, low=0, high=None)
    return Page(limit, offset)


def raise_if(problems: list[dict[str, str]]) -> None:
    if problems:
        raise Invalid(problems)


def body_object(body: object) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise Invalid([problem("body", "must be a JSON object")])
    return body


def unknown_fields(
    body: Mapping[str, Any], allowed: set[str], problems: list[dict[str, str]]
) -> None:
    for key in body:
        if key not in allowed:
            problems.append(problem(f"body.{key}", "unknown field"))


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=False)
