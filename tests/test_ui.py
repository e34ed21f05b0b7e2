"""What the console prints: prefixes, the live status line, failures, summary."""

from __future__ import annotations

import io
import threading

import pytest

from atmosbuild.run.ui import Console


def console(**kw) -> tuple[Console, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    kw.setdefault("prefix", True)
    kw.setdefault("color", False)
    return Console(out, err, **kw), out, err


def test_component_lines_are_prefixed_with_the_node_when_parallel():
    c, out, _ = console(prefix=True)
    c.component_line("terraform/ecr/api", "Apply complete!")
    assert out.getvalue() == "[terraform/ecr/api] Apply complete!\n"


def test_component_lines_are_raw_when_serial():
    c, out, _ = console(prefix=False)
    c.component_line("terraform/ecr/api", "Apply complete!")
    c.info("Workspace: /tmp/ws")
    assert out.getvalue() == "Apply complete!\nWorkspace: /tmp/ws\n"


def test_started_and_finished_name_the_node():
    c, out, _ = console(prefix=False, live=False)
    c.started("nixpack/api")
    c.finished("nixpack/api", "succeeded", 2.44)
    c.finished("terraform/db", "failed", 0.25, "exit code 1")
    assert out.getvalue().splitlines() == [
        "[nixpack/api] started",
        "[nixpack/api] succeeded in 2.4 s",
        "[terraform/db] failed in 0.2 s: exit code 1",
    ]


def test_failure_shows_message_log_path_and_tail_on_stderr():
    c, out, err = console()
    c.failure("terraform/db", "exit code 1", "/logs/terraform/db.log", ["Error: boom", "exit"])
    assert out.getvalue() == ""
    assert err.getvalue().splitlines() == [
        "FAILED: terraform/db: exit code 1",
        "  log: /logs/terraform/db.log",
        "  last 2 lines:",
        "  | Error: boom",
        "  | exit",
    ]


def test_summary_line():
    c, out, _ = console()
    c.summary(ran=3, cached=1, failed=0, skipped=0, cancelled=0, duration_s=2.44)
    assert out.getvalue() == "Summary: 3 ran, 1 cached, 0 failed, 0 skipped in 2.4 s\n"


def test_summary_names_cancelled_only_when_some_were():
    c, out, _ = console()
    c.summary(ran=1, cached=0, failed=1, skipped=2, cancelled=3, duration_s=10)
    assert out.getvalue() == "Summary: 1 ran, 0 cached, 1 failed, 2 skipped, 3 cancelled in 10.0 s\n"


def test_no_live_line_off_a_terminal():
    c, out, _ = console()  # StringIO is not a tty: live defaults to off
    assert c.live is False and c.color is False
    c.progress(1, 3, ["terraform/a"])
    c.started("terraform/a")
    assert out.getvalue() == "[terraform/a] started\n"


def test_live_line_is_redrawn_in_place_and_cleared_before_other_output(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    c, out, _ = console(live=True)
    c.progress(12, 40, ["terraform/ecs/service-api", "nixpack/api"])
    assert out.getvalue() == "\r[12/40] running: terraform/ecs/service-api, nixpack/api\x1b[K"
    c.progress(13, 40, ["nixpack/api"])
    c.component_line("nixpack/api", "built")
    status = "[13/40] running: nixpack/api"
    assert out.getvalue().endswith(f"\r{status}\x1b[K\r\x1b[K[nixpack/api] built\n{status}")
    c.summary(1, 0, 0, 0, 0, 1.0)
    assert out.getvalue().endswith(f"{status}\r\x1b[KSummary: 1 ran, 0 cached, 0 failed, 0 skipped in 1.0 s\n")


def test_live_line_is_cleared_for_stderr_output_too():
    c, out, err = console(live=True)
    c.progress(0, 1, ["a"])
    c.failure("a", "exit code 1", "a.log", [])
    assert out.getvalue() == "\r[0/1] running: a\x1b[K\r\x1b[K[0/1] running: a"
    assert err.getvalue().startswith("FAILED: a")


def test_live_line_is_truncated_to_the_terminal_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "30")
    c, out, _ = console(live=True)
    c.progress(1, 9, ["terraform/aaaaaaaaaa", "terraform/bbbbbbbbbb"])
    line = out.getvalue()[1:-len("\x1b[K")]
    assert len(line) == 29 and line.endswith("...")


def test_empty_running_list_clears_the_live_line():
    c, out, _ = console(live=True)
    c.progress(1, 2, ["a"])
    c.progress(2, 2, [])
    c.info("done")
    assert out.getvalue() == "\r[1/2] running: a\x1b[K\r\x1b[Kdone\n"


def test_started_is_quiet_on_a_live_terminal():
    c, out, _ = console(live=True)
    c.started("a")
    assert out.getvalue() == ""


@pytest.mark.parametrize("color", [True, False])
def test_status_colour(color):
    c, out, _ = console(color=color)
    c.finished("a", "failed", 1.0)
    assert ("\x1b[31mfailed\x1b[0m" in out.getvalue()) is color


def test_no_color_env_turns_colour_off_even_on_a_tty(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("NO_COLOR", "1")
    c = Console(Tty(), io.StringIO(), prefix=True)
    assert c.live is True and c.color is False
    monkeypatch.delenv("NO_COLOR")
    assert Console(Tty(), io.StringIO(), prefix=True).color is True


def test_lines_from_many_threads_never_interleave():
    c, out, _ = console()

    def chatter(n):
        for i in range(200):
            c.component_line(f"command/{n}", f"line {i} " + "x" * 50)

    threads = [threading.Thread(target=chatter, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = out.getvalue().splitlines()
    assert len(lines) == 800
    assert all(line.startswith("[command/") and line.endswith("x" * 50) for line in lines)


def test_cached_lines_are_written_together_and_in_order():
    """Thousands of `cached` lines go out in one write, but never after a
    line that came later, on either stream."""
    shared = io.StringIO()
    c = Console(shared, shared, prefix=False, live=False, color=False)
    c.finished("a", "cached", 0.0)
    c.finished("b", "cached", 0.0)
    assert shared.getvalue() == ""  # held back...
    c.failure("x", "exit 1", "log", [])  # ...until the next line of another kind
    c.finished("c", "cached", 0.0)
    c.flush()
    assert shared.getvalue().splitlines() == ["[a] cached", "[b] cached", "FAILED: x: exit 1", "  log: log",
                                              "[c] cached"]


def test_held_back_cached_lines_are_bounded():
    from atmosbuild.run.ui import PENDING_MAX

    c, out, _ = console(live=False)
    for i in range(PENDING_MAX):
        c.finished(f"n{i}", "cached", 0.0)
    assert out.getvalue().count("cached") == PENDING_MAX
