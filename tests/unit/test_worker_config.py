"""The [worker] section: flags beat SHARDCTL_WORKER_* which beats TOML, unknown keys
and bad values are refused naming them, and its defaults are the worker's own."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from shardctl.cli.main import app
from shardctl.core.config import ConfigError, WorkerSettings, load_settings
from workers.pipeline import ConsumeOptions
from workers.worker import WorkerOptions


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("SHARDCTL_"):
            monkeypatch.delenv(key)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "shardctl.toml"
    path.write_text(text)
    return path


def test_flags_beat_env_which_beats_toml_which_beats_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _toml(tmp_path, "[worker]\nbatch_size = 50\nretry_attempts = 9\nttl = 4\n")
    assert load_settings().worker.batch_size == 200
    from_file = load_settings(path).worker
    assert (from_file.batch_size, from_file.retry_attempts, from_file.ttl) == (50, 9, 4)
    monkeypatch.setenv("SHARDCTL_WORKER_BATCH_SIZE", "70")
    from_env = load_settings(path).worker
    assert (from_env.batch_size, from_env.retry_attempts) == (70, 9)
    flagged = load_settings(path, overrides={"worker": {"batch_size": 90, "ttl": None}}).worker
    assert (flagged.batch_size, flagged.retry_attempts, flagged.ttl) == (90, 9, 4)


def test_the_worker_id_variable_is_not_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """SHARDCTL_WORKER_ID names the worker (and `drain --self`); it shares the prefix."""
    monkeypatch.setenv("SHARDCTL_WORKER_ID", "w-1")
    assert load_settings().worker == WorkerSettings()


def test_an_unknown_worker_setting_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"worker\.batch_sise: unknown setting"):
        load_settings(_toml(tmp_path, "[worker]\nbatch_sise = 5\n"))


@pytest.mark.parametrize(
    ("text", "setting"),
    [
        ("batch_size = 0", "worker.batch_size"),
        ("ttl = 1", "worker.ttl"),
        ('retry_max_delay_s = "soon"', "worker.retry_max_delay_s"),
        ('dead_letter_template = ""', "worker.dead_letter_template"),
    ],
)
def test_a_bad_worker_value_is_refused_naming_it(tmp_path: Path, text: str, setting: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(setting)):
        load_settings(_toml(tmp_path, f"[worker]\n{text}\n"))


def test_the_defaults_are_the_workers_own() -> None:
    """The worker classes keep defaults for code that builds them directly; the config
    model must not disagree with them."""
    model = WorkerSettings()
    worker = WorkerOptions(worker_id="w")
    consume = ConsumeOptions(handler="h", transport="kafka", topics=())
    assert (model.capacity, model.ttl, model.restart_grace_s) == (
        worker.capacity,
        worker.ttl,
        worker.restart_grace_s,
    )
    assert (model.commit_interval_s, model.drain_timeout_s) == (
        worker.commit_interval_s,
        worker.drain_timeout_s,
    )
    shared = {f.name for f in dataclasses.fields(ConsumeOptions)} & set(WorkerSettings.model_fields)
    assert len(shared) == 9
    for name in shared:
        assert getattr(model, name) == getattr(consume, name), name


def _worker_run_helps() -> list[str]:
    """The help texts of `worker run`'s options (typer ships its own click classes)."""
    group: Any = typer.main.get_command(app)
    command = group.commands["worker"].commands["run"]
    return [str(param.help or "") for param in command.params if hasattr(param, "help")]


def test_every_tuning_flag_names_its_setting_and_the_models_default() -> None:
    helps = _worker_run_helps()
    named = {}
    for text in helps:
        match = re.search(r"\[worker\] (\w+) / SHARDCTL_WORKER_(\w+); default (.+)\)\.$", text)
        if match:
            assert match.group(2) == match.group(1).upper()
            named[match.group(1)] = match.group(3)
    assert set(named) == set(WorkerSettings.model_fields)
    for name, shown in named.items():
        default = WorkerSettings.model_fields[name].default
        assert shown == str(default), name


def test_a_bad_dead_letter_template_is_a_usage_error_naming_it() -> None:
    result = CliRunner().invoke(
        app,
        ["worker", "run", "--handler", "stdout", "--dead-letter-template", "{table}.dlq"],
        catch_exceptions=False,
    )
    assert result.exit_code == 2, result.output
    assert "worker.dead_letter_template" in result.output
    assert "Traceback" not in result.output


def test_a_bad_worker_variable_is_a_usage_error_naming_it() -> None:
    result = CliRunner().invoke(
        app,
        ["worker", "run", "--handler", "noop"],
        env={"SHARDCTL_WORKER_MAX_IN_FLIGHT": "0"},
        catch_exceptions=False,
    )
    assert result.exit_code == 2, result.output
    assert "worker.max_in_flight" in result.output
