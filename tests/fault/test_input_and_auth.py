"""Hostile input and hostile credentials against a node process (docs/RELIABILITY.md,
INP-02, AUTH-01, AUTH-02). The node runs as `edgemq node` (tests/support/processes.py)
with a 1 MiB body limit and 3 s header and body deadlines; the control plane runs in
this process (tests/support/stack.py) with two tenants, A ("acme") and B ("globex").

INP-02, the HTTP edge-case table: every case is sent as raw bytes on its own
connection (what a client library would refuse to send is exactly what matters here):
body-level cases (oversize declared and chunked, gzip and zstd bombs, 10^5-deep
nesting, invalid UTF-8, wrong or missing content types and codings, bad JSON and
RecordIO, too many records) and protocol-level ones (Content-Length with
Transfer-Encoding, two Content-Lengths, bad chunked framing, huge and too many headers,
obsolete line folding, bare LF, HTTP/0.9-style and non-HTTP garbage). Each must answer
a 4xx in the JSON error shape — or, for bytes that are not HTTP at all, may instead
close the connection without an answer (the report names which) — and write nothing:
the targeted endpoint's WAL directory stays empty (0 bytes). A valid request to another
endpoint at the end proves the WAL check sees writes.

AUTH-01, the credential attack matrix: alg none, HS256 keyed with the RS256 public key
PEM, a flipped signature bit, another token's signature, PS256/RS512 with the real key,
another key under the real kid, an unknown or missing kid, a `jku` header, expired, a
future `nbf` or `iat`, a wrong issuer, missing claims, a revoked key (revoked through
the API; the node's snapshot moves on), a metrics-only key, Basic auth, and tokens with
the metrics or admin scope (403). Every one is sent as a request head declaring a
1 MB body that never comes: the refusal must arrive well before the body deadline,
with nothing of the body sent. The positive control, a valid key's head, gets no
answer in that time (the node is waiting for the body).

AUTH-02, cross-account: tenant B's valid key and token on tenant A's endpoint answer
exactly what an unknown endpoint answers (status, body, content type), also by Host
label; B's admin token on A's control-plane resources (endpoint, destination, key,
commits, views, bindings) answers exactly what an unknown id answers, and A's
resources are unchanged afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import zstandard
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from control.server import open_context
from control.services import keys
from control.services.common import ControlSettings
from tests.fault.harness import REPORTS
from tests.support.postgres import free_port
from tests.support.processes import NodeChild
from tests.support.report import report
from tests.support.stack import ControlPlane, control_plane, wait_for

KIB = 1024
MIB = 1024 * KIB
BODY_BYTES_MAX = 1 * MIB
HEADER_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 3.0
ANSWER_S = 1.5
"""A refusal decided from the head arrives within this (half the body deadline)."""
DECLARED_BYTES = 1_000_000
"""The body a head-only request declares (within the limit) and never sends."""
EXCHANGE_TIMEOUT_S = 15.0
NDJSON = "application/x-ndjson"


def report_line(scenario: str, **figures: Any) -> dict[str, Any]:
    """The scenario's REPORT line, also repeated in the session's terminal summary."""
    line = report(scenario, **figures)
    REPORTS.append(line)
    return line


# ------------------------------------------------------------------------ the stack
@dataclass
class Stack:
    cp: ControlPlane
    other: ControlPlane
    """Tenant B (same control plane, its own admin key)."""
    node: NodeChild
    destination: str
    accepting: str
    """A's endpoint for the positive controls: accepted requests go here."""
    refusing: str
    """A's endpoint that only ever receives refused requests: its WAL stays empty."""
    foreign: str
    """B's endpoint."""
    foreign_destination: str
    revocable: dict[str, Any]
    """A's ingest key made before the node started (`id`, `api_key`), for revocation."""

    @property
    def port(self) -> int:
        return self.node.http_port

    def wal_bytes(self, endpoint_id: str) -> int:
        directory = self.node.data_dir / "wal" / endpoint_id
        if not directory.is_dir():
            return 0
        return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())

    def head(self, path: str | None = None, **headers: str | None) -> str:
        """A request head (without the final CRLF) to the refusing endpoint, with A's key
        unless `headers` say otherwise; `None` values drop a header."""
        fields = {
            "Host": "node",
            "X-API-Key": self.cp.api_key,
            "Content-Type": NDJSON,
            "Connection": "close",
        }
        fields.update({k.replace("_", "-"): v for k, v in headers.items()})
        lines = [f"POST {path or '/ingest/' + self.refusing} HTTP/1.1"]
        lines += [f"{k}: {v}" for k, v in fields.items() if v is not None]
        return "\r\n".join(lines) + "\r\n"


async def other_account(cp: ControlPlane) -> ControlPlane:
    """Tenant B with its own admin key, made in the store the way the operator CLI does."""
    async with open_context(cp.database_url, ControlSettings()) as ctx:
        account = await keys.create_account(ctx, "globex")
        key = await keys.insert_key(
            ctx,
            account_id=account["id"],
            name="globex",
            owner=None,
            scopes=["ingest", "metrics", "admin"],
        )
    return ControlPlane(cp.url, cp.database_url, cp.session, account["id"], key["api_key"])


@asynccontextmanager
async def running_stack(tmp: Path) -> AsyncIterator[Stack]:
    async with control_plane(str(tmp)) as cp:
        dest = await cp.local_destination(str(tmp / "objects"))
        accepting = await cp.endpoint(dest["id"])
        refusing = await cp.endpoint(dest["id"])
        other = await other_account(cp)
        foreign_dest = await other.local_destination(str(tmp / "globex"))
        foreign = await other.endpoint(foreign_dest["id"])
        revocable = await cp.call(
            "POST", "/v1/api-keys", {"name": "revoke-me", "scopes": ["ingest"]}
        )
        node = NodeChild(
            data_dir=tmp / "node",
            control_url=cp.url,
            node_key=cp.node_key,
            http_port=free_port(),
            env={
                "EDGEMQ_BODY_BYTES_MAX": str(BODY_BYTES_MAX),
                "EDGEMQ_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
                "EDGEMQ_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            },
        )
        try:
            node.start()
            await node.wait_ready(cp.session)
            yield Stack(
                cp,
                other,
                node,
                dest["id"],
                accepting["id"],
                refusing["id"],
                foreign["id"],
                foreign_dest["id"],
                revocable,
            )
            assert await node.terminate(timeout_s=60) == 0, node.log_tail()
        finally:
            await node.close()


# ------------------------------------------------------------------- raw exchanges
@dataclass
class Answer:
    status: int | None
    """None: the connection closed without an answer."""
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    elapsed_s: float = 0.0
    error: str | None = None

    def json_error(self) -> dict[str, Any] | None:
        """The `error` object when the body is the JSON error shape, else None."""
        if not self.headers.get("content-type", "").startswith("application/json"):
            return None
        try:
            value = json.loads(self.body)
        except ValueError:
            return None
        if not isinstance(value, dict) or set(value) != {"error"}:
            return None
        error = value["error"]
        if not isinstance(error, dict) or error.get("status") != self.status:
            return None
        if not (isinstance(error.get("code"), str) and isinstance(error.get("message"), str)):
            return None
        return error


def parse_answer(raw: bytes) -> Answer:
    """The final (non-1xx) answer in `raw`; status None when there is none."""
    while raw.startswith(b"HTTP/"):
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        status_line, *lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        if 100 <= status < 200:
            raw = rest
            continue
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", len(rest)))
        return Answer(status, headers, rest[:length])
    return Answer(None, body=raw[:200])


async def exchange(port: int, data: bytes) -> Answer:
    """Send `data` on a new connection, read until the node closes it."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    raw = b""
    error = None
    try:
        writer.write(data)
        try:
            await writer.drain()
        except ConnectionError as err:  # the node answered and closed mid-body
            error = f"{type(err).__name__}"
        async with asyncio.timeout(EXCHANGE_TIMEOUT_S):
            while chunk := await reader.read(65536):
                raw += chunk
    except ConnectionResetError as err:
        error = f"{type(err).__name__}"
    except TimeoutError:
        error = "no close within the timeout"
    finally:
        writer.close()
    answer = parse_answer(raw)
    answer.elapsed_s = loop.time() - started
    answer.error = (
        error if answer.status is None or error == "no close within the timeout" else None
    )
    return answer


async def head_only(port: int, head: bytes, wait_s: float = ANSWER_S) -> Answer:
    """Send a request head declaring a body, never the body; the answer that arrives
    within `wait_s` (status None when none did)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        raw = b""
        try:
            async with asyncio.timeout(wait_s):
                while b"\r\n\r\n" not in raw or not _complete(raw):
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    raw += chunk
        except TimeoutError:
            pass
    finally:
        writer.close()
    answer = parse_answer(raw)
    answer.elapsed_s = loop.time() - started
    return answer


def _complete(raw: bytes) -> bool:
    head, _, rest = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(rest) >= int(value.strip())
    return True


# ---------------------------------------------------------------------- INP-02
@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[Stack], bytes]
    status: int | None = None
    """The exact 4xx expected; None: any 4xx."""
    code: str | None = None
    garbage: bool = False
    """Not HTTP at all: closing without an answer is also fine."""


def body_request(
    body: bytes,
    content_type: str | None = NDJSON,
    *,
    encoding: str | None = None,
    chunked: bool = False,
) -> Callable[[Stack], bytes]:
    def build(st: Stack) -> bytes:
        head = st.head(Content_Type=content_type, Content_Encoding=encoding)
        if chunked:
            pieces = [body[i : i + 65536] for i in range(0, len(body), 65536)]
            framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
            return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + framed
        return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    return build


def raw_head(extra: str, body: bytes = b"") -> Callable[[Stack], bytes]:
    """A's head to the refusing endpoint plus `extra` header lines (ending the head
    is up to `extra`), then `body`."""
    return lambda st: (st.head() + extra).encode() + body


def deep_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


ONE = b'{"n": 1}\n'

INP_CASES = [
    # body level: the handler's checks
    Case(
        "declared body over the limit",
        body_request(b"x" * (BODY_BYTES_MAX + 1), "application/octet-stream"),
        413,
        "body_too_large",
    ),
    Case(
        "chunked body over the limit",
        body_request(b'{"pad": "' + b"c" * BODY_BYTES_MAX + b'"}\n', chunked=True),
        413,
        "body_too_large",
    ),
    Case(
        "gzip bomb (64 MiB of newlines)",
        body_request(gzip.compress(b"\n" * (64 * MIB), 9), encoding="gzip"),
        413,
        "body_too_large",
    ),
    Case(
        "zstd bomb (256 MiB of newlines)",
        body_request(zstandard.ZstdCompressor().compress(b"\n" * (256 * MIB)), encoding="zstd"),
        413,
        "body_too_large",
    ),
    Case(
        "10^5-deep arrays (application/json)",
        body_request(b"[" * 100_000 + b"]" * 100_000, "application/json"),
        400,
        "invalid_json",
    ),
    Case(
        "10^5-deep objects in an NDJSON line",
        body_request(ONE + deep_objects(100_000) + b"\n"),
        400,
        "invalid_json",
    ),
    Case(
        "10^5-deep nesting, gzip-compressed",
        body_request(gzip.compress(b"[" * 100_000 + b"]" * 100_000), encoding="gzip"),
        400,
        "invalid_json",
    ),
    Case("invalid UTF-8 (0xFF)", body_request(ONE + b'{"s": "\xff"}\n'), 400, "invalid_json"),
    Case(
        "overlong UTF-8 encoding of '/'",
        body_request(b'{"s": "\xc0\xaf"}\n'),
        400,
        "invalid_json",
    ),
    Case(
        "UTF-8-encoded surrogate (CESU-8)",
        body_request(b'{"s": "\xed\xa0\x80"}', "application/json"),
        400,
        "invalid_json",
    ),
    Case("text/plain", body_request(ONE, "text/plain"), 415, "unsupported_media_type"),
    Case(
        "multipart/form-data",
        body_request(ONE, "multipart/form-data; boundary=x"),
        415,
        "unsupported_media_type",
    ),
    Case(
        "JSON in latin-1",
        body_request(ONE, "application/json; charset=latin-1"),
        415,
        "unsupported_media_type",
    ),
    Case("no Content-Type", body_request(ONE, None), 415, "unsupported_media_type"),
    Case(
        "two content codings",
        body_request(gzip.compress(ONE), encoding="gzip, zstd"),
        415,
        "unsupported_encoding",
    ),
    Case("Content-Encoding: br", body_request(ONE, encoding="br"), 415, "unsupported_encoding"),
    Case(
        "gzip declared, plain body",
        body_request(ONE, encoding="gzip"),
        400,
        "bad_encoding",
    ),
    Case("truncated JSON", body_request(b'{"n": 1\n'), 400, "invalid_json"),
    Case("NaN literal", body_request(b'{"n": NaN}\n'), 400, "invalid_json"),
    Case("trailing comma", body_request(b'{"n": [1,]}\n'), 400, "invalid_json"),
    Case("empty body", body_request(b""), 400, "empty_body"),
    Case("blank lines only", body_request(b"\n \n\t\n"), 400, "empty_body"),
    Case(
        "RecordIO zero-length record",
        body_request(b"0\n\n", "application/x-recordio"),
        400,
        "bad_recordio",
    ),
    Case(
        "RecordIO length past the end",
        body_request(b"100\nabc", "application/x-recordio"),
        400,
        "bad_recordio",
    ),
    Case(
        "RecordIO 21-digit length",
        body_request(b"9" * 21 + b"\nabc", "application/x-recordio"),
        400,
        "bad_recordio",
    ),
    Case("100001 records", body_request(b"1\n" * 100_001), 413, "too_many_records"),
    Case(
        "Expect: 200-ok",
        raw_head("Expect: 200-ok\r\nContent-Length: 9\r\n\r\n", ONE),
        417,
        "expectation_failed",
    ),
    # protocol level: the HTTP parser
    Case(
        "Content-Length with Transfer-Encoding (CL.TE)",
        raw_head(
            "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"9\r\n" + ONE + b"\r\n0\r\n\r\n",
        ),
        400,
    ),
    Case(
        "Transfer-Encoding with Content-Length (TE.CL)",
        raw_head(
            "Transfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n",
            b"9\r\n" + ONE + b"\r\n0\r\n\r\n",
        ),
        400,
    ),
    Case(
        "two different Content-Lengths",
        raw_head("Content-Length: 9\r\nContent-Length: 3\r\n\r\n", ONE),
        400,
    ),
    Case(
        "Transfer-Encoding: chunked twice",
        raw_head(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"9\r\n" + ONE + b"\r\n0\r\n\r\n",
        ),
        400,
    ),
    Case(
        "Transfer-Encoding: xchunked",
        raw_head("Transfer-Encoding: xchunked\r\n\r\n", b"9\r\n" + ONE + b"\r\n0\r\n\r\n"),
        400,
    ),
    Case("Content-Length: -1", raw_head("Content-Length: -1\r\n\r\n"), 400),
    Case("Content-Length: +9", raw_head("Content-Length: +9\r\n\r\n", ONE), 400),
    Case("Content-Length: 0x9", raw_head("Content-Length: 0x9\r\n\r\n", ONE), 400),
    Case("space before the colon", raw_head("Content-Length : 9\r\n\r\n", ONE), 400),
    Case(
        "bad chunk size",
        raw_head("Transfer-Encoding: chunked\r\n\r\n", b"zz\r\n" + ONE + b"\r\n0\r\n\r\n"),
        400,
    ),
    Case(
        "chunk size overflow",
        raw_head(
            "Transfer-Encoding: chunked\r\n\r\n",
            b"ffffffffffffffffffff\r\n" + ONE + b"\r\n0\r\n\r\n",
        ),
        400,
    ),
    Case(
        "chunk data without its CRLF",
        raw_head("Transfer-Encoding: chunked\r\n\r\n", b"9\r\n" + ONE + b"XX0\r\n\r\n"),
        400,
    ),
    Case(
        "a 100 KB header",
        raw_head(f"X-Big: {'b' * 100_000}\r\nContent-Length: 9\r\n\r\n", ONE),
        400,
    ),
    Case(
        "1000 headers",
        raw_head("".join(f"X-H{i}: v\r\n" for i in range(1000)) + "Content-Length: 9\r\n\r\n", ONE),
        400,
    ),
    Case(
        "a 100 KB request line",
        lambda st: f"POST /ingest/{'a' * 100_000} HTTP/1.1\r\nHost: node\r\n\r\n".encode(),
        400,
    ),
    Case("obsolete line folding", raw_head("X-F: a\r\n b\r\nContent-Length: 9\r\n\r\n", ONE), 400),
    Case("NUL in a header value", raw_head("X-N: a\x00b\r\nContent-Length: 9\r\n\r\n", ONE), 400),
    Case("Host twice", raw_head("Host: other\r\nContent-Length: 9\r\n\r\n", ONE), 400),
    Case(
        "bare LF line endings",
        lambda st: st.head().replace("\r\n", "\n").encode() + b"Content-Length: 9\n\n" + ONE,
        400,
    ),
    Case(
        "lower-case method",
        lambda st: ("post" + st.head()[4:] + "Content-Length: 9\r\n\r\n").encode() + ONE,
        400,
    ),
    # not HTTP/1.1 at all
    Case("HTTP/0.9-style request", lambda st: b"GET /\r\n\r\n", garbage=True),
    Case("HTTP/2 preface", lambda st: b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", garbage=True),
    Case(
        "TLS ClientHello",
        lambda st: bytes.fromhex("16030100c8010000c40303") + bytes(200),
        garbage=True,
    ),
    Case("binary garbage", lambda st: bytes(range(256)) * 4, garbage=True),
]


def case_violation(case: Case, answer: Answer) -> str | None:
    if answer.error is not None:
        return f"{case.name}: {answer.error}"
    if answer.status is None:
        return None if case.garbage else f"{case.name}: closed without an answer"
    if not 400 <= answer.status < 500:
        return f"{case.name}: status {answer.status}: {answer.body[:200]!r}"
    if case.status is not None and answer.status != case.status:
        return f"{case.name}: status {answer.status}, expected {case.status}: {answer.body[:200]!r}"
    error = answer.json_error()
    if error is None:
        return f"{case.name}: not the JSON error shape: {answer.headers} {answer.body[:200]!r}"
    if case.code is not None and error["code"] != case.code:
        return f"{case.name}: code {error['code']!r}, expected {case.code!r}"
    return None


async def test_the_http_edge_case_table_answers_4xx_json_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """INP-02."""
    async with running_stack(tmp_path) as st:
        outcomes = []
        violations = []
        for case in INP_CASES:
            answer = await exchange(st.port, case.build(st))
            written = await asyncio.to_thread(st.wal_bytes, st.refusing)
            outcomes.append((case, answer, written))
            problem = case_violation(case, answer)
            if problem is not None:
                violations.append(problem)
            if written:
                violations.append(f"{case.name}: {written} WAL bytes written")
        # Positive control: the same raw path with a valid request writes, and the check
        # above would have seen it.
        control = await exchange(
            st.port,
            body_request(ONE)(st).replace(st.refusing.encode(), st.accepting.encode(), 1),
        )
        control_written = await asyncio.to_thread(st.wal_bytes, st.accepting)
        node_alive = st.node.running
    by_case = {
        case.name: (
            f"{answer.status} {(answer.json_error() or {}).get('code', '')}".strip()
            if answer.status is not None
            else "closed without an answer"
        )
        for case, answer, _ in outcomes
    }
    report_line(
        "INP-02",
        cases=len(INP_CASES),
        violations=len(violations),
        refused_4xx=sum(1 for _, a, _ in outcomes if a.status is not None and a.status < 500),
        closed_without_answer=[c.name for c, a, _ in outcomes if a.status is None],
        wal_bytes_written=sum(w for _, _, w in outcomes),
        slowest_answer_s=round(max(a.elapsed_s for _, a, _ in outcomes), 2),
        positive_control={"status": control.status, "wal_bytes": control_written},
        answers=by_case,
    )
    assert violations == [], violations
    assert control.status == 200, control
    assert control_written > 0
    assert node_alive


# ---------------------------------------------------------------------- AUTH-01
def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(claims).encode()),
            b64url(signature),
        ]
    )


@dataclass
class Keys:
    kid: str
    private: rsa.RSAPrivateKey
    public_pem: bytes
    stranger: rsa.RSAPrivateKey


async def signing_keys(cp: ControlPlane) -> Keys:
    """The control plane's active RS256 key (from its store) and a stranger's key."""
    async with open_context(cp.database_url, ControlSettings()) as ctx:
        kid = ctx.signer.kid
        row = await ctx.db.fetchone("SELECT private_pem FROM signing_keys WHERE kid = ?", (kid,))
        assert row is not None
        (jwk,) = [k for k in ctx.signer.jwks["keys"] if k["kid"] == kid]
    private = serialization.load_pem_private_key(row["private_pem"].encode(), None)
    assert isinstance(private, rsa.RSAPrivateKey)
    public = RSAAlgorithm.from_jwk(json.dumps(jwk))
    assert isinstance(public, rsa.RSAPublicKey)
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Keys(kid, private, pem, stranger)


def claims(account_id: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": "edgemq",
        "sub": account_id,
        "scopes": ["ingest"],
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def attack_tokens(k: Keys, account_id: str) -> dict[str, str]:
    """Tokens that must not pass, by name."""
    now = int(time.time())
    good = jwt.encode(claims(account_id), k.private, algorithm="RS256", headers={"kid": k.kid})
    other = jwt.encode(claims(account_id), k.private, algorithm="RS256", headers={"kid": k.kid})
    head, body, sig = good.split(".")
    raw_sig = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    flipped = b64url(raw_sig[:-1] + bytes([raw_sig[-1] ^ 0x01]))
    hs_header = {"alg": "HS256", "typ": "JWT", "kid": k.kid}
    hs_input = f"{b64url(json.dumps(hs_header).encode())}.{b64url(json.dumps(claims(account_id)).encode())}"
    hs_sig = hmac.new(k.public_pem, hs_input.encode(), hashlib.sha256).digest()

    def rs(private: rsa.RSAPrivateKey, headers: dict[str, Any], **changes: Any) -> str:
        return jwt.encode(
            claims(account_id, **changes), private, algorithm="RS256", headers=headers
        )

    return {
        "alg none": unsigned({"alg": "none", "typ": "JWT", "kid": k.kid}, claims(account_id)),
        "alg None": unsigned({"alg": "None", "typ": "JWT", "kid": k.kid}, claims(account_id)),
        "HS256 keyed with the RS256 public key PEM": f"{hs_input}.{b64url(hs_sig)}",
        "RS256 with one signature bit flipped": f"{head}.{body}.{flipped}",
        "RS256 with another token's signature": f"{head}.{body}.{other.split('.')[2]}",
        "PS256 with the real key": jwt.encode(
            claims(account_id), k.private, algorithm="PS256", headers={"kid": k.kid}
        ),
        "RS512 with the real key": jwt.encode(
            claims(account_id), k.private, algorithm="RS512", headers={"kid": k.kid}
        ),
        "another key under the real kid": rs(k.stranger, {"kid": k.kid}),
        "unknown kid": rs(k.stranger, {"kid": "not-a-key"}),
        "no kid": rs(k.private, {}),
        "kid path traversal": rs(k.stranger, {"kid": "../../../../dev/null"}),
        "jku pointing elsewhere": rs(
            k.stranger, {"kid": k.kid, "jku": "http://127.0.0.1:1/jwks.json"}
        ),
        "expired": rs(k.private, {"kid": k.kid}, iat=now - 700, exp=now - 60),
        "nbf in the future": rs(k.private, {"kid": k.kid}, nbf=now + 3600),
        "iat in the future": rs(k.private, {"kid": k.kid}, iat=now + 3600, exp=now + 7200),
        "wrong issuer": rs(k.private, {"kid": k.kid}, iss="someone-else"),
        "no exp": rs(k.private, {"kid": k.kid}, exp=None),
        "no scopes": rs(k.private, {"kid": k.kid}, scopes=None),
        "scopes as a string": rs(k.private, {"kid": k.kid}, scopes="ingest"),
        "garbage": "not.a.token",
    }


@dataclass(frozen=True)
class AuthCase:
    name: str
    headers: dict[str, str | None]
    status: int
    code: str


async def node_epoch(st: Stack) -> int:
    async with st.cp.session.get(st.node.url + "/readyz") as r:
        return int((await r.json())["config_epoch"])


async def node_moves_past(st: Stack, epoch: int) -> float:
    """Wait until the node applied a snapshot newer than `epoch`; how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def applied() -> bool:
        return await node_epoch(st) > epoch

    await wait_for(applied, timeout_s=30, what="the node to apply the new snapshot")
    return loop.time() - started


async def revoked_key(st: Stack) -> tuple[str, float]:
    """A's key that worked (200 on the accepting endpoint), then revoked through the API;
    returned once the node applied the snapshot without it, with how long that took."""
    key = st.revocable["api_key"]
    head = st.head(f"/ingest/{st.accepting}", X_API_Key=key) + f"Content-Length: {len(ONE)}\r\n\r\n"
    worked = await exchange(st.port, head.encode() + ONE)
    assert worked.status == 200, worked
    epoch = await node_epoch(st)
    await st.cp.call("DELETE", f"/v1/api-keys/{st.revocable['id']}", expect=204)
    return key, await node_moves_past(st, epoch)


async def test_forged_expired_revoked_and_misscoped_credentials_are_refused_before_the_body(
    tmp_path: Path,
) -> None:
    """AUTH-01."""
    async with running_stack(tmp_path) as st:
        a = st.cp.account_id
        k = await signing_keys(st.cp)
        revoked, propagation_s = await revoked_key(st)
        metrics_only = await st.cp.call(
            "POST", "/v1/api-keys", {"name": "metrics-only", "scopes": ["metrics"]}
        )
        cases = [
            AuthCase("no credentials", {"X-API-Key": None}, 401, "unauthorized"),
            AuthCase("empty X-API-Key", {"X-API-Key": ""}, 401, "unauthorized"),
            AuthCase("unknown API key", {"X-API-Key": "emq_live_" + "z" * 40}, 401, "unauthorized"),
            AuthCase("revoked API key", {"X-API-Key": revoked}, 401, "unauthorized"),
            AuthCase(
                "metrics-only API key",
                {"X-API-Key": metrics_only["api_key"]},
                401,
                "unauthorized",
            ),
            AuthCase(
                "Basic credentials",
                {"X-API-Key": None, "Authorization": "Basic dXNlcjpwYXNz"},
                401,
                "unauthorized",
            ),
            AuthCase(
                "bogus X-API-Key wins over a valid token",
                {
                    "X-API-Key": "emq_live_" + "y" * 40,
                    "Authorization": f"Bearer {await st.cp.token('ingest')}",
                },
                401,
                "unauthorized",
            ),
            AuthCase(
                "metrics-scope token",
                {"X-API-Key": None, "Authorization": f"Bearer {await st.cp.token('metrics')}"},
                403,
                "forbidden",
            ),
            AuthCase(
                "admin-scope token",
                {"X-API-Key": None, "Authorization": f"Bearer {await st.cp.token('admin')}"},
                403,
                "forbidden",
            ),
        ]
        cases += [
            AuthCase(
                name, {"X-API-Key": None, "Authorization": f"Bearer {token}"}, 401, "unauthorized"
            )
            for name, token in attack_tokens(k, a).items()
        ]
        violations = []
        answers: dict[str, str] = {}
        slowest = 0.0
        for case in cases:
            head = st.head(**case.headers) + f"Content-Length: {DECLARED_BYTES}\r\n\r\n"
            answer = await head_only(st.port, head.encode())
            slowest = max(slowest, answer.elapsed_s)
            error = answer.json_error()
            answers[case.name] = f"{answer.status} {(error or {}).get('code', '')}".strip()
            if answer.status != case.status or error is None or error["code"] != case.code:
                violations.append(f"{case.name}: {answer.status} {answer.body[:200]!r}")
            elif answer.elapsed_s >= ANSWER_S:
                violations.append(f"{case.name}: answered after {answer.elapsed_s:.2f}s")
            elif st.cp.api_key in answer.body.decode(errors="replace"):
                violations.append(f"{case.name}: the answer echoes a key")
        written = await asyncio.to_thread(st.wal_bytes, st.refusing)
        # Positive controls: a valid key's head gets no answer in that time (the node is
        # waiting for the body), and a valid ingest token is accepted.
        waiting = await head_only(
            st.port, (st.head() + f"Content-Length: {DECLARED_BYTES}\r\n\r\n").encode()
        )
        token = await st.cp.token("ingest")
        good = await exchange(
            st.port,
            (
                st.head(f"/ingest/{st.accepting}", X_API_Key=None, Authorization=f"Bearer {token}")
                + f"Content-Length: {len(ONE)}\r\n\r\n"
            ).encode()
            + ONE,
        )
    report_line(
        "AUTH-01",
        cases=len(cases),
        violations=len(violations),
        slowest_refusal_s=round(slowest, 3),
        body_bytes_sent=0,
        declared_body_bytes=DECLARED_BYTES,
        wal_bytes_written=written,
        revocation_applied_after_s=round(propagation_s, 2),
        positive_controls={"valid_key_head_answered": waiting.status, "valid_token": good.status},
        answers=answers,
    )
    assert violations == [], violations
    assert written == 0
    assert waiting.status is None, f"a valid key's head was answered without a body: {waiting}"
    assert good.status == 200, good


NEW_KEY_WAIT_S = 8.0
"""A node long-polls its snapshot: a key change reaches it in well under a second."""


async def test_a_key_created_while_a_node_runs_is_accepted_once_it_has_the_snapshot(
    tmp_path: Path,
) -> None:
    async with running_stack(tmp_path) as st:
        created = await st.cp.call("POST", "/v1/api-keys", {"name": "late", "scopes": ["ingest"]})
        head = (
            st.head(f"/ingest/{st.accepting}", X_API_Key=created["api_key"])
            + f"Content-Length: {len(ONE)}\r\n\r\n"
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NEW_KEY_WAIT_S
        statuses = []
        while loop.time() < deadline:
            answer = await exchange(st.port, head.encode() + ONE)
            statuses.append(answer.status)
            if answer.status == 200:
                break
            await asyncio.sleep(0.25)  # polling the node's view of the key, under a deadline
    assert statuses[-1] == 200, (
        f"still {statuses[-1]} after {NEW_KEY_WAIT_S}s ({len(statuses)} tries)"
    )


# ---------------------------------------------------------------------- AUTH-02
async def control_call(
    cp: ControlPlane, method: str, path: str, body: Any = None, *, scope: str = "admin"
) -> tuple[int, str, str]:
    """(status, content type, body text) of one control-plane call with `cp`'s token."""
    headers = {"Authorization": f"Bearer {await cp.token(scope)}"}
    async with cp.session.request(method, cp.url + path, json=body, headers=headers) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


async def test_another_accounts_credentials_see_an_accounts_resources_as_nonexistent(
    tmp_path: Path,
) -> None:
    """AUTH-02."""
    async with running_stack(tmp_path) as st:
        a, b = st.cp, st.other
        violations: list[str] = []
        unknown = str(uuid.uuid4())

        # Data plane: B's key and token on A's endpoint, A's key on B's endpoint; each
        # against the same credentials on an endpoint id nobody has.
        async def ingest(
            path: str, creds: dict[str, str | None], host: str | None = None
        ) -> Answer:
            headers = dict(creds)
            if host is not None:
                headers["Host"] = host
            head = st.head(path, **headers) + f"Content-Length: {len(ONE)}\r\n\r\n"
            return await exchange(st.port, head.encode() + ONE)

        b_key: dict[str, str | None] = {"X-API-Key": b.api_key}
        b_token: dict[str, str | None] = {
            "X-API-Key": None,
            "Authorization": f"Bearer {await b.token('ingest')}",
        }
        a_key: dict[str, str | None] = {"X-API-Key": a.api_key}
        data_cases = [
            ("B's key on A's endpoint", st.refusing, b_key, False),
            ("B's key on A's endpoint by Host", st.refusing, b_key, True),
            ("B's token on A's endpoint", st.refusing, b_token, False),
            ("A's key on B's endpoint", st.foreign, a_key, False),
        ]
        for name, target, creds, by_host in data_cases:
            if by_host:
                theirs = await ingest("/ingest", creds, host=f"{target}.ingest.example")
                nothing = await ingest("/ingest", creds, host=f"{unknown}.ingest.example")
            else:
                theirs = await ingest(f"/ingest/{target}", creds)
                nothing = await ingest(f"/ingest/{unknown}", creds)
            same = (theirs.status, theirs.headers.get("content-type"), theirs.body) == (
                nothing.status,
                nothing.headers.get("content-type"),
                nothing.body,
            )
            if theirs.status != 404 or not same:
                violations.append(f"{name}: {theirs.status} {theirs.body!r} vs {nothing.body!r}")

        # Control plane: B's admin token on A's resources, against an unknown id.
        a_key_id = next(
            k["id"]
            for k in (await a.call("GET", "/v1/api-keys"))["items"]
            if k.get("revoked_at") is None
        )
        view = await b.published_view(
            "b_view", {"columns": [{"name": "n", "type": "VARCHAR", "path": "$.n"}]}
        )
        before = await a.call("GET", f"/v1/endpoints/{st.refusing}")
        routes = [
            ("GET", "/v1/endpoints/{ep}", None),
            ("PATCH", "/v1/endpoints/{ep}", {"segment_max_age_seconds": 7}),
            ("DELETE", "/v1/endpoints/{ep}", None),
            ("GET", "/v1/endpoints/{ep}/commits", None),
            ("GET", "/v1/endpoints/{ep}/views", None),
            ("POST", "/v1/endpoints/{ep}/views", {"view_id": view["id"]}),
            ("GET", "/v1/destinations/{dest}", None),
            ("PATCH", "/v1/destinations/{dest}", {"name": "taken-over"}),
            ("DELETE", "/v1/destinations/{dest}", None),
            ("POST", "/v1/destinations/{dest}/validate", None),
            ("DELETE", "/v1/api-keys/{key}", None),
        ]
        control_checked = {}
        for method, template, body in routes:
            theirs = await control_call(
                b,
                method,
                template.format(ep=st.refusing, dest=st.destination, key=a_key_id),
                body,
            )
            nothing = await control_call(
                b, method, template.format(ep=unknown, dest=unknown, key=unknown), body
            )
            control_checked[f"{method} {template}"] = theirs[0]
            if theirs[0] != 404 or theirs != nothing:
                violations.append(f"B: {method} {template}: {theirs} vs unknown {nothing}")
        status, _, text = await control_call(
            b, "POST", "/v1/endpoints", {"region": "loc", "destination_id": st.destination}
        )
        control_checked["POST /v1/endpoints with A's destination"] = status
        if status not in (404, 422):
            violations.append(f"B created an endpoint on A's destination: {status} {text}")
        listed = json.dumps(await b.call("GET", "/v1/endpoints"))
        if st.refusing in listed or st.accepting in listed:
            violations.append("B's endpoint list shows A's endpoints")
        listed_keys = json.dumps(await b.call("GET", "/v1/api-keys"))
        if a_key_id in listed_keys:
            violations.append("B's key list shows A's keys")

        # A's resources are untouched and A's key still works.
        after = await a.call("GET", f"/v1/endpoints/{st.refusing}")
        if (after["segment_max_age_seconds"], after.get("deleted_at")) != (
            before["segment_max_age_seconds"],
            before.get("deleted_at"),
        ):
            violations.append(f"A's endpoint changed: {before} -> {after}")
        await a.call("GET", f"/v1/destinations/{st.destination}")
        still = await ingest(f"/ingest/{st.accepting}", a_key)
        written = {
            "A refusing": await asyncio.to_thread(st.wal_bytes, st.refusing),
            "B": await asyncio.to_thread(st.wal_bytes, st.foreign),
        }
    report_line(
        "AUTH-02",
        data_plane_cases=len(data_cases),
        control_plane_routes=len(control_checked),
        violations=len(violations),
        control_plane=control_checked,
        wal_bytes_written=written,
        a_key_still_ingests=still.status,
    )
    assert violations == [], violations
    assert written == {"A refusing": 0, "B": 0}
    assert still.status == 200, still
