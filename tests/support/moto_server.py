"""moto's S3/STS/IAM/KMS server as a real separate process for tests.

`moto_server` (session scope) starts `moto_server` on 127.0.0.1 and a free port, waits
until it answers, turns moto's request recorder on (every request the server receives
is appended, headers and body, to a JSON-lines file we can read back) and stops the
process at the end. `moto` (per test) sets base AWS credentials in the environment, so
the control plane's default credential chain finds them, and returns the server.

Import both fixtures into the test module that uses them (they are not in a conftest):

    from tests.support.moto_server import moto_fixture, moto_server_fixture  # noqa: F401

With IAM authentication on (the `iam_auth` fixture turns it off again after the test)
moto enforces signatures, trust policies and role policies; `create_bucket`,
`assume_only_identity` and `create_role` set up the bucket, the caller's identity and
the destination's role for that, and `assume_role_calls` / `access_key_of` read the
recorder back.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest

from tests.support.postgres import free_port

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account: the one the base credentials act in
BASE_KEY_ID = "AKIAEDGEMQTESTBASE01"
BASE_SECRET = "edgemq-test-base-secret"


def _binary() -> str:
    found = os.path.join(os.path.dirname(sys.executable), "moto_server")
    if os.path.exists(found):
        return found
    which = shutil.which("moto_server")
    if which is None:
        raise RuntimeError("moto_server not found (install moto[server])")
    return which


@dataclass
class Recorded:
    """One request as moto's recorder saw it."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.url).path

    def form(self) -> dict[str, str]:
        """The body of a query-protocol call (STS/IAM) as a dict."""
        pairs = urllib.parse.parse_qsl(self.body.decode(), keep_blank_values=True)
        return dict(pairs)


@dataclass
class MotoServer:
    url: str
    root: str
    process: subprocess.Popen[bytes]

    @property
    def recording(self) -> str:
        return os.path.join(self.root, "recording.jsonl")

    @property
    def log(self) -> str:
        return os.path.join(self.root, "moto.log")

    def client(self, service: str, **kwargs: Any) -> Any:
        """A synchronous boto3 client against the server (base credentials unless given)."""
        kwargs.setdefault("aws_access_key_id", BASE_KEY_ID)
        kwargs.setdefault("aws_secret_access_key", BASE_SECRET)
        kwargs.setdefault("region_name", REGION)
        return boto3.session.Session().client(service, endpoint_url=self.url, **kwargs)

    def post(self, path: str, data: bytes = b"") -> bytes:
        req = urllib.request.Request(
            f"{self.url}{path}", data=data, method="POST", headers={"Content-Type": "text/plain"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return bytes(resp.read())

    def set_iam_auth(self, enabled: bool) -> None:
        """moto checks signatures and IAM policies on every request when enabled."""
        self.post("/moto-api/reset-auth", b"0" if enabled else b"inf")

    def requests(self) -> list[Recorded]:
        out = []
        with open(self.recording, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                entry = json.loads(line)
                body = entry.get("body") or ""
                raw = base64.b64decode(body) if entry.get("body_encoded") else body.encode()
                out.append(Recorded(entry["method"], entry["url"], entry["headers"], raw))
        return out

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/data.json", timeout=1) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_moto(timeout_s: float = 30.0) -> MotoServer:
    root = tempfile.mkdtemp(prefix="edgemq-moto-")
    env = {
        **os.environ,
        "MOTO_RECORDER_FILEPATH": os.path.join(root, "recording.jsonl"),
        "MOTO_ENABLE_RECORDING": "true",
        "AWS_ACCESS_KEY_ID": BASE_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": BASE_SECRET,
        "AWS_DEFAULT_REGION": REGION,
    }
    last = "moto_server did not start"
    for _ in range(3):  # the free port can be taken between probing and binding
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        with open(os.path.join(root, "moto.log"), "wb") as log:
            process = subprocess.Popen(
                [_binary(), "-H", "127.0.0.1", "-p", str(port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        server = MotoServer(url, root, process)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and process.poll() is None:
            if _answers(url):
                return server
            time.sleep(0.1)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        with open(server.log, encoding="utf-8", errors="replace") as f:
            last = f.read()[-2000:]
    shutil.rmtree(root, ignore_errors=True)
    raise RuntimeError(f"moto_server did not answer:\n{last}")


@pytest.fixture(scope="session", name="moto_server")
def moto_server_fixture() -> Iterator[MotoServer]:
    server = start_moto()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(name="moto")
def moto_fixture(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL_STS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", BASE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", BASE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return moto_server


@pytest.fixture(name="iam_auth")
def iam_auth_fixture(moto: MotoServer) -> Iterator[MotoServer]:
    """moto checking signatures and IAM policies while the test turns it on
    (`set_iam_auth(True)`); off again afterwards whatever happened."""
    try:
        yield moto
    finally:
        moto.set_iam_auth(False)


# ------------------------------------------------------- buckets, identities, roles
def unique_name(kind: str) -> str:
    """A fresh name (the server, and so its buckets and roles, outlives each test)."""
    return f"edgemq-{kind}-{uuid.uuid4().hex[:12]}"


def role_arn_of(name: str) -> str:
    return f"arn:aws:iam::{ACCOUNT}:role/{name}"


def create_bucket(moto: MotoServer, name: str | None = None, *, versioned: bool = False) -> str:
    """A new bucket (blocking boto3 calls); its name."""
    name = name or unique_name("bucket")
    s3 = moto.client("s3")
    s3.create_bucket(Bucket=name)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def assume_only_identity(moto: MotoServer, monkeypatch: pytest.MonkeyPatch, kind: str) -> str:
    """An IAM user that may assume roles and do nothing else, whose access key becomes
    the base credentials of the code under test (AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY): with IAM authentication on, every S3 call it makes must go
    through an assumed role. Blocking; returns the user's ARN (a trust principal)."""
    iam = moto.client("iam")
    user = unique_name(kind)
    iam.create_user(UserName=user)
    assume = {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"}
    iam.put_user_policy(UserName=user, PolicyName="assume", PolicyDocument=_policy(assume))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    return f"arn:aws:iam::{ACCOUNT}:user/{user}"


def create_role(
    moto: MotoServer,
    *,
    principal: str,
    external_id: str,
    actions: list[str],
    resource: str,
    name: str | None = None,
) -> str:
    """A role `principal` may assume only with `external_id` (the trust policy's
    `sts:ExternalId` condition), allowed `actions` on `resource`. Blocking; its ARN."""
    iam = moto.client("iam")
    name = name or unique_name("role")
    trust = {
        "Effect": "Allow",
        "Principal": {"AWS": principal},
        "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
    }
    iam.create_role(RoleName=name, AssumeRolePolicyDocument=_policy(trust))
    allow = {"Effect": "Allow", "Action": actions, "Resource": resource}
    iam.put_role_policy(RoleName=name, PolicyName="edgemq", PolicyDocument=_policy(allow))
    return role_arn_of(name)


def assume_role_calls(moto: MotoServer, role_arn: str) -> list[dict[str, str]]:
    """The AssumeRole calls moto received for `role_arn`, as forms (RoleArn, ExternalId…)."""
    calls = []
    for r in moto.requests():
        if r.method == "POST" and r.body.startswith(b"Action=AssumeRole"):
            form = r.form()
            if form.get("RoleArn") == role_arn:
                calls.append(form)
    return calls


def access_key_of(request: Recorded) -> str:
    """The access key id a SigV4-signed request was signed with."""
    auth = request.header("Authorization")
    assert auth is not None
    return auth.split("Credential=", 1)[1].split("/", 1)[0]
