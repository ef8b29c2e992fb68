"""Checks of the deploy artifacts against the code. Each returns a list of problems (empty
when consistent) and takes parsed data, so the tests can also feed it mutated copies."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .sources import (
    DEPLOY,
    ROOT,
    Instruction,
    cli_options,
    dockerfile_env,
    duration_s,
    effective,
    env_problems,
    exec_form,
    routes_of,
)

STOP_MARGIN_S = 10.0
"""After the drain deadline the node still closes its listeners, tasks and executor."""
PLACEHOLDER_POD_IP = "10.0.0.1"


# ---------------------------------------------------------------- variables
def unknown_variables(texts: dict[str, str]) -> list[str]:
    known = {name for options in cli_options().values() for name in options}
    return [
        f"{where}: {name} is not an `edgemq` option"
        for where, text in texts.items()
        for name in sorted(set(re.findall(r"\bEDGEMQ_[A-Z0-9_]+", text)))
        if name not in known
    ]


# ---------------------------------------------------------------- kubernetes
def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return _by_kind(docs, "Deployment") + _by_kind(docs, "StatefulSet")


def container_env(
    container: dict[str, Any], secrets: list[dict[str, Any]], problems: list[str], where: str
) -> dict[str, str]:
    """The container's env with secretKeyRef values taken from the example Secrets."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = str(item["value"])
            continue
        ref = item.get("valueFrom", {})
        if "secretKeyRef" in ref:
            secret, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
            found = [s for s in secrets if s["metadata"]["name"] == secret]
            if not found or key not in found[0].get("stringData", {}):
                problems.append(f"{where}: {name} reads Secret {secret}/{key}, not in the example")
                continue
            env[name] = str(found[0]["stringData"][key])
        elif ref.get("fieldRef", {}).get("fieldPath") == "status.podIP":
            env[name] = PLACEHOLDER_POD_IP
        else:
            problems.append(f"{where}: {name} has no value this check understands")
    return env


def workload_problems(
    docs: list[dict[str, Any]], secrets: list[dict[str, Any]], image_env: dict[str, str]
) -> list[str]:
    problems: list[str] = []
    for w in workloads(docs):
        where = f"{w['kind']}/{w['metadata']['name']}"
        spec = w["spec"]
        pod = spec["template"]["spec"]
        pod_labels = spec["template"]["metadata"]["labels"]
        if not _matches(spec["selector"]["matchLabels"], pod_labels):
            problems.append(f"{where}: selector does not match the pod labels")
        for c in pod["containers"]:
            command = c["args"][0]
            if command not in cli_options() or not command:
                problems.append(f"{where}: args {c['args']} name no edgemq command")
                continue
            env = container_env(c, secrets, problems, where)
            problems += env_problems(command, env, where)
            try:
                args = effective(command, {**image_env, **env})
            except (SystemExit, ValueError):  # named by env_problems
                continue
            problems += _port_problems(command, args, c, where)
            problems += _probe_problems(command, c, w, where)
            if args.host in ("127.0.0.1", "localhost", "::1"):
                problems.append(
                    f"{where}: listens on {args.host}; probes and Services cannot reach it"
                )
            if command == "node":
                problems += _node_problems(args, w, c, where)
            if command == "control" and not str(args.database_url).startswith("postgres"):
                problems.append(f"{where}: replicas need a PostgreSQL EDGEMQ_DATABASE_URL")
    return problems


def _ports(c: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: int(p["containerPort"]) for p in c.get("ports", [])}


def _port_problems(command: str, args: Any, c: dict[str, Any], where: str) -> list[str]:
    expected = {"http": args.http_port, "mqtt": args.mqtt_port} if command == "node" else {}
    if command == "control":
        expected = {"http": args.port}
    ports = _ports(c)
    return [
        f"{where}: containerPort {name}={ports.get(name)} but edgemq {command} listens on {port}"
        for name, port in expected.items()
        if ports.get(name) != port
    ]


def _probe_problems(command: str, c: dict[str, Any], w: dict[str, Any], where: str) -> list[str]:
    problems = []
    ports = _ports(c)
    routes = routes_of(command)
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = c.get(kind)
        if probe is None:
            if kind != "startupProbe":
                problems.append(f"{where}: no {kind}")
            continue
        get = probe.get("httpGet", {})
        if ("GET", get.get("path")) not in routes:
            problems.append(f"{where}: {kind} path {get.get('path')} is not a GET route")
        port = get.get("port")
        if port not in ports and port not in ports.values():
            problems.append(f"{where}: {kind} port {port} is not a container port")
    notes = w["spec"]["template"]["metadata"].get("annotations", {})
    if notes.get("prometheus.io/scrape") == "true":
        if int(notes.get("prometheus.io/port", 0)) not in ports.values():
            problems.append(f"{where}: scrape port {notes.get('prometheus.io/port')} not served")
        if ("GET", notes.get("prometheus.io/path", "/metrics")) not in routes:
            problems.append(f"{where}: scrape path {notes.get('prometheus.io/path')} not a route")
    return problems


def _node_problems(args: Any, w: dict[str, Any], c: dict[str, Any], where: str) -> list[str]:
    problems = []
    pod = w["spec"]["template"]["spec"]
    claims = {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
    if w["kind"] != "StatefulSet" or not claims:
        problems.append(f"{where}: ingest nodes need a StatefulSet with a volumeClaimTemplate")
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts", [])}
    if mounts.get(str(args.data_dir).rstrip("/")) not in claims:
        problems.append(f"{where}: EDGEMQ_DATA_DIR {args.data_dir} is not a claimed volume mount")
    grace = float(pod.get("terminationGracePeriodSeconds", 30))
    if grace < args.drain_deadline_s + STOP_MARGIN_S:
        problems.append(
            f"{where}: terminationGracePeriodSeconds {grace:g} does not outlast the drain "
            f"deadline {args.drain_deadline_s:g} s (+{STOP_MARGIN_S:g} s to stop)"
        )
    if not args.node_key:
        problems.append(f"{where}: no EDGEMQ_NODE_KEY")
    label = w["spec"]["template"]["metadata"]["labels"].get("edgemq.io/region")
    if label != args.region:
        problems.append(f"{where}: pod label edgemq.io/region={label}, EDGEMQ_REGION={args.region}")
    return problems


def service_problems(docs: list[dict[str, Any]]) -> list[str]:
    problems = []
    pods = [
        (w["spec"]["template"]["metadata"]["labels"], c)
        for w in workloads(docs)
        for c in w["spec"]["template"]["spec"]["containers"]
    ]
    for s in _by_kind(docs, "Service"):
        where = f"Service/{s['metadata']['name']}"
        chosen = [c for labels, c in pods if _matches(s["spec"]["selector"], labels)]
        if not chosen:
            problems.append(f"{where}: selects no workload")
        for port in s["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for c in chosen:
                if target not in _ports(c) and target not in _ports(c).values():
                    problems.append(f"{where}: targetPort {target} is not a container port")
    for pdb in _by_kind(docs, "PodDisruptionBudget"):
        if not any(_matches(pdb["spec"]["selector"]["matchLabels"], labels) for labels, _ in pods):
            problems.append(f"PodDisruptionBudget/{pdb['metadata']['name']}: selects no workload")
    for sm in _by_kind(docs, "ServiceMonitor"):
        where = f"ServiceMonitor/{sm['metadata']['name']}"
        services = [
            s
            for s in _by_kind(docs, "Service")
            if _matches(sm["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        ]
        if len(services) != 1:
            problems.append(f"{where}: selects {len(services)} Services (one expected)")
            continue
        names = {p.get("name") for p in services[0]["spec"]["ports"]}
        command = (
            "node"
            if any(
                _matches(services[0]["spec"]["selector"], la) and c["args"][0] == "node"
                for la, c in pods
            )
            else "control"
        )
        for e in sm["spec"]["endpoints"]:
            if e["port"] not in names:
                problems.append(f"{where}: port {e['port']} is not a port of the Service")
            if ("GET", e.get("path", "/metrics")) not in routes_of(command):
                problems.append(f"{where}: path {e.get('path')} is not a route of {command}")
    return problems


def kustomization_problems(docs: list[dict[str, Any]], k8s_dir: Path) -> list[str]:
    problems = []
    (kustomization,) = _by_kind(docs, "Kustomization")
    listed = set(kustomization["resources"])
    for name in listed:
        if not (k8s_dir / name).is_file():
            problems.append(f"kustomization: {name} does not exist")
    optional = {"kustomization.yaml", "secrets.example.yaml", "servicemonitor.yaml"}
    for path in k8s_dir.glob("*.yaml"):
        if path.name not in listed | optional:
            problems.append(f"kustomization: {path.name} is not listed")
    return problems


# ---------------------------------------------------------------- dockerfile
def dockerfile_problems(instructions: list[Instruction], dockerignore: str) -> list[str]:
    problems: list[str] = []
    last = max(i.stage for i in instructions)
    final = [i for i in instructions if i.stage == last]

    def one(keyword: str) -> Instruction | None:
        found = [i for i in final if i.keyword == keyword]
        if not found:
            problems.append(f"Dockerfile: the runtime stage has no {keyword}")
            return None
        return found[-1]

    if sum(1 for i in instructions if i.keyword == "FROM") < 2:
        problems.append("Dockerfile: not multi-stage")
    user = one("USER")
    if user is not None and user.args.split(":")[0] in ("root", "0"):
        problems.append("Dockerfile: runs as root")
    entry = one("ENTRYPOINT")
    if entry is not None and exec_form(entry.args) != ["edgemq"]:
        problems.append(f'Dockerfile: ENTRYPOINT {entry.args}, not ["edgemq"]')
    health = one("HEALTHCHECK")
    if health is not None and "CMD" not in health.args:
        problems.append("Dockerfile: HEALTHCHECK without CMD")
    env = dockerfile_env(instructions)
    problems += unknown_variables({"Dockerfile ENV": " ".join(env)})
    # Ports: the defaults of every listening option, as the image's ENV leaves them.
    node, control = effective("node", env), effective("control", env)
    wanted = {node.http_port, node.mqtt_port, node.mqtt_tls_port, control.port}
    exposed = {int(p.split("/")[0]) for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
    if exposed != wanted:
        problems.append(
            f"Dockerfile: EXPOSE {sorted(exposed)}, the CLI listens on {sorted(wanted)}"
        )
    volumes = [v for i in final if i.keyword == "VOLUME" for v in exec_form(i.args)]
    if not any(Path(node.data_dir).is_relative_to(v) for v in volumes):
        problems.append(f"Dockerfile: EDGEMQ_DATA_DIR {node.data_dir} is on no VOLUME")
    ignored = {line.strip().rstrip("/") for line in dockerignore.splitlines()}
    for i in instructions:
        if i.keyword == "COPY" and "--from" not in i.args:
            for source in i.args.split()[:-1]:
                if not (ROOT / source).exists():
                    problems.append(f"Dockerfile: COPY {source} does not exist")
                if source.split("/")[0] in ignored or source in ignored:
                    problems.append(f"Dockerfile: COPY {source} is excluded by .dockerignore")
        if i.keyword == "RUN" and "pip install" in i.args and "constraints.txt" not in i.args:
            problems.append("Dockerfile: a pip install without constraints.txt")
    return problems


def packaged_sources(instructions: list[Instruction], packages: list[str]) -> list[str]:
    copied = {
        source.rstrip("/")
        for i in instructions
        if i.keyword == "COPY" and "--from" not in i.args
        for source in i.args.split()[:-1]
    }
    return [f"Dockerfile: package {p} is not copied" for p in packages if p not in copied]


# ---------------------------------------------------------------- systemd
def unit_problems(
    unit: dict[str, dict[str, list[str]]], command: str, env_file: dict[str, str], name: str
) -> list[str]:
    problems: list[str] = []
    service = unit.get("Service", {})

    def value(key: str) -> str | None:
        values = service.get(key)
        return values[-1] if values else None

    exec_start = (value("ExecStart") or "").split()
    if exec_start[-1:] != [command] or not exec_start[0].endswith("/edgemq"):
        problems.append(f"{name}: ExecStart {exec_start} does not run `edgemq {command}`")
    files = service.get("EnvironmentFile", [])
    if not any(Path(f.lstrip("-")).name == f"{command}.env" for f in files):
        problems.append(f"{name}: EnvironmentFile is not the {command}.env example")
    for key, wanted in (
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("KillSignal", "SIGTERM"),
    ):
        if value(key) != wanted:
            problems.append(f"{name}: {key}={value(key)}, expected {wanted}")
    for key in ("LimitNOFILE", "TimeoutStopSec", "User"):
        if value(key) is None:
            problems.append(f"{name}: no {key}")
    problems += env_problems(command, env_file, f"{command}.env")
    try:
        args = effective(command, env_file)
    except (SystemExit, ValueError):  # named by env_problems
        return problems
    writable = [Path(p) for v in service.get("ReadWritePaths", []) for p in v.split()]
    if command == "node":
        data_dir = Path(args.data_dir)
        if not data_dir.is_absolute():
            problems.append(f"{name}: EDGEMQ_DATA_DIR {data_dir} is relative")
        if not any(data_dir.is_relative_to(p) for p in writable):
            problems.append(f"{name}: EDGEMQ_DATA_DIR {data_dir} is not in ReadWritePaths")
        state = [Path("/var/lib") / s for v in service.get("StateDirectory", []) for s in v.split()]
        if not any(data_dir.is_relative_to(s) for s in state):
            problems.append(f"{name}: EDGEMQ_DATA_DIR {data_dir} is not a StateDirectory")
        stop = duration_s(value("TimeoutStopSec") or "0")
        if stop < args.drain_deadline_s + STOP_MARGIN_S:
            problems.append(
                f"{name}: TimeoutStopSec {stop:g} s does not outlast the drain deadline "
                f"{args.drain_deadline_s:g} s (+{STOP_MARGIN_S:g} s to stop)"
            )
        from ingest.settings import MqttSettings

        limit = value("LimitNOFILE") or "0"
        if limit != "infinity" and int(limit) < MqttSettings().connections_max:
            problems.append(f"{name}: LimitNOFILE {limit} is below MQTT connections_max")
    return problems


def deploy_texts() -> dict[str, str]:
    return {
        str(p.relative_to(ROOT)): p.read_text()
        for p in sorted(DEPLOY.rglob("*"))
        if p.is_file() and p.suffix not in (".png", ".svg")
    } | {".dockerignore": (ROOT / ".dockerignore").read_text()}
