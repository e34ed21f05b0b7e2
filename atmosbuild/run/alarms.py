"""One thread calling callbacks at deadlines (timeouts, grace-period kills).

A `threading.Timer` per attempt would start a thread per action (~0.2 ms
here); one shared thread with a heap costs a push. Callbacks run without any
lock held and must check that what they act on still exists.

A callback that raises does not stop the other alarms, and its error is not
lost: it goes to the alarm's `on_error` (the runner fails the action with it:
a timeout that cannot fire must not pass in silence).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any, Callable


class Alarm:
    """A pending call; `cancel()` makes it a no-op."""

    __slots__ = ("deadline", "seq", "callback", "args", "on_error")

    def __init__(self, deadline: float, seq: int, callback: Callable, args: tuple,
                 on_error: Callable[[BaseException], None] | None) -> None:
        self.deadline, self.seq, self.callback, self.args, self.on_error = deadline, seq, callback, args, on_error

    def __lt__(self, other: "Alarm") -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)

    def cancel(self) -> None:
        self.callback = None


class Alarms:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[Alarm] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def call_later(self, seconds: float, callback: Callable, *args: Any,
                   on_error: Callable[[BaseException], None] | None = None) -> Alarm:
        alarm = Alarm(self._clock() + seconds, next(self._seq), callback, args, on_error)
        with self._cond:
            heapq.heappush(self._heap, alarm)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="atmosbuild alarms", daemon=True)
                self._thread.start()
            elif self._heap[0] is alarm:
                self._cond.notify()
        return alarm

    def _next(self) -> Alarm:
        with self._cond:
            while True:
                while self._heap and self._heap[0].callback is None:
                    heapq.heappop(self._heap)
                delay = self._heap[0].deadline - self._clock() if self._heap else None
                if delay is not None and delay <= 0:
                    return heapq.heappop(self._heap)
                self._cond.wait(delay)

    def _loop(self) -> None:
        while True:
            alarm = self._next()
            callback, on_error = alarm.callback, alarm.on_error
            if callback is None:
                continue
            try:
                callback(*alarm.args)
            except Exception as exc:
                _report(on_error, exc)


def _report(on_error: Callable[[BaseException], None] | None, exc: BaseException) -> None:
    """Hand a callback's error on; without a handler (or if it fails too)
    the thread's excepthook prints it: never silent, never the end of the loop."""
    try:
        if on_error is None:
            raise exc
        on_error(exc)
    except Exception:
        threading.excepthook(threading.ExceptHookArgs(
            (type(exc), exc, exc.__traceback__, threading.current_thread())))
