"""Write self-contained JSON schemas, one per kind used in deploy/k8s and the rendered
Helm chart, for kubeconform.

The kubernetes-validate package ships the Kubernetes schemas with every definition in
one shared `_definitions.json`, referenced by a path kubeconform cannot follow. This
copies each needed kind's schema with those definitions inlined, under the file names
kubeconform looks for (`<kind>[-<group>]-<version>.json`).

    python k8s_schemas.py OUT_DIR K8S_VERSION MANIFEST...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import kubernetes_validate
import yaml


def kind_file(api_version: str, kind: str) -> str:
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json"


def main(out: Path, k8s_version: str, manifests: list[Path]) -> None:
    source = (
        Path(kubernetes_validate.__file__).parent
        / "kubernetes-json-schema"
        / f"v{k8s_version}-local-strict"
    )
    definitions = json.loads((source / "_definitions.json").read_text())["$defs"]
    out.mkdir(parents=True, exist_ok=True)
    for manifest in manifests:
        for doc in yaml.safe_load_all(manifest.read_text()):
            if doc is None:  # an empty document (rendered templates have some)
                continue
            name = kind_file(doc["apiVersion"], doc["kind"])
            if (out / name).exists():
                continue
            text = (
                (source / name).read_text().replace('"/api/_definitions.json#/$defs/', '"#/$defs/')
            )
            schema = json.loads(text)
            schema["$defs"] = definitions
            (out / name).write_text(json.dumps(schema))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], [Path(p) for p in sys.argv[3:]])
