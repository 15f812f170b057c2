"""Monitoring as shipped: the alert rules pass promtool's tests, and the rules and the dashboard name only metrics the app exposes."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests.graphql_stub import ACCOUNT_ID, ANALYTICS_TOKEN, GraphqlStub
from tests.servers import ROOT, app_env, wait_until

pytestmark = pytest.mark.integration

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ice-servers.json"
METRIC = re.compile(r"\bice_[a-z0-9_]+")
LABELS = {"source", "outcome", "provider", "event", "status", "le"}  # fixed words only: never a user, an address or a secret


def test_the_alert_rules_are_valid_and_pass_their_promtool_tests():
    checked = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0 and "SUCCESS: 9 rules found" in checked.stdout, checked.stdout + checked.stderr
    tested = subprocess.run(["promtool", "test", "rules", "alerts.test.yml"], cwd=RULES.parent, capture_output=True, text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def expressions() -> dict[str, str]:
    """Return every PromQL expression shipped: the rules' and the dashboard's, by where they are."""
    found = {rule["alert"]: rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            found[f"{panel['title']} {target['refId']}"] = target["expr"]
    return found


def test_the_dashboard_shows_what_an_operator_watches():
    titles = {panel["title"] for panel in json.loads(DASHBOARD.read_text())["panels"]}
    assert {"Answers by source", "Shared-cache events", "Upstream latency", "Upstream requests by provider and outcome"} <= titles
    assert {"Credential's remaining life", "TURN egress against the ceiling", "Refusals by status"} <= titles


def test_every_metric_the_rules_and_the_dashboard_name_is_one_the_app_exposes(start_host, cloudflare, redis_url):
    with GraphqlStub() as graphql:
        graphql.egress = 850_000_000
        env = app_env(
            cloudflare.base_url,
            redis_url,
            ICE_RATE_LIMIT="2 per minute",
            ICE_EGRESS_LIMIT_GB="1",
            CLOUDFLARE_ACCOUNT_ID=ACCOUNT_ID,
            CLOUDFLARE_ANALYTICS_TOKEN=ANALYTICS_TOKEN,
            CLOUDFLARE_GRAPHQL_URL=graphql.url,
            ICE_USAGE_CHECK_INTERVAL="1",
        )
        host = start_host(env)
        statuses = [host.get().status_code for _ in range(3)]  # one address: the third is over the limit
        assert statuses == [200, 200, 429]

        def exposed() -> dict[str, set[str]]:
            """Return each sample name /metrics exposes, with its label names."""
            names: dict[str, set[str]] = {}
            for line in host.get("/metrics").text.splitlines():
                if line and not line.startswith("#"):
                    name, _, labels = line.partition("{")
                    name = name.split(" ")[0]
                    names.setdefault(name, set()).update(re.findall(r'([a-z_]+)="', labels))
            return names

        wait_until(lambda: host.get().status_code and "ice_turn_egress_bytes" in exposed(), 20, interval=0.5, what="a reading")
        names = exposed()
    named = {name: set(METRIC.findall(expression)) for name, expression in expressions().items()}
    missing = {where: sorted(metrics - set(names)) for where, metrics in named.items() if metrics - set(names)}
    assert missing == {}
    assert set().union(*named.values()) >= {"ice_requests_total", "ice_refusals_total", "ice_turn_egress_bytes", "ice_store_fallback"}
    assert all(labels <= LABELS for name, labels in names.items() if name.startswith("ice_")), names
