"""The CLI's error paths: every user error is one clear message and exit code 2 (bad
usage or setting), never a traceback. No service is contacted: the commands fail
before they would connect."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from shardctl import __version__
from shardctl.cli.main import app

runner = CliRunner()

# A setting that fails validation before anything connects.
BAD_SETTING = {"SHARDCTL_ETCD_TIMEOUT_S": "-1"}


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    # catch_exceptions=False: an exception other than a clean exit fails the test.
    result = runner.invoke(app, list(args), env=env, catch_exceptions=False)
    output = result.output
    assert "Traceback" not in output, output
    return result.exit_code, output


def test_version() -> None:
    code, output = invoke("--version")
    assert code == 0
    assert output.strip() == f"shardctl {__version__}"


@pytest.mark.parametrize(
    "args",
    [
        ["coordinator", "run", "--log-level", "foo"],
        ["worker", "run", "--handler", "noop", "--log-level", "foo"],
        ["cdc", "run", "--log-level", "foo"],
    ],
)
def test_an_unknown_log_level_is_a_usage_error(args: list[str]) -> None:
    code, output = invoke(*args)
    assert code == 2
    assert "--log-level" in output and "'foo'" in output


@pytest.mark.parametrize("role", ["coordinator", "worker", "cdc"])
def test_the_liveness_window_is_a_flag_of_every_process(role: str) -> None:
    code, output = invoke(role, "run", "--liveness-window", "1")
    assert code == 2
    assert "--liveness-window" in output and "greater than or equal to 2" in output
    _, help_text = invoke(role, "run", "--help")
    assert "SHARDCTL_LIVENESS_WINDOW_S" in " ".join(help_text.split())


def test_log_level_is_case_insensitive() -> None:
    # Parsing succeeds; the command then stops at the bad setting, not at the level.
    code, output = invoke("coordinator", "run", "--log-level", "debug", env=BAD_SETTING)
    assert code == 2
    assert "etcd.timeout_s" in output


def test_worker_run_requires_a_handler() -> None:
    code, output = invoke("worker", "run")
    assert code == 2
    assert "Missing option '--handler'" in output


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["worker", "run", "--handler", "stdout", "--transport", "kafak"], "--transport"),
        (["tail", "t", "--transport", "redis"], "--transport"),
        (["cdc", "run", "--producer", "kafka,pulsar"], "--producer"),
        (["cluster", "init", "--shards", "4", "--transport", "zmq"], "--transport"),
        (["dev", "logs", "foo"], "service"),
        (["dev", "restart", "kafak"], "service"),
    ],
)
def test_choices_are_checked_when_parsing(args: list[str], option: str) -> None:
    code, output = invoke(*args)
    assert code == 2
    assert option in output


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["coordinator", "run"],
        ["worker", "run", "--handler", "noop"],
        ["drain", "w1"],
        ["shards", "set", "4"],
        ["cluster", "init", "--shards", "4"],
        ["cluster", "show"],
        ["tail", "topic"],
        ["doctor"],
        ["cdc", "run"],
        ["cdc", "status"],
    ],
)
def test_a_bad_setting_exits_2_naming_it(args: list[str]) -> None:
    code, output = invoke(*args, env=BAD_SETTING)
    assert code == 2, output
    assert "etcd.timeout_s" in output


def test_drain_needs_an_id_or_self() -> None:
    code, output = invoke("drain")
    assert code == 2
    assert "--self" in output
    code, output = invoke("drain", "w1", "--self")
    assert code == 2


def test_drain_self_needs_the_worker_id_in_the_environment() -> None:
    code, output = invoke("drain", "--self", env={"SHARDCTL_WORKER_ID": ""})
    assert code == 2
    assert "SHARDCTL_WORKER_ID" in output


def test_a_bad_worker_id_is_a_usage_error() -> None:
    code, output = invoke("drain", "$(POD_NAME)")
    assert code == 2
    assert "worker id '$(POD_NAME)'" in output


def test_tail_on_nsq_needs_a_shard() -> None:
    code, output = invoke("tail", "orders", "--transport", "nsq")
    assert code == 2
    assert "--shard" in output


def test_cluster_init_refuses_more_in_sync_replicas_than_replicas() -> None:
    code, output = invoke(
        "cluster", "init", "--shards", "4", "--replication-factor", "1",
        "--min-insync-replicas", "2",
    )  # fmt: skip
    assert code == 2
    assert "--min-insync-replicas 2" in output


def test_the_shared_options_read_the_same_everywhere() -> None:
    for args in (["cdc", "run"], ["coordinator", "run"], ["worker", "run"], ["doctor"]):
        _, output = invoke(*args, "--help")
        output = " ".join(output.split())  # help text is wrapped to the terminal
        assert "-c, --config" in output, args
        assert "[etcd], [kafka], [mysql]" in output, args
        assert "(, ," not in output


def test_kafka_down_is_one_line_naming_the_broker() -> None:
    """librdkafka writes to the process's stderr itself, so this runs a real process."""
    env = {
        **os.environ,
        "SHARDCTL_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nothing listens on port 1
    }
    result = subprocess.run(
        [sys.executable, "-m", "shardctl.cli.main", "tail", "orders"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "127.0.0.1:1" in lines[0] and "does not answer" in lines[0]
