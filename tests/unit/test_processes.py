"""The local-cluster process group: output to one log per name, stopped by pid."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from shardctl.core.processes import ProcessExited, ProcessGroup
from tests.polling import wait_for

SLEEPER = "import sys, time; print('up', flush=True); sys.stdout.flush(); time.sleep(120)"
# Exits 3 on SIGTERM, so a graceful stop is told from a kill.
GRACEFUL = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))\n"
    "print('up', flush=True)\n"
    "time.sleep(120)\n"
)


def test_stop_all_terminates_gracefully_and_logs_each_process(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path, os.environ, prefix="c1-")
    group.start("a", [sys.executable, "-c", GRACEFUL])
    group.start("b", [sys.executable, "-c", SLEEPER], env={"EXTRA": "1"})
    wait_for("both up", lambda: "up" in group.log("a") and "up" in group.log("b"))
    assert group.alive("a") and group.alive("b")
    assert (tmp_path / "c1-a.log").exists()
    group.stop_all(grace_s=15)
    assert group.procs["a"].returncode == 3
    assert group.procs["b"].returncode == -signal.SIGTERM


def test_stop_all_without_grace_kills_even_a_stopped_process(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path, os.environ)
    group.start("a", [sys.executable, "-c", GRACEFUL])
    wait_for("a up", lambda: "up" in group.log("a"))
    group.signal("a", signal.SIGSTOP)
    group.stop_all(grace_s=0)
    assert group.procs["a"].returncode == -signal.SIGKILL
    assert not group.alive("a")


def test_kill9_reaps_the_process(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path, os.environ)
    group.start("a", [sys.executable, "-c", SLEEPER])
    group.kill9("a")
    assert group.procs["a"].returncode == -signal.SIGKILL


def test_stop_waits_for_the_named_processes_only_and_names_the_killed(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path, os.environ)
    # Ignores SIGTERM: only a kill ends it.
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('up', flush=True); time.sleep(120)"
    )
    group.start("stubborn", [sys.executable, "-c", stubborn])
    group.start("other", [sys.executable, "-c", SLEEPER])
    wait_for("both up", lambda: "up" in group.log("stubborn") and "up" in group.log("other"))
    assert group.stop(["stubborn"], grace_s=0.5) == ["stubborn"]
    assert group.procs["stubborn"].returncode == -signal.SIGKILL
    assert group.alive("other")
    group.stop_all(grace_s=0)


def test_check_alive_names_the_exit_code_and_the_output(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path, os.environ)
    group.start("dies", [sys.executable, "-c", "print('last words'); raise SystemExit(4)"])
    group.procs["dies"].wait(30)
    with pytest.raises(ProcessExited, match=r"dies exited with code 4:\nlast words"):
        group.check_alive("dies")
