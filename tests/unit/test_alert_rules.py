"""The alert rules are valid and do what their unit tests say (`promtool`, from Debian's
`prometheus` package, which `scripts/services up` installs), and they and the dashboard read
only the service's own metrics (tests/e2e/test_pipeline_metrics.py finds each one in a scrape)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from support import ALERT_RULES, ops_expressions, promql_metric_names, recorded_names

RULE_TESTS = ALERT_RULES.with_name("alerts.test.yml")


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `scripts/services up` installs it (Debian's prometheus)"
    return found


@pytest.mark.parametrize(
    "command",
    [
        ["check", "rules", ALERT_RULES.name],
        ["test", "rules", RULE_TESTS.name],
        ["check", "config", "prometheus.yml"],
    ],
)
def test_promtool(command: list[str]) -> None:
    done = subprocess.run(
        [promtool(), *command],
        check=False,
        cwd=ALERT_RULES.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_has_a_unit_test_and_a_runbook_entry() -> None:
    import yaml

    rules = yaml.safe_load(ALERT_RULES.read_text())
    alerts = {
        rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule
    }
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts - tested == set(), "alerts with no test that makes them fire"
    # Each alert links its runbook section (the slow burn shares the fast one's), which exists.
    readme = (ALERT_RULES.parents[2] / "README.md").read_text()
    headings = {
        line[5:].strip().lower() for line in readme.splitlines() if line.startswith("#### ")
    }
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                section = rule["alert"].lower().removesuffix("slow")
                assert rule["annotations"]["runbook"] == f"README.md#{section}", rule["alert"]
                assert section in headings, f"no runbook section for {rule['alert']}"


def test_rules_and_dashboard_read_only_the_service_metrics() -> None:
    names = set().union(*(promql_metric_names(expr) for expr in ops_expressions()))
    assert names, "no metric found: the extraction is broken"
    foreign = {n for n in names if not n.startswith("lifecycle_")} - recorded_names() - {"time"}
    assert foreign == set()


def test_the_name_extraction_skips_functions_labels_and_keywords() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(a_bucket{le="1.0"}[5m]))) '
        "and on (relay) (time() - max by (relay) (b_seconds)) > 300"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b_seconds"}
