"""What a rollout prints.

One `Console` per run, shared by the CLI and the runner's worker threads, so
every write happens under one lock and a whole line is written at a time:
parallel components never interleave inside a line (Terragrunt #74, #1985).

On a terminal a single live status line (`[12/40] running: ...`) sits at the
bottom. It is wiped (`\\r` + erase-line) before any other output and redrawn
after it, so ordinary lines scroll above it. Off a terminal (CI logs, pipes)
there is no status line at all, and no colour.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from typing import Sequence, TextIO

_ERASE = "\r\x1b[K"
_STATUS_COLORS = {
    "succeeded": "32", "cached": "36",
    "failed": "31", "timeout": "31",
    "cancelled": "33", "skipped": "33",
}


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


PENDING_MAX = 512  # cached lines held back at most


class Console:
    """Thread-safe writer of component output, status lines and the summary."""

    def __init__(
        self,
        stream: TextIO | None = None,
        err: TextIO | None = None,
        *,
        prefix: bool,
        live: bool | None = None,
        color: bool | None = None,
    ) -> None:
        # Resolved at call time, not as default arguments, so pytest's
        # capture and click's runner see the output.
        self.stream = stream if stream is not None else sys.stdout
        self.err = err if err is not None else sys.stderr
        self.prefix = prefix
        tty = _isatty(self.stream)
        self.live = tty if live is None else live
        self.color = (tty and not os.environ.get("NO_COLOR")) if color is None else color
        self._lock = threading.Lock()
        self._status = ""  # the live line currently on screen, "" if none
        self._pending: list[str] = []  # cached lines not written yet

    # -- plain output -------------------------------------------------------

    def info(self, text: str) -> None:
        """A plain line."""
        self._write(self.stream, text)

    def component_line(self, node: str, text: str) -> None:
        """One line of a component's output, prefixed with its id when parallel."""
        self._write(self.stream, f"[{node}] {text}" if self.prefix else text)

    def started(self, node: str) -> None:
        # On a terminal the live line already names what runs.
        if not self.live:
            self._write(self.stream, f"[{node}] started")

    def finished(self, node: str, status: str, duration: float, message: str = "") -> None:
        line = f"[{node}] {self._paint(status)}"
        if status == "cached" and not message:
            # They come in bursts of thousands: written together, before the
            # next line of any other kind (or PENDING_MAX of them), not one by one.
            with self._lock:
                self._pending.append(line)
                if len(self._pending) >= PENDING_MAX:
                    self._write_pending()
            return
        if status not in ("cached", "skipped"):  # those took no time of their own
            line += f" in {duration:.1f} s"
        self._write(self.stream, f"{line}: {message}" if message else line)

    def failure(self, node: str, message: str, log_path: str, tail_lines: Sequence[str]) -> None:
        """The failure with the last lines of its log, on the error stream."""
        lines = [f"{self._paint('FAILED', 'failed')}: {node}: {message}", f"  log: {log_path}"]
        if tail_lines:
            lines.append(f"  last {len(tail_lines)} lines:")
            lines.extend(f"  | {line}" for line in tail_lines)
        self._write(self.err, "\n".join(lines))

    def summary(
        self, ran: int, cached: int, failed: int, skipped: int, cancelled: int, duration_s: float
    ) -> None:
        """`Summary: 3 ran, 1 cached, 0 failed, 0 skipped in 2.4 s` (cancelled only if any)."""
        parts = [f"{ran} ran", f"{cached} cached", f"{failed} failed", f"{skipped} skipped"]
        if cancelled:
            parts.append(f"{cancelled} cancelled")
        with self._lock:
            self._clear_status()
            self._status = ""
        self._write(self.stream, f"Summary: {', '.join(parts)} in {duration_s:.1f} s")

    # -- the live status line -----------------------------------------------

    def progress(self, done: int, total: int, running: Sequence[str]) -> None:
        """Redraw the live line; nothing off a terminal. Empty `running` clears it."""
        if not self.live:
            return
        text = f"[{done}/{total}] running: {', '.join(running)}" if running else ""
        width = shutil.get_terminal_size().columns - 1
        if len(text) > width:
            text = text[: max(width - 3, 0)] + "..."
        with self._lock:
            self._write_pending()
            self._status = text
            self.stream.write("\r" + text + "\x1b[K" if text else _ERASE)
            self.stream.flush()

    # -- internals ----------------------------------------------------------

    def flush(self) -> None:
        """Write out what is held back (cached lines)."""
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:  # (under the lock)
        if self._pending:
            self._clear_status()
            self.stream.write("\n".join(self._pending) + "\n")
            self.stream.flush()
            self._pending.clear()
            if self._status:
                self.stream.write(self._status)
                self.stream.flush()

    def _write(self, stream: TextIO, text: str) -> None:
        with self._lock:
            self._write_pending()
            self._clear_status()
            stream.write(text + "\n")
            stream.flush()
            if self._status:
                self.stream.write(self._status)
                self.stream.flush()

    def _clear_status(self) -> None:
        if self._status:
            self.stream.write(_ERASE)
            self.stream.flush()

    def _paint(self, text: str, status: str | None = None) -> str:
        code = _STATUS_COLORS.get(status or text)
        return f"\x1b[{code}m{text}\x1b[0m" if self.color and code else text
