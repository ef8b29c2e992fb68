"""Every artifact under deploy/ agrees with the code: variables are real `edgemq` options
whose values the CLI parses, ports are the ports the CLI listens on, probe and scrape
paths are routes of the apps, the WAL volume is where EDGEMQ_DATA_DIR points, stop
timeouts outlast the drain deadline, every metric, label and label value in the
dashboard and alert rules is one the registries export.

Each check returns its problems; the `*_can_fail` tests feed it a mutated copy and
expect the mutation to be named."""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import os
import re
import socket
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestServer

from control.http.app import create_app
from control.server import open_context
from ingest.settings import Limits, NodeSettings

from . import checks
from .promql import read, template_labels
from .sources import (
    DEPLOY,
    ROOT,
    Instruction,
    cli_options,
    code_metrics,
    dockerfile_env,
    effective,
    env_problems,
    k8s_docs,
    read_dockerfile,
    read_env_file,
    read_unit,
    read_yaml_docs,
)

K8S = DEPLOY / "k8s"
MONITORING = DEPLOY / "monitoring"
ENV_FILES = {"node": DEPLOY / "examples/node.env", "control": DEPLOY / "examples/control.env"}
UNITS = {
    "node": DEPLOY / "systemd/edgemq-node.service",
    "control": DEPLOY / "systemd/edgemq-control.service",
}


def _secrets() -> list[dict[str, Any]]:
    return read_yaml_docs(K8S / "secrets.example.yaml")


def _image_env() -> dict[str, str]:
    return dockerfile_env(read_dockerfile(DEPLOY / "Dockerfile"))


@functools.cache
def _jobs() -> frozenset[str]:
    scrape = yaml.safe_load((MONITORING / "prometheus-scrape.yml").read_text())
    jobs = {job["job_name"] for job in scrape["scrape_configs"] if "static_configs" in job}
    # ServiceMonitors name the job after the Service; the pod scrape after the component.
    monitors = [d for d in k8s_docs() if d["kind"] == "ServiceMonitor"]
    return frozenset(jobs | {m["metadata"]["name"] for m in monitors})


# ------------------------------------------------------------ the code's truth
def test_the_code_side_is_read_from_the_code() -> None:
    """The references the checks compare against are not empty or hard-coded."""
    options = cli_options()
    assert {"node", "control", "up"} <= set(options)
    assert options["node"]["EDGEMQ_DATA_DIR"] == "data_dir"
    defaults = NodeSettings(data_dir="d", control_url="u", node_key="k", region="r")
    assert effective("node", {}).drain_deadline_s == defaults.drain_deadline_s
    assert effective("node", {"EDGEMQ_HTTP_PORT": "9"}).http_port == 9
    metrics = code_metrics()
    assert metrics["edgemq_wal_fsync_seconds_bucket"].labels == {"le"}
    assert "edgemq_control_endpoints" in metrics
    from .sources import control_routes, node_routes

    assert ("GET", "/readyz") in node_routes()
    assert ("GET", "/metrics") in control_routes()
    assert ("GET", "/healthz") in control_routes()


# ------------------------------------------------------------ variables
def test_every_edgemq_variable_in_deploy_is_an_option() -> None:
    texts = checks.deploy_texts()
    assert len(texts) >= 12, sorted(texts)
    assert checks.unknown_variables(texts) == []


@pytest.mark.parametrize("command", sorted(ENV_FILES))
def test_example_env_files_parse_as_the_cli_options(command: str) -> None:
    env = read_env_file(ENV_FILES[command])
    assert len(env) >= 6
    assert env_problems(command, env, ENV_FILES[command].name) == []
    # The values reach the parsed arguments (not only the names are right).
    args = effective(command, env)
    for name, value in env.items():
        dest = (cli_options()[""] | cli_options()[command])[name]
        parsed = getattr(args, dest)
        assert parsed == type(parsed)(value), (name, value, parsed)


def test_unknown_or_unparsable_variables_are_named() -> None:
    env = read_env_file(ENV_FILES["node"])
    assert env_problems("node", {**env, "EDGEMQ_HTTP_PROT": "8080"}, "x") != []
    assert env_problems("node", {**env, "EDGEMQ_HTTP_PORT": "eighty"}, "x") != []
    assert env_problems("control", {**env}, "x") != []  # node options for control
    assert checks.unknown_variables({"x": "EDGEMQ_DATA_DIRECTORY=/x"}) != []


# ------------------------------------------------------------ kubernetes
def test_kubernetes_manifests_agree_with_the_code() -> None:
    docs = k8s_docs()
    kinds = sorted(d["kind"] for d in docs)
    for kind in ("Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "ServiceMonitor"):
        assert kind in kinds, kinds
    assert checks.workload_problems(docs, _secrets(), _image_env()) == []
    assert checks.service_problems(docs) == []
    assert checks.kustomization_problems(docs, K8S) == []


def test_kubernetes_shape_the_brief_asks_for() -> None:
    docs = k8s_docs()
    (control,) = [d for d in docs if d["kind"] == "Deployment"]
    (node,) = [d for d in docs if d["kind"] == "StatefulSet"]
    assert control["spec"]["replicas"] == 2
    db = next(
        e
        for e in control["spec"]["template"]["spec"]["containers"][0]["env"]
        if e["name"] == "EDGEMQ_DATABASE_URL"
    )
    assert "secretKeyRef" in db["valueFrom"]
    env = {e["name"]: e for e in node["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "secretKeyRef" in env["EDGEMQ_NODE_KEY"]["valueFrom"]
    assert re.fullmatch(r"[a-z]{3}", env["EDGEMQ_REGION"]["value"])
    ingest = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "edgemq-ingest"
    )
    assert {p["targetPort"] for p in ingest["spec"]["ports"]} == {"http", "mqtt"}
    # MQTT over WebSocket rides on the HTTP port: /mqtt is a node route.
    from .sources import node_routes

    assert ("GET", "/mqtt") in node_routes()


def _node_set(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == "StatefulSet")


def _node_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    container: dict[str, Any] = _node_set(docs)["spec"]["template"]["spec"]["containers"][0]
    return container


def _set_env(c: dict[str, Any], name: str, value: str) -> None:
    c["env"] = [e for e in c["env"] if e["name"] != name] + [{"name": name, "value": value}]


K8S_MUTATIONS: dict[str, Callable[[list[dict[str, Any]]], None]] = {
    "container port": lambda d: _node_container(d)["ports"][0].update(containerPort=9090),
    "env port": lambda d: _set_env(_node_container(d), "EDGEMQ_HTTP_PORT", "9090"),
    "probe path": lambda d: _node_container(d)["readinessProbe"]["httpGet"].update(path="/ready"),
    "probe port": lambda d: _node_container(d)["livenessProbe"]["httpGet"].update(port="admin"),
    "wal mount": lambda d: _node_container(d)["volumeMounts"][0].update(mountPath="/data"),
    "data dir": lambda d: _set_env(_node_container(d), "EDGEMQ_DATA_DIR", "/srv/wal"),
    "grace": lambda d: _node_set(d)["spec"]["template"]["spec"].update(
        terminationGracePeriodSeconds=30
    ),
    "drain": lambda d: _set_env(_node_container(d), "EDGEMQ_DRAIN_DEADLINE_S", "55"),
    "region": lambda d: _set_env(_node_container(d), "EDGEMQ_REGION", "fra"),
    "loopback": lambda d: _set_env(_node_container(d), "EDGEMQ_HOST", "127.0.0.1"),
    "unknown env": lambda d: _set_env(_node_container(d), "EDGEMQ_REGIONS", "iad"),
    "bad value": lambda d: _set_env(_node_container(d), "EDGEMQ_MQTT_PORT", "mqtt"),
    "scrape port": lambda d: _node_set(d)["spec"]["template"]["metadata"]["annotations"].update(
        {"prometheus.io/port": "9100"}
    ),
    "secret key": lambda d: _node_container(d)["env"][2]["valueFrom"]["secretKeyRef"].update(
        key="nodekey"
    ),
    "service target": lambda d: next(
        s for s in d if s["kind"] == "Service" and s["metadata"]["name"] == "edgemq-ingest"
    )["spec"]["ports"][1].update(targetPort="mqtts"),
    "service selector": lambda d: next(s for s in d if s["kind"] == "Service")["spec"][
        "selector"
    ].update({"app.kubernetes.io/component": "nodes"}),
    "monitor selects two": lambda d: next(
        s for s in d if s["kind"] == "Service" and s["metadata"]["name"] == "edgemq-ingest"
    )["metadata"]["labels"].update({"app.kubernetes.io/component": "node"}),
    "monitor path": lambda d: next(s for s in d if s["kind"] == "ServiceMonitor")["spec"][
        "endpoints"
    ][0].update(path="/prometheus"),
    "pdb selector": lambda d: next(s for s in d if s["kind"] == "PodDisruptionBudget")["spec"][
        "selector"
    ]["matchLabels"].update({"app.kubernetes.io/name": "other"}),
    "control sqlite": lambda d: _set_env(
        next(w for w in d if w["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][
            0
        ],
        "EDGEMQ_DATABASE_URL",
        "sqlite:///x.db",
    ),
}


@pytest.mark.parametrize("mutation", sorted(K8S_MUTATIONS))
def test_kubernetes_checks_can_fail(mutation: str) -> None:
    docs = copy.deepcopy(k8s_docs())
    K8S_MUTATIONS[mutation](docs)
    problems = checks.workload_problems(docs, _secrets(), _image_env()) + checks.service_problems(
        docs
    )
    assert problems != [], mutation


def test_the_kustomization_check_can_fail(tmp_path: Path) -> None:
    docs = copy.deepcopy(k8s_docs())
    next(d for d in docs if d["kind"] == "Kustomization")["resources"].remove("node.yaml")
    assert checks.kustomization_problems(docs, K8S) != []


# ------------------------------------------------------------ Dockerfile
def test_the_dockerfile_agrees_with_the_code() -> None:
    instructions = read_dockerfile(DEPLOY / "Dockerfile")
    dockerignore = (ROOT / ".dockerignore").read_text()
    assert checks.dockerfile_problems(instructions, dockerignore) == []
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    assert checks.packaged_sources(instructions, packages) == []
    assert pyproject["project"]["scripts"]["edgemq"] == "edgemq.cli:main"  # the ENTRYPOINT


def _replace(instructions: list[Instruction], keyword: str, args: str) -> list[Instruction]:
    out = copy.deepcopy(instructions)
    last = max(i.stage for i in out)
    for i in out:
        if i.keyword == keyword and i.stage == last:
            i.args = args
    return out


DOCKER_MUTATIONS: dict[str, Callable[[list[Instruction]], list[Instruction]]] = {
    "root": lambda i: _replace(i, "USER", "root"),
    "expose": lambda i: _replace(i, "EXPOSE", "8080 8081"),
    "entrypoint": lambda i: _replace(i, "ENTRYPOINT", '["python", "-m", "edgemq"]'),
    "volume": lambda i: _replace(i, "VOLUME", '["/data"]'),
    "env": lambda i: _replace(i, "ENV", "EDGEMQ_HTTP_PORT=9000"),
    "single stage": lambda i: [x for x in i if x.stage == max(y.stage for y in i)],
    "no healthcheck": lambda i: [x for x in i if x.keyword != "HEALTHCHECK"],
    "copy missing": lambda i: [
        *i,
        Instruction("COPY", "nowhere ./nowhere", max(y.stage for y in i)),
    ],
}


@pytest.mark.parametrize("mutation", sorted(DOCKER_MUTATIONS))
def test_dockerfile_checks_can_fail(mutation: str) -> None:
    instructions = DOCKER_MUTATIONS[mutation](read_dockerfile(DEPLOY / "Dockerfile"))
    assert checks.dockerfile_problems(instructions, (ROOT / ".dockerignore").read_text()) != []


def test_dockerignore_and_package_checks_can_fail() -> None:
    instructions = read_dockerfile(DEPLOY / "Dockerfile")
    assert checks.dockerfile_problems(instructions, "ingest\n") != []
    assert checks.packaged_sources(instructions, ["ingest", "telemetry"]) != []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _healthcheck(env: dict[str, str]) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("EDGEMQ_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DEPLOY / "docker/healthcheck.py"),
        env={**clean, **env},
        stdout=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), 30)


async def test_the_image_healthcheck_probes_a_real_control_plane(tmp_path: Path) -> None:
    closed = str(_free_port())
    async with open_context(f"sqlite:///{tmp_path}/control.db") as ctx:
        server = TestServer(create_app(ctx), host="127.0.0.1")
        await server.start_server()
        try:
            up = {
                "EDGEMQ_PORT": str(server.port),
                "EDGEMQ_HTTP_PORT": closed,
                "EDGEMQ_INGEST_PORT": closed,
                "EDGEMQ_CONTROL_PORT": closed,
                "EDGEMQ_HOST": "0.0.0.0",
            }
            assert await _healthcheck(up) == 0
        finally:
            await server.close()
    down = {
        name: closed
        for name in ("EDGEMQ_PORT", "EDGEMQ_HTTP_PORT", "EDGEMQ_INGEST_PORT", "EDGEMQ_CONTROL_PORT")
    }
    assert await _healthcheck(down) == 1


# ------------------------------------------------------------ systemd
@pytest.mark.parametrize("command", sorted(UNITS))
def test_systemd_units_agree_with_the_code(command: str) -> None:
    unit = read_unit(UNITS[command])
    env = read_env_file(ENV_FILES[command])
    assert checks.unit_problems(unit, command, env, UNITS[command].name) == []


UNIT_MUTATIONS: dict[str, tuple[str, str | None, str | None]] = {
    # name: (key to change, new value, env override "NAME=VALUE")
    "stop timeout": ("TimeoutStopSec", "20s", None),
    "long drain": ("TimeoutStopSec", "60s", "EDGEMQ_DRAIN_DEADLINE_S=55"),
    "read-only data": ("ReadWritePaths", "/var/lib/other", None),
    "data dir elsewhere": ("ReadWritePaths", "/srv", "EDGEMQ_DATA_DIR=/srv/wal"),
    "kill signal": ("KillSignal", "SIGKILL", None),
    "no hardening": ("NoNewPrivileges", "no", None),
    "fd limit": ("LimitNOFILE", "1024", None),
    "wrong command": ("ExecStart", "/opt/edgemq/bin/edgemq control", None),
    "env file": ("EnvironmentFile", "/etc/edgemq/control.env", None),
    "unknown variable": ("User", "edgemq", "EDGEMQ_DRAIN_DEADLINE=5"),
}


@pytest.mark.parametrize("mutation", sorted(UNIT_MUTATIONS))
def test_systemd_checks_can_fail(mutation: str) -> None:
    key, value, override = UNIT_MUTATIONS[mutation]
    unit = read_unit(UNITS["node"])
    if value is not None:
        unit["Service"][key] = [value]
    env = read_env_file(ENV_FILES["node"])
    if override:
        name, _, v = override.partition("=")
        env[name] = v
    assert checks.unit_problems(unit, "node", env, "edgemq-node.service") != [], mutation


# ------------------------------------------------------------ monitoring
def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_problems(doc: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    names: set[str] = set()
    if not isinstance(doc.get("groups"), list) or not doc["groups"]:
        return ["alerts: no groups"]
    for group in doc["groups"]:
        if not group.get("name") or not group.get("rules"):
            problems.append(f"alerts: group {group.get('name')} without name or rules")
            continue
        for rule in group["rules"]:
            name = rule.get("alert", "?")
            if not re.fullmatch(r"EdgeMQ[A-Z]\w+", name) or name in names:
                problems.append(f"alerts: bad or duplicate name {name}")
            names.add(name)
            if set(rule) - {"alert", "expr", "for", "labels", "annotations"}:
                problems.append(f"{name}: unknown keys {set(rule)}")
            if not isinstance(rule.get("expr"), str):
                problems.append(f"{name}: no expr")
                continue
            if "for" in rule and not re.fullmatch(r"\d+[smh]", str(rule["for"])):
                problems.append(f"{name}: `for` {rule['for']} is not a duration")
            if rule.get("labels", {}).get("severity") not in ("critical", "warning"):
                problems.append(f"{name}: severity must be critical or warning")
            if not rule.get("annotations", {}).get("summary"):
                problems.append(f"{name}: no summary annotation")
            reading = read(rule["expr"], name, _jobs())
            problems += reading.problems
            used = template_labels(json.dumps(rule.get("annotations", {})))
            for label in used - reading.labels:
                problems.append(f"{name}: annotation names label {label}, not on its metrics")
    return problems


def test_alert_rules_agree_with_the_code() -> None:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    assert alert_problems(doc) == []
    rules = {r["alert"]: r for r in _alert_rules()}
    # The topics the brief names, each on the metric that measures it.
    topics = {
        "EdgeMQBacklogGrowing": "edgemq_wal_unshipped_bytes",
        "EdgeMQCommitLag": "edgemq_delivery_commit_lag_seconds",
        "EdgeMQIngest503Rate": "edgemq_http_requests_total",
        "EdgeMQFsyncSlow": "edgemq_wal_fsync_seconds_bucket",
        "EdgeMQEndpointDegraded": "edgemq_control_endpoints",
        "EdgeMQNodeDown": "up",
    }
    for alert, metric in topics.items():
        assert metric in read(rules[alert]["expr"], alert, _jobs()).metrics, alert
    # The near-limit threshold is a fraction of the code's 503 bound.
    assert str(Limits().unshipped_bytes_max) in rules["EdgeMQBacklogNearLimit"]["expr"]


ALERT_MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "metric": lambda r: r.update(
        expr=r["expr"].replace("edgemq_wal_unshipped_bytes", "edgemq_wal_unshiped_bytes")
    ),
    "label": lambda r: r.update(expr="sum by (reasn) (rate(edgemq_ingest_rejected_total[5m])) > 0"),
    "matcher label": lambda r: r.update(expr='edgemq_wal_unshipped_bytes{reason="x"} > 0'),
    "status value": lambda r: r.update(expr='max(edgemq_control_endpoints{status="broken"}) > 0'),
    "route regex": lambda r: r.update(
        expr='rate(edgemq_http_requests_total{route=~"/v1/.*"}[5m]) > 0'
    ),
    "job": lambda r: r.update(expr='up{job="edgemq"} == 0'),
    "brackets": lambda r: r.update(expr="sum(rate(edgemq_delivery_commits_total[5m]) > 0"),
    "function": lambda r: r.update(expr="rates(edgemq_delivery_commits_total[5m]) > 0"),
    "no metric": lambda r: r.update(expr="vector(1) > 0"),
    "for": lambda r: r.update({"for": "ten minutes"}),
    "severity": lambda r: r["labels"].update(severity="page"),
    "annotation label": lambda r: r["annotations"].update(summary="{{ $labels.tenant }} is slow"),
    "no expr": lambda r: r.pop("expr"),
}


@pytest.mark.parametrize("mutation", sorted(ALERT_MUTATIONS))
def test_alert_checks_can_fail(mutation: str) -> None:
    doc = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    rule = next(
        r for g in doc["groups"] for r in g["rules"] if r["alert"] == "EdgeMQBacklogGrowing"
    )
    ALERT_MUTATIONS[mutation](rule)
    assert alert_problems(doc) != [], mutation


def dashboard_problems(dash: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        if key not in dash:
            problems.append(f"dashboard: no {key}")
    variables = frozenset(v["name"] for v in dash.get("templating", {}).get("list", []))
    for v in dash.get("templating", {}).get("list", []):
        if v["type"] != "query":
            continue
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", v["query"]["query"])
        if m is None:
            problems.append(f"variable {v['name']}: not label_values(metric, label)")
            continue
        reading = read(m.group(1), f"variable {v['name']}", _jobs(), variables)
        problems += reading.problems
        if m.group(2) not in reading.labels:
            problems.append(f"variable {v['name']}: label {m.group(2)} is not on the metric")
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)):
        problems.append("dashboard: duplicate panel ids")
    graphs = [p for p in dash.get("panels", []) if p.get("type") != "row"]
    if not graphs:
        problems.append("dashboard: no panels")
    for p in graphs:
        where = f"panel {p.get('title')!r}"
        grid = p.get("gridPos", {})
        if not (grid.get("w", 0) > 0 and grid.get("x", 0) + grid.get("w", 0) <= 24):
            problems.append(f"{where}: gridPos {grid} outside 24 columns")
        if p.get("datasource", {}).get("uid") != "${datasource}":
            problems.append(f"{where}: not on the $datasource variable")
        if not p.get("targets"):
            problems.append(f"{where}: no targets")
        for t in p.get("targets", []):
            reading = read(t.get("expr", ""), where, _jobs(), variables)
            problems += reading.problems
            allowed = reading.outer_by if reading.outer_by is not None else reading.labels
            for label in template_labels(t.get("legendFormat", "")) - allowed:
                problems.append(f"{where}: legend names {label}, not in the result")
    return problems


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return data


def test_the_dashboard_agrees_with_the_code() -> None:
    dash = _dashboard()
    assert dashboard_problems(dash) == []
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    # The panels the brief names.
    for metric in (
        "edgemq_ingest_records_total",
        "edgemq_ingest_rejected_total",
        "edgemq_wal_fsync_seconds_bucket",
        "edgemq_wal_unshipped_bytes",
        "edgemq_delivery_backlog_segments",
        "edgemq_delivery_commit_lag_seconds",
        "edgemq_delivery_retries_total",
        "edgemq_mqtt_connections",
        "edgemq_control_http_requests_total",
        "edgemq_control_endpoints",
    ):
        assert metric in exprs, metric


def _first_target(dash: dict[str, Any]) -> dict[str, Any]:
    target: dict[str, Any] = next(p for p in dash["panels"] if p.get("targets"))["targets"][0]
    return target


DASHBOARD_MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "metric": lambda d: _first_target(d).update(expr="sum(rate(edgemq_ingest_record_total[5m]))"),
    "legend": lambda d: _first_target(d).update(legendFormat="{{transprt}}"),
    "variable": lambda d: _first_target(d).update(
        expr='sum(edgemq_wal_unshipped_bytes{instance=~"$node"})'
    ),
    "variable query": lambda d: d["templating"]["list"][1]["query"].update(
        query="label_values(edgemq_config_epoch, endpoint)"
    ),
    "grid": lambda d: next(p for p in d["panels"] if p.get("targets"))["gridPos"].update(x=20, w=8),
    "datasource": lambda d: next(p for p in d["panels"] if p.get("targets"))["datasource"].update(
        uid="prom-1"
    ),
    "ids": lambda d: d["panels"][2].update(id=d["panels"][1]["id"]),
}


@pytest.mark.parametrize("mutation", sorted(DASHBOARD_MUTATIONS))
def test_dashboard_checks_can_fail(mutation: str) -> None:
    dash = copy.deepcopy(_dashboard())
    DASHBOARD_MUTATIONS[mutation](dash)
    assert dashboard_problems(dash) != [], mutation
