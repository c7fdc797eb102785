"""Named background processes of one local cluster, for the tests and the benchmarks.

`ProcessGroup` starts processes (`shardctl <args>` or any command) with the cluster's
environment, writes each one's output to `<workdir>/<name>.log`, and stops them by
pid: SIGTERM and a grace period, or at once with SIGKILL. The demo, the benchmarks
and the tests all start their processes through it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

SHARDCTL = (sys.executable, "-m", "shardctl.cli.main")


class ProcessExited(RuntimeError):
    """A process of the group exited while it was expected to run."""


class ProcessGroup:
    def __init__(
        self,
        workdir: Path,
        env: Mapping[str, str],
        cwd: Path | None = None,
        prefix: str = "",
        own_session: bool = False,
    ) -> None:
        self.workdir = workdir
        self.env = dict(env)
        self.cwd = cwd
        self.prefix = prefix  # of the log file names, when several groups share workdir
        # In a session of their own, a Ctrl-C at the terminal reaches only the caller,
        # which then stops the processes in its own order.
        self.own_session = own_session
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
                start_new_session=self.own_session,
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

    def tail(self, name: str, lines: int = 15) -> str:
        """The last `lines` lines of `name`'s output."""
        return "\n".join(self.log(name).splitlines()[-lines:])

    def check_alive(self, name: str) -> None:
        """Raise `ProcessExited`, with the exit code and the end of its output, if
        `name` is no longer running."""
        proc = self.procs[name]
        if proc.poll() is not None:
            raise ProcessExited(f"{name} exited with code {proc.returncode}:\n{self.tail(name)}")

    def signal(self, name: str, sig: int) -> None:
        self.procs[name].send_signal(sig)

    def kill9(self, name: str) -> None:
        proc = self.procs[name]
        proc.send_signal(signal.SIGCONT)  # a frozen (SIGSTOP) process is reaped at once too
        proc.kill()
        proc.wait(10)

    def freeze(self, name: str) -> None:
        """SIGSTOP: the process holds its connections and leases but does nothing."""
        self.procs[name].send_signal(signal.SIGSTOP)

    def thaw(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)

    def exited(self) -> list[str]:
        """The names of the processes that are no longer running."""
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def stop_all(self, grace_s: float = 15.0) -> list[str]:
        """Stop every process of the group (see `stop`)."""
        return self.stop(list(self.procs), grace_s)

    def stop(self, names: Iterable[str], grace_s: float = 15.0) -> list[str]:
        """SIGTERM the named processes that still run, wait up to `grace_s` for all of
        them together, then SIGKILL the rest; returns the names that had to be
        killed. With `grace_s` 0, SIGKILL at once (a stopped process is continued
        first so that it can be reaped)."""
        running = {n: self.procs[n] for n in names if self.procs[n].poll() is None}
        for proc in running.values():
            if grace_s > 0:
                proc.send_signal(signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
        deadline = time.monotonic() + grace_s
        killed: list[str] = []
        for name, proc in running.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()) if grace_s > 0 else 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                killed.append(name)
        return killed
