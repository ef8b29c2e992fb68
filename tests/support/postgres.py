"""A real PostgreSQL server for tests: initdb into a temp dir, pg_ctl start on a free
port, one template database with the schema, one fresh database per test (cloned from
the template). Uses Debian's binaries (package `postgresql`, installed by ./dev test)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass

import psycopg


def pg_bin() -> str | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(candidates[-1]) if candidates else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    root: str
    port: int
    bindir: str
    user_prefix: list[str]

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, template: str | None = None) -> str:
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            clause = f" TEMPLATE {template}" if template else ""
            conn.execute(f"CREATE DATABASE {name}{clause}")  # type: ignore[arg-type]
        return name

    def stop(self) -> None:
        subprocess.run(
            [
                *self.user_prefix,
                f"{self.bindir}/pg_ctl",
                "-D",
                f"{self.root}/data",
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(root: str) -> PostgresServer:
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found (Debian package 'postgresql')")
    os.makedirs(root, exist_ok=True)
    prefix: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    run = {"capture_output": True, "text": True, "timeout": 120, "check": True}
    subprocess.run(
        [
            *prefix,
            f"{bindir}/initdb",
            "-D",
            f"{root}/data",
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ],
        **run,
    )  # type: ignore[call-overload]
    subprocess.run(
        [
            *prefix,
            f"{bindir}/pg_ctl",
            "-D",
            f"{root}/data",
            "-l",
            f"{root}/log",
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=on "
            "-c synchronous_commit=on -c max_connections=200",
            "start",
        ],
        **run,  # type: ignore[call-overload]
    )
    return PostgresServer(root, port, bindir, prefix)
