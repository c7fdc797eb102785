"""The snapshot's own thread: it reads chunks, and moves the snapshot on while the
stream has nothing for the reader.

Reading a chunk (two watermarks, the SELECT, the building of its messages) is
the slow part of a snapshot; done on the reader's loop it paused the stream for
that long. Here it is a job on this thread: the reader's loop goes on streaming
and takes the rows when they are ready.

Everything else (the window, releasing a chunk, progress, requests) is the
snapshot's state, shared with the reader's loop, and is changed under one lock.
The loop holds it while it works on an item of the stream and lets go of it while
it waits for the next one (`paced`); this thread takes a turn under the lock after
each job and every few milliseconds while work is pending. So on a busy source the
loop moves the snapshot on at each transaction boundary, and on an idle one (where
the loop sleeps until the server's next heartbeat) this thread does, chunk after
chunk, without the stream ever waiting on a read.

    jobs:  [read chunk] [read chunk] [close connection] [stop]
    turns: under the lock, after each job and every `wait` seconds the turn asks for
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a turn waits for the lock before trying again later: the loop holds it
# while it works, for about one transaction.
_LOCK_WAIT_S = 0.05
# The wait before the first turn, and after a turn that failed or came while closing.
_QUIET_S = 0.25
# The interpreter's switch interval while a job runs (Python's default is 5 ms): how
# long the reader's loop may wait for the interpreter lock after it read the stream.
_JOB_SWITCH_S = 0.0005

_Job = tuple[Callable[[], Any], "concurrent.futures.Future[Any]"]


class SnapshotThread:
    def __init__(self, name: str, turn: Callable[[], float]) -> None:
        # Reentrant: the reader's loop may hold it (in `paced`) when it closes.
        self.lock = threading.RLock()
        self._turn = turn
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._wait = _QUIET_S
        self._pace = _QUIET_S  # the wait the last turn asked for
        self._paced = False  # turns only once the loop holds the lock while it works
        self._closing = False
        self.error: BaseException | None = None  # a turn's error, raised on the loop
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def submit(self, work: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Run `work` on this thread, after the jobs before it."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._start()
        self._jobs.put((work, future))
        return future

    def paced(self, items: Iterable[T]) -> Iterator[T]:
        """`items` (the stream), holding the lock except while waiting for the next one."""
        iterator = iter(items)
        self.lock.acquire()
        self._paced = True
        self._start()
        try:
            while True:
                self.lock.release()
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    self.lock.acquire()
                yield item
        finally:
            self._paced = False
            self.lock.release()

    def end_turns(self) -> None:
        self._closing = True

    def stop(self) -> None:
        """No more turns; the jobs submitted so far still run (closing a connection)."""
        self._closing = True
        if self._started:
            self._jobs.put(None)

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self._wait)
            except queue.Empty:
                job = None
            else:
                if job is None:
                    return
            if job is not None:
                work, future = job
                if future.set_running_or_notify_cancel():
                    # A job is Python work that holds the interpreter's lock: while it
                    # runs, the loop gets it back sooner after each of its waits.
                    switch = sys.getswitchinterval()
                    sys.setswitchinterval(min(switch, _JOB_SWITCH_S))
                    try:
                        future.set_result(work())
                    except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                        future.set_exception(exc)
                    finally:
                        sys.setswitchinterval(switch)
            self._take_turn()

    def _take_turn(self) -> None:
        if self._closing or not self._paced or self.error is not None:
            self._wait = _QUIET_S
            return
        if not self.lock.acquire(timeout=_LOCK_WAIT_S):
            # The loop is working (and moves the snapshot on itself): try again at
            # the pace the last turn asked for, so that with no snapshot under way
            # this thread does not contend with a busy stream for the lock.
            self._wait = self._pace
            return
        try:
            if self._paced and not self._closing:
                self._pace = self._wait = self._turn()
        except BaseException as exc:  # noqa: BLE001 - raised again on the reader's loop
            log.error("snapshot thread: %s: %s", type(exc).__name__, exc)
            self.error = exc
        finally:
            self.lock.release()
