"""Check that the Helm chart, rendered with its default values, holds what deploy/k8s
holds: the same objects (kind and name), and for each the same spec, compared
after dropping what the chart adds on purpose (its instance and version labels, the
Job's hook annotations) and what it leaves out (the Secret: the chart names an
existing one instead of creating it; the worker's replica count, which the
autoscaler owns).

    python compare_chart.py RENDERED_YAML K8S_MANIFEST...
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

CHART_LABELS = ("app.kubernetes.io/instance", "app.kubernetes.io/version", "helm.sh/chart")


def _strip(value: Any) -> Any:
    """`value` without the chart's own labels and annotations, recursively."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in CHART_LABELS or key.startswith("helm.sh/"):
                continue
            out[key] = _strip(item)
        return out
    if isinstance(value, list):
        return [_strip(item) for item in value]
    return value


def _objects(paths: list[Path]) -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    doc = _strip(doc)
    spec = dict(doc.get("spec", {}))
    if doc["kind"] == "Deployment" and doc["metadata"]["name"].endswith("-worker"):
        spec.pop("replicas", None)
    return {"kind": doc["kind"], "spec": spec, "data": doc.get("data")}


def main(rendered: Path, manifests: list[Path]) -> int:
    chart = _objects([rendered])
    k8s = {key: doc for key, doc in _objects(manifests).items() if key[0] != "Secret"}
    problems = [f"{kind} {name}: not in the chart" for kind, name in k8s.keys() - chart.keys()]
    problems += [f"{kind} {name}: not in deploy/k8s" for kind, name in chart.keys() - k8s.keys()]
    for key, doc in k8s.items():
        if key in chart and _comparable(chart[key]) != _comparable(doc):
            problems.append(
                f"{key[0]} {key[1]} differs:\n  chart: {_comparable(chart[key])}\n"
                f"  k8s:   {_comparable(doc)}"
            )
    for problem in problems:
        print(f"compare-chart: {problem}", file=sys.stderr)
    if not problems:
        print(f"helm: the chart renders the {len(k8s)} objects of deploy/k8s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]))
