"""Named background processes of one local cluster, for the tests and the benchmarks.

`ProcessGroup` starts processes (`shardctl <args>` or any command) with the cluster's
environment, writes each one's output to `<workdir>/<name>.log`, and stops them by
pid: SIGTERM and a grace period, or at once with SIGKILL.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

SHARDCTL = (sys.executable, "-m", "shardctl.cli.main")


class ProcessGroup:
    def __init__(
        self, workdir: Path, env: Mapping[str, str], cwd: Path | None = None, prefix: str = ""
    ) -> None:
        self.workdir = workdir
        self.env = dict(env)
        self.cwd = cwd
        self.prefix = prefix  # of the log file names, when several groups share workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{self.prefix}{name}.log"

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in the background as `name`; its output goes to its log."""
        with self.log_path(name).open("ab") as log:
            proc = subprocess.Popen(
                list(argv),
                env={**self.env, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
            )
        self.procs[name] = proc
        return proc

    def shardctl(
        self, name: str, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `shardctl <args>` in the background as `name`."""
        return self.start(name, [*SHARDCTL, *args], env)

    def alive(self, name: str) -> bool:
        return self.procs[name].poll() is None

    def log(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        proc.kill()
        proc.wait(10)

    def stop_all(self, grace_s: float = 15.0) -> None:
        """SIGTERM every running process, wait up to `grace_s` each, then SIGKILL the
        rest. With `grace_s` 0, SIGKILL at once (a stopped process is continued first
        so that it can be reaped)."""
        running = [p for p in self.procs.values() if p.poll() is None]
        for proc in running:
            if grace_s > 0:
                proc.send_signal(signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
        for proc in running:
            try:
                proc.wait(grace_s if grace_s > 0 else 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
