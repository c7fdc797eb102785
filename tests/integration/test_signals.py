"""`coordinator run` and `worker run` stop on the first SIGTERM even when etcd never
answers: while their first request hangs, and while they retry after it timed out.

The etcd endpoint is a TCP listener of the test's own that accepts connections and
never says a word, the way an etcd behind a dead network path looks.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.polling import wait_for

pytestmark = pytest.mark.integration

# Bounds for liveness only: a process that ignores SIGTERM never exits by itself.
EXIT_BOUND_S = 20.0


class SilentEtcd:
    """Accepts TCP connections and never answers them."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.accepted.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent_etcd() -> Iterator[SilentEtcd]:
    etcd = SilentEtcd()
    try:
        yield etcd
    finally:
        etcd.close()


COMMANDS = {
    "worker": ["worker", "run", "--handler", "noop", "--id", "w1", "--ttl", "3"],
    "coordinator": ["coordinator", "run", "--id", "c1", "--ttl", "3"],
}


@pytest.mark.parametrize("moment", ["connecting", "retrying"])
@pytest.mark.parametrize("role", sorted(COMMANDS))
def test_one_sigterm_stops_the_process_while_etcd_does_not_answer(
    silent_etcd: SilentEtcd, tmp_path: Path, role: str, moment: str
) -> None:
    env = {
        **os.environ,
        "SHARDCTL_ETCD_ENDPOINTS": f"127.0.0.1:{silent_etcd.port}",
        "SHARDCTL_ETCD_TIMEOUT_S": "1",
        "SHARDCTL_CLUSTER": "signals",
    }
    log_path = tmp_path / f"{role}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shardctl.cli.main", *COMMANDS[role]],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # The process has reached etcd (its first request now hangs) ...
        wait_for(f"{role} to connect to etcd", lambda: silent_etcd.accepted)
        if moment == "retrying":
            # ... and, for this case, saw a request fail and is retrying: every such
            # warning names the endpoint.
            failed = f"at 127.0.0.1:{silent_etcd.port}:"
            wait_for(
                f"{role} to report a failed etcd request",
                lambda: failed in log_path.read_text(errors="replace"),
            )
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{role} ignored the first SIGTERM while {moment}:\n"
                + log_path.read_text(errors="replace")[-3000:]
            ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    output = log_path.read_text(errors="replace")
    assert code == 0, f"{role} exited {code} after one SIGTERM:\n{output[-3000:]}"
    assert "stop requested" in output, output[-3000:]
