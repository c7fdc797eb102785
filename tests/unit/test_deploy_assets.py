"""The Grafana dashboard queries only metrics that shardctl defines."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import shardctl.core.metrics  # noqa: F401 - registers the metrics

ROOT = Path(__file__).resolve().parents[2]


def test_dashboard_metrics_exist() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/shardctl-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {name for expr in exprs for name in re.findall(r"\b(shardctl_[a-z_]+)", expr)}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    defined = {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("shardctl_")
        for suffix in suffixes[family.type]
    }
    assert used, "the dashboard queries nothing"
    assert used <= defined, f"dashboard uses undefined metrics: {sorted(used - defined)}"
