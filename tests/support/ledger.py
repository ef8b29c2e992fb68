"""A client-side ledger of what was sent and a reconciler against what was committed
(docs/RELIABILITY.md, "the promise, as checkable relations").

    ledger = Ledger()                       # ids are "<run>-<n>", run random per ledger
    batch = ledger.records(20, lambda n: {"temp": n})   # JSON records {"id": ..., "temp": ...}
    status = await ledger.post(session, url, batch, headers={"X-API-Key": key})
    ...
    reader = S3Reader(moto.client("s3"), bucket)          # or LocalReader(root / bucket)
    result = await asyncio.to_thread(reconcile, ledger, reader, commits={endpoint_id: items})
    print(result.line())
    assert result.must_be_zero() == {}

Every request is classified once: **ok** (2xx), **fail** (a definite refusal: 4xx, 503,
or a connection that was refused before anything was sent) or **indeterminate**
(timeouts, resets, other 5xx). A record carries a unique id in its JSON body; opaque
records (not JSON, e.g. to provoke a view's `invalid_json`) are recognised by their
exact bytes instead.

`reconcile` reads only what commit manifests name (a manifest is "safe to read"; a
listing may show the objects of an unfinished delivery) and computes:

- `lost_acked`: ok ids missing from the committed raw Parquet            (must be 0)
- `phantoms`: payloads in the raw Parquet nobody sent                    (must be 0)
- `corrupt`: an id whose committed payload differs from what was sent    (must be 0)
- `failed_but_present`: ids of 4xx-refused requests found committed      (must be 0)
- `refused_but_present`: the same for 503 refusals                       (must be 0)
- `seq_gaps`: missing numbers per (node, endpoint, epoch), counted in the
  manifests and in the control plane's commit list                       (must be 0)
- `orphans`: a manifest naming a missing object, or a commit row whose
  manifest is missing                                                    (must be 0)
- `bad_objects`: an artifact whose size or sha256 differs from its manifest (must be 0)
- `unlisted`: objects under the root that no manifest names (0 once deliveries have
  finished; an interrupted delivery may leave one until its retry), `unreported`:
  manifests without a commit row (0 once the outbox is empty);
- `duplicates`: committed copies beyond the first (allowed: at-least-once), and
  `indeterminate_present` / `indeterminate_missing` (either is fine).

Blocking (file and boto3 calls, DuckDB): run `reconcile` with `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import duckdb

from ingest.manifest import Manifest, ManifestError, parse_manifest

OK, FAIL, INDETERMINATE = "ok", "fail", "indeterminate"
SAMPLES_MAX = 10
LOCAL_TEMP_PREFIX = ".edgemq-tmp-"
MUST_BE_ZERO = (
    "lost_acked",
    "phantoms",
    "corrupt",
    "failed_but_present",
    "refused_but_present",
    "seq_gaps",
    "orphans",
    "bad_objects",
)


# ------------------------------------------------------------------ the ledger
@dataclass(frozen=True, slots=True)
class Record:
    id: str
    payload: bytes
    """Exactly the bytes sent for this record (one NDJSON line without the newline)."""


@dataclass(frozen=True, slots=True)
class Request:
    ids: tuple[str, ...]
    outcome: str  # OK | FAIL | INDETERMINATE
    status: int | None  # HTTP status, None when no response arrived
    error: str | None


def classify(status: int | None, error: BaseException | None = None) -> str:
    """ok / fail / indeterminate for one HTTP request (docs/RELIABILITY.md)."""
    if error is not None:
        if isinstance(error, aiohttp.ClientConnectorError):
            return FAIL  # never connected: nothing was sent
        return INDETERMINATE
    assert status is not None
    if 200 <= status < 300:
        return OK
    if 400 <= status < 500 or status == 503:
        return FAIL
    return INDETERMINATE


class Ledger:
    """Ids handed out, records sent, and the outcome of every request."""

    def __init__(self, run: str | None = None) -> None:
        self.run = run or uuid.uuid4().hex[:8]
        self._next = 0
        self.sent: dict[str, Record] = {}
        self.requests: list[Request] = []
        self._opaque: dict[bytes, str] = {}

    def records(
        self, n: int, make: Callable[[int], Mapping[str, Any]] | None = None
    ) -> list[Record]:
        """`n` JSON records, each `{"id": "<run>-<n>", **make(n)}`."""
        out = []
        for _ in range(n):
            number = self._next
            self._next += 1
            rid = f"{self.run}-{number}"
            body = {"id": rid, **(make(number) if make is not None else {})}
            out.append(Record(rid, json.dumps(body, separators=(",", ":")).encode()))
        return out

    def opaque(self, text: str) -> Record:
        """A record that is not JSON; recognised by its exact bytes (made unique here)."""
        number = self._next
        self._next += 1
        rid = f"{self.run}-{number}"
        payload = f"{text} <{rid}>".encode()
        self._opaque[payload] = rid
        return Record(rid, payload)

    def note(
        self,
        batch: Sequence[Record],
        status: int | None,
        error: BaseException | None = None,
    ) -> str:
        """Record one request's outcome for `batch`; returns the class."""
        outcome = classify(status, error)
        for record in batch:
            self.sent[record.id] = record
        self.requests.append(
            Request(
                tuple(r.id for r in batch),
                outcome,
                status,
                None if error is None else f"{type(error).__name__}: {error}",
            )
        )
        return outcome

    @staticmethod
    def ndjson(batch: Sequence[Record]) -> bytes:
        return b"".join(r.payload + b"\n" for r in batch)

    async def post(
        self,
        session: aiohttp.ClientSession,
        url: str,
        batch: Sequence[Record],
        *,
        headers: Mapping[str, str],
        content_type: str = "application/x-ndjson",
        timeout_s: float = 10.0,
    ) -> int | None:
        """POST `batch` (NDJSON, or one octet-stream record) and note the outcome.
        Returns the status, None when no response arrived."""
        body = batch[0].payload if content_type == "application/octet-stream" else None
        if body is None:
            body = self.ndjson(batch)
        elif len(batch) != 1:
            raise ValueError("an octet-stream request carries exactly one record")
        try:
            async with session.post(
                url,
                data=body,
                headers={**headers, "Content-Type": content_type},
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            self.note(batch, None, err)
            return None
        self.note(batch, status)
        return status

    # ------------------------------------------------------------ views of it
    def ids(self, outcome: str, *, statuses: Iterable[int] | None = None) -> set[str]:
        wanted = None if statuses is None else set(statuses)
        out: set[str] = set()
        for request in self.requests:
            if request.outcome == outcome and (wanted is None or request.status in wanted):
                out.update(request.ids)
        return out

    def counts(self) -> dict[str, int]:
        c = collections.Counter(r.outcome for r in self.requests)
        return {k: c.get(k, 0) for k in (OK, FAIL, INDETERMINATE)}

    def identify(self, payload: bytes) -> str | None:
        """The id a committed payload claims (None for payloads nobody sent)."""
        try:
            value = json.loads(payload)
        except ValueError:
            return self._opaque.get(payload)
        if isinstance(value, dict) and isinstance(value.get("id"), str):
            return str(value["id"])
        return None


# ---------------------------------------------------------------- object readers
class ObjectReader(Protocol):
    def list_keys(self) -> list[str]:
        """Every object key under the reader's root (temporary files excluded)."""
        ...

    def read(self, key: str) -> bytes: ...


@dataclass
class LocalReader:
    """Objects of the local store: `root` is `<dir>/<bucket>`."""

    root: Path
    temp_files: int = 0

    def list_keys(self) -> list[str]:
        keys = []
        self.temp_files = 0
        for dirpath, _, names in os.walk(self.root):
            for name in names:
                if name.startswith(LOCAL_TEMP_PREFIX):
                    self.temp_files += 1
                    continue
                path = Path(dirpath, name)
                keys.append(str(path.relative_to(self.root)))
        return sorted(keys)

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()


@dataclass
class S3Reader:
    """Objects of one bucket through a synchronous boto3 S3 client."""

    client: Any
    bucket: str
    prefix: str = ""

    def list_keys(self) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            keys.extend(str(o["Key"]) for o in page.get("Contents", []))
        return sorted(keys)

    def read(self, key: str) -> bytes:
        response = self.client.get_object(Bucket=self.bucket, Key=key)
        with response["Body"] as body:
            return bytes(body.read())


def is_manifest_key(key: str) -> bool:
    parts = key.split("/")
    return len(parts) >= 4 and parts[-4] == "commits" and key.endswith(".json")


def load_manifests(reader: ObjectReader, keys: Iterable[str] | None = None) -> dict[str, Manifest]:
    """Every commit manifest found under the reader's root, by key (blocking)."""
    found = {}
    for key in reader.list_keys() if keys is None else keys:
        if is_manifest_key(key):
            try:
                found[key] = parse_manifest(reader.read(key))
            except ManifestError as err:
                raise AssertionError(f"{key} is not a valid manifest: {err}") from err
    return found


# ---------------------------------------------------------------- reconciliation
@dataclass
class Reconciliation:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    indeterminate: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    manifests: int = 0
    commits: int = 0
    rows: int = 0
    lost_acked: int = 0
    duplicates: int = 0
    phantoms: int = 0
    corrupt: int = 0
    failed_but_present: int = 0
    refused_but_present: int = 0
    indeterminate_present: int = 0
    indeterminate_missing: int = 0
    seq_gaps: int = 0
    orphans: int = 0
    bad_objects: int = 0
    unlisted: int = 0
    unreported: int = 0
    samples: dict[str, list[str]] = field(default_factory=dict)

    def sample(self, what: str, item: str) -> None:
        bucket = self.samples.setdefault(what, [])
        if len(bucket) < SAMPLES_MAX:
            bucket.append(item)

    def must_be_zero(self) -> dict[str, int]:
        """The invariants that do not hold, with their counts ({} when all hold)."""
        return {k: getattr(self, k) for k in MUST_BE_ZERO if getattr(self, k)}

    def line(self) -> str:
        """One JSON line: every count (samples only for what went wrong)."""
        data = asdict(self)
        data["samples"] = {k: v for k, v in self.samples.items() if v}
        return "ledger " + json.dumps(data, sort_keys=True, separators=(",", ":"))


def _gaps(seqs: Iterable[int]) -> list[int]:
    """Numbers missing from 1 to the highest seen: every epoch of a WAL starts its
    segments at 1 (docs/adr/0003), so a lost first segment is a gap too."""
    present = set(seqs)
    if not present:
        return []
    return sorted(set(range(1, max(present) + 1)) - present)


def _raw_rows(reader: ObjectReader, key: str, scratch: str) -> list[tuple[bytes, int, int]]:
    """(payload bytes, segment_seq, frame_index) of every row of a raw Parquet object."""
    path = os.path.join(scratch, "raw.parquet")
    with open(path, "wb") as f:
        f.write(reader.read(key))
    with duckdb.connect() as db:
        rows = db.execute(
            "SELECT payload, payload_bytes, segment_seq, frame_index "
            "FROM read_parquet(?) ORDER BY frame_index",
            [path],
        ).fetchall()
    out = []
    for text, blob, seq, index in rows:
        payload = text.encode() if text is not None else bytes(blob)
        out.append((payload, int(seq), int(index)))
    return out


def reconcile(
    ledger: Ledger,
    reader: ObjectReader,
    *,
    commits: Mapping[str, Sequence[Mapping[str, Any]]],
    manifests: Mapping[str, Manifest] | None = None,
    check_objects: bool = True,
) -> Reconciliation:
    """Compare the ledger with the committed output (blocking; see the module docstring).

    `commits` maps endpoint id → the control plane's commit list items for it;
    `manifests` (key → Manifest) default to every manifest the reader finds.
    """
    result = Reconciliation()
    keys = reader.list_keys()
    existing = set(keys)
    if manifests is None:
        manifests = load_manifests(reader, keys)
    result.manifests = len(manifests)
    result.commits = sum(len(items) for items in commits.values())

    # Objects: every named one exists with the manifest's bytes; nothing else lies around.
    named: set[str] = set()
    for mkey, manifest in manifests.items():
        for artifact in manifest.artifacts:
            named.add(artifact.key)
            if artifact.key not in existing:
                result.orphans += 1
                result.sample("orphans", f"{mkey} names missing {artifact.key}")
            elif check_objects:
                data = reader.read(artifact.key)
                digest = hashlib.sha256(data).hexdigest()
                if len(data) != artifact.bytes or digest != artifact.sha256:
                    result.bad_objects += 1
                    result.sample("bad_objects", artifact.key)
    for key in keys:
        if key not in named and not is_manifest_key(key):
            result.unlisted += 1
            result.sample("unlisted", key)

    # Sequence numbers, and manifests vs commit rows.
    by_segment = {(m.endpoint_id, m.node_id, m.epoch, m.seq): k for k, m in manifests.items()}
    manifest_seqs: dict[tuple[str, str, int], list[int]] = collections.defaultdict(list)
    for m in manifests.values():
        manifest_seqs[(m.endpoint_id, m.node_id, m.epoch)].append(m.seq)
    commit_seqs: dict[tuple[str, str, int], list[int]] = collections.defaultdict(list)
    reported = set()
    for endpoint_id, items in commits.items():
        for c in items:
            segment = (endpoint_id, str(c["node_id"]), int(c["epoch"]), int(c["seq"]))
            commit_seqs[segment[:3]].append(segment[3])
            reported.add(segment)
            found = by_segment.get(segment)
            if found is None or c.get("manifest_key") not in (None, found):
                result.orphans += 1
                result.sample("orphans", f"commit {segment} without manifest")
    for segment, mkey in by_segment.items():
        if segment not in reported:
            result.unreported += 1
            result.sample("unreported", mkey)
    for what, groups in (("manifests", manifest_seqs), ("commits", commit_seqs)):
        for group, seqs in groups.items():
            missing = _gaps(seqs)
            result.seq_gaps += len(missing)
            for seq in missing:
                result.sample("seq_gaps", f"{what} {group} misses {seq}")

    # Records: the raw Parquet of every manifest against the ledger.
    seen: collections.Counter[str] = collections.Counter()
    with tempfile.TemporaryDirectory(prefix="edgemq-reconcile-") as scratch:
        for _, manifest in sorted(manifests.items()):
            for key in manifest.keys("parquet"):
                if key not in existing:
                    continue  # counted as an orphan above
                for payload, seq, index in _raw_rows(reader, key, scratch):
                    result.rows += 1
                    where = f"{manifest.node_id}/{manifest.epoch}/{seq}#{index}"
                    rid = ledger.identify(payload)
                    record = ledger.sent.get(rid) if rid is not None else None
                    if record is None:
                        result.phantoms += 1
                        result.sample("phantoms", f"{where}: {payload[:80]!r}")
                        continue
                    if record.payload != payload:
                        result.corrupt += 1
                        result.sample("corrupt", f"{where}: {record.id}")
                    seen[record.id] += 1

    # A record re-sent after a refusal counts by its best outcome: ok, else
    # indeterminate, else fail.
    ok = ledger.ids(OK)
    indeterminate = ledger.ids(INDETERMINATE) - ok
    fail_4xx = ledger.ids(FAIL, statuses=range(400, 500)) - ok - indeterminate
    fail_503 = ledger.ids(FAIL, statuses=[503]) - ok - indeterminate
    counts = ledger.counts()
    result.requests = counts
    result.sent = len(ledger.sent)
    result.ok, result.failed = len(ok), len(ledger.ids(FAIL) - ok - indeterminate)
    result.indeterminate = len(indeterminate)
    result.duplicates = sum(n - 1 for n in seen.values() if n > 1)
    for rid, n in seen.items():
        if n > 1:
            result.sample("duplicates", f"{rid} x{n}")
    for what, ids in (
        ("lost_acked", ok - seen.keys()),
        ("failed_but_present", fail_4xx & seen.keys()),
        ("refused_but_present", fail_503 & seen.keys()),
    ):
        setattr(result, what, len(ids))
        for rid in sorted(ids)[:SAMPLES_MAX]:
            result.sample(what, rid)
    result.indeterminate_present = len(indeterminate & seen.keys())
    result.indeterminate_missing = len(indeterminate - seen.keys())
    return result


async def reconcile_async(
    ledger: Ledger,
    reader: ObjectReader,
    *,
    commits: Mapping[str, Sequence[Mapping[str, Any]]],
    manifests: Mapping[str, Manifest] | None = None,
    check_objects: bool = True,
) -> Reconciliation:
    """`reconcile` in a worker thread."""
    return await asyncio.to_thread(
        reconcile,
        ledger,
        reader,
        commits=commits,
        manifests=manifests,
        check_objects=check_objects,
    )
