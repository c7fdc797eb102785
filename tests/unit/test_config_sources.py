"""Configuration sources: unknown sections, the order of secret sources, and one rule
for secrets placed in librdkafka option maps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cdc.options import load_cdc_options
from shardctl.core.config import ConfigError, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SHARDCTL_"):
            monkeypatch.delenv(key)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shardctl.toml"
    path.write_text(text)
    return path


def test_a_misspelt_section_is_refused_naming_it(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[cdcc]\nsource = "orders"\n')
    with pytest.raises(ConfigError, match=r"unknown section \[cdcc\]") as caught:
        load_settings(path)
    assert str(path) in str(caught.value)
    with pytest.raises(ConfigError, match=r"unknown section \[cdcc\]"):
        load_cdc_options(path)


def test_an_unknown_top_level_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting `clustr`"):
        load_settings(_toml(tmp_path, 'clustr = "prod"\n'))


def test_a_section_that_is_not_a_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"`etcd` must be a table \(\[etcd\]\)"):
        load_settings(_toml(tmp_path, 'etcd = "127.0.0.1:2379"\n'))


def test_every_known_section_is_accepted(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        'cluster = "prod"\n[etcd]\n[kafka]\n[mysql]\n[nsq]\n[cdc]\nsource = "orders"\n',
    )
    assert load_settings(path).cluster == "prod"
    assert load_cdc_options(path).source == "orders"


def test_an_unknown_setting_in_the_cdc_section_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cdc\.sorce: unknown setting"):
        load_cdc_options(_toml(tmp_path, '[cdc]\nsorce = "orders"\n'))


# (section, setting, environment prefix); etcd needs a user name with its password.
SECRETS = [
    ("etcd", "password", "SHARDCTL_ETCD_"),
    ("kafka", "sasl_password", "SHARDCTL_KAFKA_"),
    ("kafka", "ssl_key_password", "SHARDCTL_KAFKA_"),
    ("mysql", "password", "SHARDCTL_MYSQL_"),
]


def _secret(settings: Settings, section: str, name: str) -> str | None:
    value = getattr(getattr(settings, section), name)
    return None if value is None else str(value.get_secret_value())


def _file_with(tmp_path: Path, name: str, content: str) -> Path:
    path = tmp_path / name
    path.write_text(content + "\n")
    return path


@pytest.mark.parametrize(("section", "name", "prefix"), SECRETS)
def test_the_environment_file_form_beats_the_toml_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, name: str, prefix: str
) -> None:
    user = 'username = "u"\n' if section == "etcd" else ""
    path = _toml(tmp_path, f'[{section}]\n{user}{name} = "from-toml"\n')
    monkeypatch.setenv(f"{prefix}{name.upper()}_FILE", str(_file_with(tmp_path, "s", "from-env")))
    assert _secret(load_settings(path), section, name) == "from-env"


@pytest.mark.parametrize(("section", "name", "prefix"), SECRETS)
def test_the_environment_value_beats_the_toml_file_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, name: str, prefix: str
) -> None:
    user = 'username = "u"\n' if section == "etcd" else ""
    toml_file = _file_with(tmp_path, "t", "from-toml-file")
    path = _toml(tmp_path, f'[{section}]\n{user}{name}_file = "{toml_file}"\n')
    monkeypatch.setenv(f"{prefix}{name.upper()}", "from-env")
    assert _secret(load_settings(path), section, name) == "from-env"


@pytest.mark.parametrize(("section", "name", "prefix"), SECRETS)
def test_within_one_source_the_value_beats_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, name: str, prefix: str
) -> None:
    user = 'username = "u"\n' if section == "etcd" else ""
    toml_file = _file_with(tmp_path, "t", "from-toml-file")
    path = _toml(tmp_path, f'[{section}]\n{user}{name} = "v"\n{name}_file = "{toml_file}"\n')
    assert _secret(load_settings(path), section, name) == "v"
    monkeypatch.setenv(f"{prefix}{name.upper()}", "env-value")
    monkeypatch.setenv(f"{prefix}{name.upper()}_FILE", str(_file_with(tmp_path, "e", "env-file")))
    assert _secret(load_settings(path), section, name) == "env-value"


@pytest.mark.parametrize("option", ["sasl.password", "ssl.key.password", "ssl.key.pem"])
def test_secrets_are_refused_in_cdc_kafka_options_as_in_kafka_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    path = _toml(tmp_path, f'[cdc.kafka_options]\n"{option}" = "leaked-value"\n')
    with pytest.raises(ConfigError) as caught:
        load_cdc_options(path)
    assert f"cdc.kafka_options.{option}" in str(caught.value)
    assert "SHARDCTL_KAFKA_SASL_PASSWORD" in str(caught.value)
    assert "leaked-value" not in str(caught.value)

    monkeypatch.setenv("SHARDCTL_CDC_KAFKA_OPTIONS", f'{{"{option}": "leaked-value"}}')
    with pytest.raises(ConfigError, match=f"cdc.kafka_options.{option}"):
        load_cdc_options()


def test_harmless_cdc_kafka_options_pass(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[cdc.kafka_options]\n"message.max.bytes" = "20000"\n')
    assert load_cdc_options(path).kafka_options == {"message.max.bytes": "20000"}
