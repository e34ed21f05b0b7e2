"""Seeing a run (SPEC 13, SPEC 7): the `--profile` trace, the HTML report's
content (the browser tests are in test_report_browser.py) and `--format
json` of plan, status and explain, on real rollouts of real processes."""

from __future__ import annotations

import json
from html.parser import HTMLParser

from hypothesis import given, settings
from hypothesis import strategies as st

from atmosbuild.run.trace import assign_lanes

SECRET = "hunter2-sekrit-77"


def deployment(ws) -> None:
    """base; then five siblings, one of which fails loudly; then one after a
    sibling, and one after the failure (skipped under -k)."""
    def sleepy(seconds, extra=""):
        return f"{extra}sleep {seconds}"

    comps = {
        "base": {"run": sleepy(0.2, "echo base; ")},
        **{f"a{i}": {"run": sleepy(0.15 + 0.05 * i, f"echo a{i}; "),
                     "metadata": {"depends_on": ["command/base"]}} for i in range(1, 5)},
        "bad": {"env": {"API_TOKEN": SECRET},
                "run": 'for i in $(seq 1 30); do echo "line $i"; done; '
                       'echo "token is $API_TOKEN <b>&amp;"; sleep 0.1; exit 3',
                "metadata": {"depends_on": ["command/base"]}},
        "tail": {"run": sleepy(0.1), "metadata": {"depends_on": ["command/a1"]}},
        "after_bad": {"run": "true", "metadata": {"depends_on": ["command/bad"]}},
    }
    ws.write("app/deployment.yaml", json.dumps(
        {"deployment": {"targets": {"dev": {}}, "components": {"command": comps}}}))


def run_with_views(ws, *args):
    out = ws.root.parent
    for name in ("r.json", "r.html", "t.json"):
        (out / name).unlink(missing_ok=True)
    proc = ws.run("rollout", "//app:dev", *args, "--report", str(out / "r.json"),
                  "--profile", str(out / "t.json"))
    assert "Traceback" not in proc.stderr, proc.stderr
    report = json.loads((out / "r.json").read_text())
    trace = json.loads((out / "t.json").read_text())
    return proc, report, trace


def max_overlap(spans) -> int:
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans],
                    key=lambda ev: (ev[0], ev[1]))  # an end frees its slot before a start
    most = now = 0
    for _, delta in events:
        now += delta
        most = max(most, now)
    return most


# -- the trace --------------------------------------------------------------------

def test_the_trace_has_one_slice_per_action_that_ran_on_at_most_j_lanes(ws):
    deployment(ws)
    proc, report, trace = run_with_views(ws, "-j3", "-k")
    assert proc.returncode == 1
    events = trace["traceEvents"]
    slices = [e for e in events if e["ph"] == "X"]
    ran = {n["id"]: n for n in report["nodes"] if n["started"] is not None}
    # One slice per action that ran, named as in the report (cached and
    # skipped nodes took no slot: omitted).
    assert sorted(e["name"] for e in slices) == sorted(ran)
    assert "command/after_bad" not in ran and len(ran) == 7
    for e in slices:
        node = ran[e["name"]]
        assert isinstance(e["ts"], int) and e["ts"] >= 0 and e["dur"] > 0
        assert e["args"]["status"] == node["status"] and e["args"]["key"] == node["key"]
        assert e["args"]["reason"] == node["reason"]
        # The slice is as long as the action (µs against the report's seconds).
        assert abs(e["dur"] / 1e6 - node["duration_s"]) < 0.002
    assert {e["args"]["status"] for e in slices} == {"succeeded", "failed"}
    lanes = {e["tid"] for e in slices}
    assert 2 <= len(lanes) <= 3  # the wave of five siblings ran three at once
    assert max_overlap([(e["ts"], e["ts"] + e["dur"]) for e in slices]) <= 3
    for lane in lanes:  # a lane is one slot: its slices never overlap
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in slices if e["tid"] == lane)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    # Metadata names the process and every lane; waves are global instants.
    names = {e["tid"]: e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {names[t] for t in lanes} == {f"slot {t}" for t in lanes}
    assert any(e["ph"] == "M" and e["name"] == "process_name" for e in events)
    marks = [e for e in events if e["ph"] == "i"]
    assert [e["name"] for e in marks] == ["wave 1", "wave 2", "wave 3"]
    assert all(e["s"] == "g" and e["ts"] >= 0 for e in marks)
    assert marks[1]["args"] == {"wave": 2, "nodes": 5, "ran": 5, "cached": 0}
    first_of_wave2 = min(e["ts"] for e in slices if ran[e["name"]]["wave"] == 2)
    last_of_wave1 = max(e["ts"] + e["dur"] for e in slices if ran[e["name"]]["wave"] == 1)
    assert last_of_wave1 <= marks[1]["ts"] <= first_of_wave2
    assert SECRET not in (ws.root.parent / "t.json").read_text()


def test_a_cached_run_traces_no_slices(ws):
    ws.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}, "components": {
        "command": {"one": {"run": "true"}, "two": {"run": "true", "metadata": {
            "depends_on": ["command/one"]}}}}}}))
    proc, report, trace = run_with_views(ws, "-j2")
    assert proc.returncode == 0 and len([e for e in trace["traceEvents"] if e["ph"] == "X"]) == 2
    proc, report, trace = run_with_views(ws, "-j2")
    assert proc.returncode == 0
    assert {n["status"] for n in report["nodes"]} == {"cached"}
    assert [e for e in trace["traceEvents"] if e["ph"] in ("X", "i")] == []
    assert trace["otherData"]["result"] == "success"
    page = ws.root.parent / "cached.html"
    assert ws.run("rollout", "//app:dev", "--report", str(page)).returncode == 0
    text = " ".join(parse(page).text)
    assert "Nothing ran: every component was cached or skipped." in text
    assert "command/one" in text and "command/two" in text and "cached" in text


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 20)), max_size=40),
       st.integers(1, 6))
def test_lanes_never_overlap_and_never_exceed_the_limit(raw, limit):
    intervals = [(s, s + d) for s, d in raw]
    lanes = assign_lanes(intervals, limit)
    assert len(lanes) == len(intervals)
    assert all(0 <= lane < limit for lane in lanes)
    if max_overlap(intervals) <= limit:  # what the scheduler guarantees: then exact
        assert len(set(lanes)) == max_overlap(intervals) or not intervals
        for lane in set(lanes):
            spans = sorted(iv for iv, ln in zip(intervals, lanes) if ln == lane)
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))


# -- the page, as HTML --------------------------------------------------------------

class Page(HTMLParser):
    """Every tag with its attributes, the text, and the inline style/script."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.inline: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in = tag if tag in ("style", "script") else None

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        (self.inline if self._in else self.text).append(data)


def parse(path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_the_html_report_is_self_contained_escaped_masked_and_complete(ws):
    deployment(ws)
    page_path = ws.root.parent / "r.html"
    proc = ws.run("rollout", "//app:dev", "-j3", "-k", "--report", str(page_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    raw = page_path.read_text(encoding="utf-8")
    assert raw.startswith("<!DOCTYPE html>")
    assert SECRET not in raw
    page = parse(page_path)
    # Nothing to load: no src anywhere, every link an anchor in the page, no
    # stylesheet link, no CSS import or url().
    for tag, attrs in page.tags:
        assert "src" not in attrs and "srcset" not in attrs, (tag, attrs)
        assert tag not in ("link", "img", "iframe", "object", "embed", "base"), tag
        for name in ("href", "xlink:href", "action", "formaction", "poster", "data"):
            if name in attrs:
                assert attrs[name].startswith("#"), (tag, name, attrs[name])
    css_js = "".join(page.inline)
    for bad in ("@import", "url(", "http://", "https://", "fetch(", "XMLHttpRequest"):
        assert bad not in css_js
    anchors = {attrs["id"] for _, attrs in page.tags if "id" in attrs}
    assert all(attrs["href"][1:] in anchors for _, attrs in page.tags if "href" in attrs)
    text = " ".join(page.text)
    for cid in ("command/base", "command/a1", "command/bad", "command/tail", "command/after_bad"):
        assert cid in text
    rows = [attrs for tag, attrs in page.tags if tag == "tr" and "id" in attrs]
    assert sorted(r["class"] for r in rows) == sorted(
        ["s-succeeded"] * 6 + ["s-failed", "s-skipped"])
    # The failure's log tail is shown (the last lines, escaped, masked).
    assert "token is *** <b>&amp;" in text and "line 30" in text
    assert "line 5\n" not in text  # only the tail: the last 20 lines of 32
    assert "<b>" not in raw.replace("&lt;b&gt;", "")
    # The timeline has a bar per action that ran; the critical path ends
    # with the action that finished last.
    bars = [attrs for tag, attrs in page.tags if tag == "rect" and "bar" in attrs.get("class", "")]
    assert len(bars) == 7
    assert any("crit" in attrs["class"] for attrs in bars)
    assert "Critical path" in text


def test_a_json_report_is_still_written_for_other_names(ws):
    deployment(ws)
    proc, report, _ = run_with_views(ws, "-j3", "-k")
    assert report["result"] == "failure" and len(report["nodes"]) == 8


# -- --format json ----------------------------------------------------------------------

def json_out(ws, *args) -> dict:
    proc = ws.run(*args, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # one document, nothing else on stdout


def test_plan_status_and_explain_speak_json(ws):
    ws.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}, "components": {
        "command": {"one": {"run": "true", "vars": {"n": 1}},
                    "two": {"run": "true", "metadata": {"depends_on": ["command/one"]}}}}}}))
    plan = json_out(ws, "plan", "//app:dev")
    assert set(plan) >= {"label", "waves", "nodes", "counts"}
    assert plan["label"] == "//app:dev" and plan["waves"] == [["command/one"], ["command/two"]]
    assert [set(n) >= {"id", "wave", "status", "reason", "key"} for n in plan["nodes"]] == [True, True]
    assert [(n["id"], n["status"], n["reason"]) for n in plan["nodes"]] == [
        ("command/one", "run", "never applied"), ("command/two", "run", "never applied")]
    assert plan["counts"] == {"run": 2, "cached": 0, "blocked": 0}
    status = json_out(ws, "status", "//app:dev")
    assert [c["id"] for c in status["components"]] == ["command/one", "command/two"]
    for c in status["components"]:
        assert set(c) >= {"id", "applied_key", "applied_at", "duration_s", "up_to_date", "reason"}
        assert c["applied_key"] is None and c["up_to_date"] is False
    explain = json_out(ws, "explain", "//app:dev", "command/one")
    assert explain == {**explain, "label": "//app:dev", "component": "command/one", "run": True,
                       "reasons": ["never applied"]}

    assert ws.run("rollout", "//app:dev").returncode == 0
    status = json_out(ws, "status", "//app:dev")
    for c in status["components"]:
        assert c["up_to_date"] is True and len(c["applied_key"]) == 32
        assert c["applied_at"].endswith("+00:00") and c["duration_s"] >= 0
    explain = json_out(ws, "explain", "//app:dev", "command/two")
    assert explain["run"] is False and explain["reasons"] == []
    assert explain["applied_key"] == explain["key"]

    ws.write("app/deployment.yaml", (ws.root / "app/deployment.yaml").read_text().replace(
        '"n": 1', '"n": 2'))
    explain = json_out(ws, "explain", "//app:dev", "command/one")
    assert explain["run"] is True and any("n" in r and "changed" in r for r in explain["reasons"])
    plan = json_out(ws, "plan", "//app:dev")
    assert plan["counts"] == {"run": 1, "cached": 0, "blocked": 1}
    assert plan["nodes"][1]["status"] == "blocked" and plan["nodes"][1]["key"] is None


def test_json_output_on_bad_input_is_one_error_line_and_an_empty_stdout(ws):
    ws.write("app/deployment.yaml", json.dumps({"deployment": {"targets": {"dev": {}}, "components": {
        "command": {"one": {"run": "true"}}}}}))
    for args in (("plan", "//app:nope"), ("status", "//nope:dev"), ("explain", "//app:dev", "command/x")):
        proc = ws.run(*args, "--format", "json")
        assert proc.returncode == 2 and proc.stdout == ""
        assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


@st.composite
def runs(draw):
    """A RunReport of a random DAG in which a random subset ran."""
    from atmosbuild.run.report import NodeRun, RunReport

    n = draw(st.integers(1, 25))
    nodes = []
    for i in range(n):
        deps = tuple(sorted(draw(st.sets(st.integers(0, i - 1), max_size=3)))) if i else ()
        ran = draw(st.booleans())
        start = draw(st.floats(0, 100)) if ran else None
        nodes.append(NodeRun(id=f"command/n{i}", wave=1, status="succeeded" if ran else "cached",
                             key=None, reason="", deps=tuple(f"command/n{d}" for d in deps),
                             started=start, finished=start + draw(st.floats(0, 10)) if ran else None))
    return RunReport(label="//x:dev", workspace="", result="success", duration_s=0.0, run_id="r",
                     parallelism=2, schedule="waves", wall_start=0.0, nodes=tuple(nodes))


@settings(max_examples=200, deadline=None)
@given(runs())
def test_the_critical_path_is_a_chain_of_ran_dependencies_ending_last(report):
    path = report.critical_path()
    nodes = report.by_id()
    ran = [n for n in report.nodes if n.ran]
    if not ran:
        assert path == []
        return
    assert nodes[path[-1]].finished == max(n.finished for n in ran)  # it ends with the last to end
    assert all(nodes[c].ran for c in path)
    for before, after in zip(path, path[1:]):  # each step is a dependency edge...
        assert before in nodes[after].deps
        # ...to the dependency that finished last
        assert nodes[before].finished == max(nodes[d].finished for d in nodes[after].deps if nodes[d].ran)
    assert not any(nodes[d].ran for d in nodes[path[0]].deps)  # it starts where nothing ran before
