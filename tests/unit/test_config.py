"""Configuration: precedence, validation messages that name the setting, secrets kept secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from shardctl.core.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SHARDCTL_"):
            monkeypatch.delenv(key)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shardctl.toml"
    path.write_text(text)
    return path


def test_env_beats_file_and_flags_beat_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _toml(tmp_path, '[mysql]\nport = 3307\nhost = "db.internal"\n')
    assert load_settings(path).mysql.port == 3307
    monkeypatch.setenv("SHARDCTL_MYSQL_PORT", "3308")
    settings = load_settings(path)
    assert settings.mysql.port == 3308
    assert settings.mysql.host == "db.internal"
    assert load_settings(path, overrides={"mysql": {"port": 3309}}).mysql.port == 3309


def test_bad_value_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDCTL_MYSQL_PORT", "70000")
    with pytest.raises(ConfigError, match=r"^mysql\.port: "):
        load_settings()


def test_unknown_setting_in_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"etcd\.endpoint: unknown setting"):
        load_settings(_toml(tmp_path, '[etcd]\nendpoint = "x:1"\n'))


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*missing\.toml"):
        load_settings(tmp_path / "missing.toml")


def test_password_file_is_read_and_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2-very-secret\n")
    monkeypatch.setenv("SHARDCTL_MYSQL_PASSWORD_FILE", str(secret))
    settings = load_settings()
    assert settings.mysql.connect_kwargs()["password"] == "hunter2-very-secret"
    assert "hunter2" not in repr(settings) and "hunter2" not in str(settings.model_dump())


def test_missing_password_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDCTL_ETCD_USERNAME", "root")
    monkeypatch.setenv("SHARDCTL_ETCD_PASSWORD_FILE", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"etcd\.password_file: cannot read"):
        load_settings()


def test_invalid_secret_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDCTL_ETCD_PASSWORD", "s3cret-value")
    with pytest.raises(ConfigError) as err:
        load_settings()  # password without username
    assert "etcd.username and etcd.password must be set together" in str(err.value)
    assert "s3cret-value" not in str(err.value)


def test_kafka_secrets_are_refused_in_passthrough_options(tmp_path: Path) -> None:
    path = _toml(tmp_path, '[kafka.options]\n"sasl.password" = "x"\n')
    with pytest.raises(ConfigError, match=r"kafka\.options\.sasl\.password"):
        load_settings(path)


def test_endpoints_and_cluster_root() -> None:
    settings = load_settings(
        overrides={"etcd": {"endpoints": "10.0.0.1:2379, h2:23790"}}, cluster="orders"
    )
    assert settings.etcd.endpoint_list() == [("10.0.0.1", 2379), ("h2", 23790)]
    assert settings.etcd_root() == "/shardctl/orders/"
    bad = load_settings(overrides={"etcd": {"endpoints": "nohost"}})
    with pytest.raises(ConfigError, match=r"etcd\.endpoints: 'nohost' is not host:port"):
        bad.etcd.endpoint_list()
