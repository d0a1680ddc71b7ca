"""The Grafana dashboards are valid and every query names metrics a real scrape of the stack has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.observability.conftest import ObservedStack
from tests.observability.scrape import names, scrape_all
from tests.observability.test_metrics import DECLINED, _wait_for
from tests.support.driver import Driver

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "docker" / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = ROOT / "docker" / "grafana" / "provisioning" / "datasources" / "datasources.yaml"

_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, labels and grouping left out)."""
    text = re.sub(r'"[^"]*"', "", expr)  # label values and strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    found = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group()
        after = text[match.end() :].lstrip()
        if name in _KEYWORDS or after.startswith("(") or text[max(match.start() - 1, 0)] == "$":
            continue
        found.add(name)
    return found


def queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            exprs.append(re.sub(r"label_values\((\w+),.*\)", r"\1", variable["definition"]))
    return exprs


def test_metric_names_are_read_from_promql() -> None:
    expr = 'histogram_quantile(0.9, sum by (le, route) (rate(http_x_bucket{c=~"5.."}[$__rate_interval]))) / 1'
    assert metric_names(expr) == {"http_x_bucket"}
    assert metric_names("max by (upstream) (gateway_state) + on (x) other_total") == {
        "gateway_state",
        "other_total",
    }


def test_dashboards_are_valid_grafana_json() -> None:
    provisioned = {source["uid"] for source in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    assert len(DASHBOARDS) >= 2
    uids = set()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] not in uids, path
        uids.add(dashboard["uid"])
        assert dashboard["title"] and dashboard["panels"], path
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), path
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] in provisioned, (path.name, panel["title"])
            refs = [target["refId"] for target in panel["targets"]]
            assert panel["targets"] and len(refs) == len(set(refs)), (path.name, panel["title"])
            assert all(target["expr"].count("(") == target["expr"].count(")") for target in panel["targets"])


async def test_every_dashboard_query_names_metrics_that_exist(
    observed: ObservedStack, driver: Driver
) -> None:
    # A confirmed and a declined order first, so that every labelled series has appeared.
    payer, decliner = await driver.customer(), await driver.customer(card=DECLINED)
    product = await driver.product(stock=5)
    placed = [await driver.place_order(customer, [(product, 1)]) for customer in (payer, decliner)]
    for response in placed:
        await driver.wait_final(response.json()["id"])
    urls = observed.metrics_urls()
    await _wait_for(urls["notifications"], "ordersaga_notification_deliveries_total", 1)
    scraped = set().union(*(names(samples) for samples in (await scrape_all(urls)).values()))
    missing = {
        (path.name, name)
        for path in DASHBOARDS
        for expr in queries(json.loads(path.read_text()))
        for name in metric_names(expr)
        if name not in scraped
    }
    assert not missing, sorted(missing)
