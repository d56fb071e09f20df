"""contrib/: the Prometheus alerting rules and the Grafana dashboard.

promtool (Debian's `prometheus` package, installed by `make setup-dev`) checks the
rules and runs their unit tests; every query of the rules and of the dashboard
must name only metrics that a real `/metrics` scrape of the daemon's endpoint
holds, so a renamed metric cannot leave a dead panel or an alert that never fires.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from test_metrics import fetch, free_port, full_metrics

from dynscreen.control.metrics import start_server

from conftest import require

REPO = Path(__file__).resolve().parent.parent
RULES = REPO / "contrib" / "prometheus" / "dynscreen.rules.yml"
RULE_TESTS = REPO / "contrib" / "prometheus" / "dynscreen.rules.test.yml"
DASHBOARD = REPO / "contrib" / "grafana" / "dynscreen.json"
ALERTS = {
    "DynscreenDown", "DynscreenHeartbeatStale", "DynscreenLogSourceSilent",
    "DynscreenBlockTableNearFull", "DynscreenNoticesFailing", "DynscreenFleetDegraded",
}
# Series Prometheus makes itself, not the daemon: the scrape's health.
PROMETHEUS_OWN = {"up"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
             "unless", "bool", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, labels or keywords)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, $variables)
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges, subqueries
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", e):
        if e[m.end():].lstrip().startswith("(") or m[0].lower() in _KEYWORDS:
            continue  # a function call, or an operator word
        names.add(m[0])
    return names


def test_metric_names_reads_promql() -> None:
    assert metric_names('sum by (reason, le) (rate(a_total{x="y", z=~"b c"}[5m])) / b') == {
        "a_total", "b"}
    assert metric_names("histogram_quantile(0.95, rate(h_bucket[5m])) > 1e3") == {"h_bucket"}
    assert metric_names("time() - t_seconds > 30 and on (instance) u == bool 1") == {
        "t_seconds", "u"}
    assert metric_names("increase(c_total[30m] offset 1h) > 0 or up == 0") == {"c_total", "up"}


def exported_names() -> set[str]:
    """Every sample name of a real scrape of the metrics endpoint (all parts running)."""
    m = full_metrics()
    port = free_port()
    server = start_server(m, f"127.0.0.1:{port}")
    assert server is not None
    try:
        text = fetch(f"http://127.0.0.1:{port}/metrics")
    finally:
        server.close()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def rule_exprs() -> dict[str, str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r["expr"] for g in doc["groups"] for r in g["rules"]}


def dashboard_exprs() -> list[str]:
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((\w+), *\w+\)", query)
            assert m is not None, f"variable {var['name']}: unexpected query {query!r}"
            exprs.append(m[1])
    return exprs


def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool not installed (Debian package prometheus: "
            "`make setup-dev`)")
    assert path is not None
    return path


def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_rules_pass_promtool_check() -> None:
    r = run_promtool("check", "rules", RULES.name, cwd=RULES.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in r.stdout


def test_rules_unit_tests_pass() -> None:
    """Each alert fires when it should, and not before (dynscreen.rules.test.yml)."""
    r = run_promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_the_alerts_the_issue_asks_for() -> None:
    assert set(rule_exprs()) == ALERTS


def test_rules_name_only_exported_metrics() -> None:
    exported = exported_names()
    for alert, expr in rule_exprs().items():
        names = metric_names(expr)
        assert names - PROMETHEUS_OWN, f"{alert}: no dynscreen metric in {expr!r}"
        missing = names - exported - PROMETHEUS_OWN
        assert not missing, f"{alert}: {sorted(missing)} not exported ({expr!r})"


def test_dashboard_queries_name_only_exported_metrics() -> None:
    exported = exported_names()
    exprs = dashboard_exprs()
    assert len(exprs) > 20
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        missing = names - exported
        assert not missing, f"{sorted(missing)} not exported ({expr!r})"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query, as a recording rule ($instance given a value)."""
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(dashboard_exprs()):
        expr = expr.replace("$instance", "gw1:9466")
        lines += [f"      - record: dashboard:query{i}", f"        expr: {json.dumps(expr)}"]
    rules = tmp_path / "dashboard.rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    r = run_promtool("check", "rules", rules.name, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
