"""Every SHARDCTL_* variable the deploy files set is one that shardctl reads: settings
ignore an environment variable they do not know, so a misspelt one in a manifest
would be dropped silently and the process would run on a default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_origin

from pydantic import BaseModel
from pydantic_settings import BaseSettings

from cdc.options import CdcOptions
from shardctl.cli.coordination import WORKER_ID_ENV
from shardctl.core.config import SECTIONS
from workers.sinks.postgres import PostgresSinkSettings
from workers.sinks.sql import SqlSinkSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_FILES = [
    ROOT / "Dockerfile",
    *sorted((ROOT / "deploy" / "compose").rglob("*.yml")),
    *sorted((ROOT / "deploy" / "k8s").rglob("*.yaml")),
    *sorted((ROOT / "deploy" / "helm").rglob("*.yaml")),
    *sorted((ROOT / "deploy" / "helm").rglob("*.tpl")),
]
# Read outside the settings models: the config file, the cluster, the metrics port
# option's envvar, the worker id.
STANDALONE = {"SHARDCTL_CONFIG", "SHARDCTL_CLUSTER", "SHARDCTL_METRICS_PORT", WORKER_ID_ENV}
VARIABLE = re.compile(r"\bSHARDCTL_[A-Z0-9_]+\b")


def variables_of(model: type[BaseSettings]) -> set[str]:
    """The environment variables a settings model reads, nested tables included."""
    prefix = str(model.model_config.get("env_prefix", ""))
    names = set()
    for name, info in model.model_fields.items():
        names.add(f"{prefix}{name}".upper())
        nested = info.annotation
        plain_class = get_origin(nested) is None and isinstance(nested, type)
        if plain_class and issubclass(nested, BaseModel):
            names.update(f"{prefix}{name}__{inner}".upper() for inner in nested.model_fields)
    return names


def known_variables() -> set[str]:
    known = set(STANDALONE)
    for model in (*SECTIONS, CdcOptions, SqlSinkSettings, PostgresSinkSettings):
        known |= variables_of(model)
    return known


def test_the_known_variables_include_the_nested_and_the_worker_ones() -> None:
    known = known_variables()
    assert "SHARDCTL_ETCD_TLS__CA_FILE" in known
    assert "SHARDCTL_WORKER_BATCH_SIZE" in known
    assert "SHARDCTL_ETCD_ENDPOINT" not in known


def test_every_variable_of_the_deploy_files_is_read() -> None:
    known = known_variables()
    used = {
        (path.relative_to(ROOT).as_posix(), name)
        for path in DEPLOY_FILES
        for name in VARIABLE.findall(path.read_text())
    }
    assert {name for _, name in used} >= {"SHARDCTL_ETCD_ENDPOINTS", WORKER_ID_ENV}
    unknown = sorted((where, name) for where, name in used if name not in known)
    assert unknown == [], f"variables nothing reads: {unknown}"
