"""A small PromQL reader for the dashboard and alert checks: which metrics, labels and
label values an expression uses, each checked against the code's registries. Not a full
parser (promtool is the real one; deploy/README.md), but it finds misspelt metrics,
labels a metric does not have, label values the code never sets and unbalanced
brackets."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .sources import TARGET_LABELS, Metric, code_metrics, node_routes

FUNCTIONS = frozenset(
    "rate irate increase deriv delta sum max min avg count topk bottomk histogram_quantile "
    "min_over_time max_over_time avg_over_time absent absent_over_time clamp_min clamp_max "
    "time vector scalar abs round changes resets label_replace".split()
)
KEYWORDS = frozenset(
    "by without on ignoring group_left group_right and or unless bool offset".split()
)
AGGREGATIONS = frozenset("sum max min avg count topk bottomk".split())
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
IDENT = re.compile(r"[a-zA-Z_:][\w:]*")
GRAFANA_BUILTINS = frozenset({"__rate_interval", "__interval", "__range"})


def label_domains() -> dict[tuple[str, str], frozenset[str]]:
    """(metric family, label) → every value the code can set."""
    from control.http.metrics import NODE_STATES
    from control.services.endpoints import STATUSES

    return {
        ("edgemq_control_endpoints", "status"): frozenset(STATUSES),
        ("edgemq_control_nodes", "state"): frozenset(NODE_STATES),
        ("edgemq_http_requests", "route"): frozenset(p for _, p in node_routes()),
    }


@dataclass
class Reading:
    metrics: dict[str, Metric] = field(default_factory=dict)
    outer_by: frozenset[str] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def labels(self) -> frozenset[str]:
        return frozenset().union(TARGET_LABELS, *(m.labels for m in self.metrics.values()))


def _balanced(expr: str) -> bool:
    stack: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


def read(
    expr: str, where: str, jobs: frozenset[str], variables: frozenset[str] = frozenset()
) -> Reading:
    known = code_metrics()
    r = Reading()
    if not _balanced(expr):
        r.problems.append(f"{where}: unbalanced brackets in {expr!r}")
        return r
    for name in re.findall(r"\$(\w+)", expr):
        if name not in variables | GRAFANA_BUILTINS:
            r.problems.append(f"{where}: ${name} is not a dashboard variable")
    text = re.sub(r"\$\w+", "1m", expr)
    selectors = SELECTOR.findall(text)
    text = SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    grouping = GROUPING.findall(text)
    head = re.match(r"\s*(\w+)\s+by\s*\(([^)]*)\)", text)
    if head and head.group(1) in AGGREGATIONS:
        r.outer_by = frozenset(x.strip() for x in head.group(2).split(",") if x.strip())
    text = GROUPING.sub(" ", text)
    text = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", " ", text)
    for match in IDENT.finditer(text):
        name = match.group()
        follows = text[match.end() :].lstrip()[:1]
        if name in KEYWORDS:
            continue
        if follows == "(":
            if name not in FUNCTIONS:
                r.problems.append(f"{where}: unknown function {name}")
        elif name in known:
            r.metrics[name] = known[name]
        else:
            r.problems.append(f"{where}: {name} is not a metric the code exports")
    if not r.metrics:
        r.problems.append(f"{where}: {expr!r} references no metric")
    domains = label_domains()
    for metric, body in selectors:
        m = known.get(metric)
        for label, op, value in MATCHER.findall(body):
            if m is not None and label not in m.labels | TARGET_LABELS:
                r.problems.append(f"{where}: {metric} has no label {label}")
                continue
            domain = jobs if label == "job" else domains.get((m.family, label)) if m else None
            if domain is None or op not in ("=", "=~"):
                continue
            hits = [v for v in domain if (v == value if op == "=" else re.fullmatch(value, v))]
            if not hits:
                r.problems.append(
                    f"{where}: {metric}{{{label}{op}{value!r}}} matches nothing the code sets"
                )
    for _, names in grouping:
        for label in (x.strip() for x in names.split(",") if x.strip()):
            if label not in r.labels:
                r.problems.append(
                    f"{where}: grouping label {label} is on no metric of the expression"
                )
    return r


def template_labels(text: str) -> set[str]:
    """Labels named by `{{ $labels.x }}` (alert annotations) or `{{x}}` (legends)."""
    return set(re.findall(r"\{\{\s*\$labels\.(\w+)\s*\}\}", text)) | set(
        re.findall(r"\{\{\s*(\w+)\s*\}\}", text)
    )
