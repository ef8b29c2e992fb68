"""What the deploy checks compare: the artifacts under deploy/ (parsed) and the truth in
the code (the CLI's parser and defaults, the node's and control plane's route tables,
the metric registries)."""

from __future__ import annotations

import argparse
import asyncio
import configparser
import functools
import json
import os
import re
import shlex
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every series


# ------------------------------------------------------------------ the CLI
@contextmanager
def edgemq_env(env: dict[str, str]) -> Iterator[None]:
    """os.environ with exactly `env` as its EDGEMQ_* variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEMQ_")}
    with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
        yield


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("edgemq's parser has no subcommands")


@functools.cache
def cli_options() -> dict[str, dict[str, str]]:
    """Per command (`""` for the global options): EDGEMQ_* name → argparse dest."""
    from edgemq.cli import build_parser
    from edgemq.options import env_name

    with edgemq_env({}):
        parser = build_parser()

    def options(p: argparse.ArgumentParser) -> dict[str, str]:
        return {
            env_name(opt): action.dest
            for action in p._actions
            for opt in action.option_strings
            if opt.startswith("--") and opt != "--help"
        }

    table = {"": options(parser)}
    for name, sub in _commands(parser).items():
        table[name] = options(sub)
    return table


def known_variables() -> set[str]:
    return {name for options in cli_options().values() for name in options}


def effective(command: str, env: dict[str, str]) -> argparse.Namespace:
    """What `edgemq <command>` runs with when its environment holds `env` (the real
    parser: EDGEMQ_* values are converted by the options' types, SystemExit if not)."""
    from edgemq.cli import build_parser

    with edgemq_env(env):
        return build_parser().parse_args([command])


def env_problems(command: str, env: dict[str, str], where: str) -> list[str]:
    """Names that are not options of `command`, values its parser refuses."""
    allowed = cli_options()[""] | cli_options()[command]
    problems = [
        f"{where}: {name} is not an option of `edgemq {command}`"
        for name in env
        if name.startswith("EDGEMQ_") and name not in allowed
    ]
    try:
        effective(command, {k: v for k, v in env.items() if k in allowed})
    except (SystemExit, ValueError, TypeError) as err:
        problems.append(f"{where}: `edgemq {command}` cannot parse its environment: {err!r}")
    return problems


# ------------------------------------------------------------- route tables
@functools.cache
def node_routes() -> frozenset[tuple[str, str]]:
    """(method, path) of the node's HTTP app, built by `ingest.http_app.build_app`."""
    from ingest.http_app import build_app
    from ingest.node import Node
    from ingest.settings import NodeSettings

    async def build() -> frozenset[tuple[str, str]]:
        with tempfile.TemporaryDirectory() as tmp:
            settings = NodeSettings(
                data_dir=os.path.join(tmp, "never-created"),
                control_url="http://127.0.0.1:9",
                node_key="unused",
                region="tst",
            )
            node = Node(settings)
            try:
                app = build_app(node)
                return frozenset(
                    (r.method, r.resource.canonical)
                    for r in app.router.routes()
                    if r.resource is not None
                )
            finally:
                node._executor.shutdown()

    return asyncio.run(build())


@functools.cache
def control_routes() -> frozenset[tuple[str, str]]:
    """(method, path) of the control plane's app (`control.http.app.create_app`)."""
    from control.http.app import create_app
    from control.server import open_context

    async def build() -> frozenset[tuple[str, str]]:
        with tempfile.TemporaryDirectory() as tmp:
            async with open_context(f"sqlite:///{tmp}/control.db") as ctx:
                app = create_app(ctx)
                return frozenset(
                    (r.method, r.resource.canonical)
                    for r in app.router.routes()
                    if r.resource is not None
                )

    return asyncio.run(build())


def routes_of(command: str) -> frozenset[tuple[str, str]]:
    return {"node": node_routes, "control": control_routes}[command]()


# ----------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Metric:
    family: str
    kind: str
    labels: frozenset[str]
    samples: frozenset[str] = field(default_factory=frozenset)


_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}


def _registry_metrics(registry: CollectorRegistry) -> dict[str, Metric]:
    out: dict[str, Metric] = {}
    # prometheus_client keeps label names on the collector; families of labelled
    # metrics without children have no samples to read them from.
    for collector in list(registry._collector_to_names):
        name, kind = collector._name, collector._type  # type: ignore[attr-defined]
        labels = frozenset(collector._labelnames)  # type: ignore[attr-defined]
        if kind == "histogram":
            labels |= {"le"}
        samples = frozenset(name + suffix for suffix in _SUFFIXES[kind])
        for sample in samples:
            out[sample] = Metric(name, kind, labels, samples)
    return out


@functools.cache
def code_metrics() -> dict[str, Metric]:
    """Every sample name the node and the control plane export → its metric."""
    from control.http.metrics import ControlMetrics
    from ingest.metrics import NodeMetrics

    node = _registry_metrics(NodeMetrics().registry)
    control = _registry_metrics(ControlMetrics().registry)
    assert not set(node) & set(control), "node and control plane share a metric name"
    # `up` is Prometheus's own per-target series.
    return {**node, **control, "up": Metric("up", "gauge", frozenset())}


# ---------------------------------------------------------------- artifacts
def read_env_file(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}:{number}: not NAME=VALUE"
        env[name.strip()] = value.strip()
    return env


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A systemd unit: section → key → values (keys may repeat)."""
    units: dict[str, dict[str, list[str]]] = {}
    section = None
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = units.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert section is not None, f"{path.name}:{number}: outside a section"
        assert sep, f"{path.name}:{number}: {raw!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    # configparser (strict off) agrees on the sections: a sanity check of the format.
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.read_string(path.read_text())
    assert set(parser.sections()) == set(units), path.name
    return units


def read_yaml_docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def k8s_docs() -> list[dict[str, Any]]:
    return [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) for doc in read_yaml_docs(path)]


@dataclass
class Instruction:
    keyword: str
    args: str
    stage: int


def read_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined; `stage` counts FROMs (0-based)."""
    out: list[Instruction] = []
    pending = ""
    stage = -1
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
    return out


def dockerfile_env(instructions: list[Instruction]) -> dict[str, str]:
    """ENV of the final stage."""
    last = max(i.stage for i in instructions)
    env: dict[str, str] = {}
    for i in instructions:
        if i.keyword == "ENV" and i.stage == last:
            for token in shlex.split(i.args):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), args
    return [str(v) for v in value]


def duration_s(text: str) -> float:
    """systemd time span (`90`, `60s`, `1min 30s`, `2m`) in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text.strip())
    assert parts, text
    assert "".join(n + u for n, u in parts) == text.replace(" ", ""), text
    for number, unit in parts:
        total += float(number) * units[unit]
    return total
