"""`shardctl demo`, end to end: its verdict (source == sink after a worker is added,
one drained and one killed under load), and that Ctrl-C stops and removes
everything it started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import StackHandle
from tests.polling import wait_for

pytestmark = pytest.mark.e2e


def demo_env(stack: StackHandle) -> dict[str, str]:
    return {**os.environ, **stack.env(), "COLUMNS": "120"}


CLUSTER = re.compile(r"demo (demo-[0-9a-f]{6}): database shardctl_demo_[0-9a-f]{6}")


def cluster_of(output: str) -> str:
    match = CLUSTER.search(output)
    assert match, output
    return match.group(1)


def processes_of(cluster: str) -> list[int]:
    """Our own processes whose environment names the demo's cluster."""
    marker = f"SHARDCTL_CLUSTER={cluster}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue  # gone, or not ours
    return found


def databases_of(stack: StackHandle, cluster: str) -> list[str]:
    token = cluster.removeprefix("demo-")
    conn = stack.mysql_root()
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW DATABASES LIKE %s", (f"shardctl_demo_{token}%",))
            return [str(row[0]) for row in cur.fetchall()]
    finally:
        conn.close()


def test_demo_ends_with_source_equal_to_sink(stack: StackHandle) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shardctl.cli.main", "demo", "--duration", "20", "--no-stack"],
        env=demo_env(stack),
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "VERDICT: source == sink" in out
    for step in ("add worker w4", "drain w2", "kill -9 w3", "load stopped after"):
        assert step in out, out
    sums = re.findall(r"(source|sink) rows +(\d+), CHECKSUM TABLE (\d+)", out)
    assert len(sums) == 2 and sums[0][1:] == sums[1][1:], out
    cluster = cluster_of(out)
    assert processes_of(cluster) == []
    assert databases_of(stack, cluster) == []


def test_ctrl_c_stops_everything_the_demo_started(stack: StackHandle, tmp_path: Path) -> None:
    log = (tmp_path / "demo.out").open("w")
    demo = subprocess.Popen(
        [sys.executable, "-m", "shardctl.cli.main", "demo", "--duration", "120", "--no-stack"],
        env=demo_env(stack),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def running() -> str | None:
            text = (tmp_path / "demo.out").read_text()
            match = CLUSTER.search(text)
            if match is None or "load started" not in text:
                return None
            # the reader, the coordinator and three workers
            return match.group(1) if len(processes_of(match.group(1))) >= 5 else None

        cluster = wait_for("the demo's processes under load", running, timeout=120)
        demo.send_signal(signal.SIGINT)
        assert demo.wait(120) == 1
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        log.close()
    out = (tmp_path / "demo.out").read_text()
    assert "interrupted: stopping everything the demo started" in out
    assert processes_of(cluster) == []
    assert databases_of(stack, cluster) == []
