"""`--report FILE.html`: one self-contained page about a run (SPEC 13).

Everything is rendered here, on the server side: the summary, the graph by
waves, the timeline and the table are plain HTML and inline SVG, readable
with JavaScript disabled. The inline script only adds the filter box and the
expand/collapse buttons. Nothing is loaded from anywhere (inline CSS and JS,
no URL at all; a Content-Security-Policy of `default-src 'none'` makes a
browser refuse any load), so it works from `file://` on a plane.

Scale (5,000 components must stay usable):
- the graph is one SVG with an edge per dependency up to GRAPH_SVG_MAX
  nodes (and no wave taller than WAVE_SVG_MAX); above that, each wave is a
  collapsed <details> of coloured chips, without edges (thousands of
  crossing lines say nothing and cost seconds of layout);
- the timeline is one SVG rectangle per action that ran, on its slot's row
  (slots computed from the intervals as in the trace, trace.assign_lanes);
- the table has every component, each log tail in a closed <details>.
  Log tails are the last LOG_TAIL_LINES lines (each cut at LOG_LINE_MAX
  characters); succeeded actions get theirs while LOG_BUDGET bytes last,
  failed and stopped ones always.

Logs are already masked by the runner (secrets never reach a log file);
every text that goes into the page is HTML-escaped.
"""

from __future__ import annotations

import os
from html import escape

from .report import NodeRun, RunReport
from .trace import assign_lanes

GRAPH_SVG_MAX = 400
WAVE_SVG_MAX = 120
WAVES_OPEN_MAX = 60  # in the chip view, waves this small start open
LOG_TAIL_LINES = 20
LOG_LINE_MAX = 400
LOG_BUDGET = 4_000_000
FAILURES_SHOWN = 20
TABLE_CHUNK = 200  # table rows per chunk

COLOURS = {
    "succeeded": "#6aa84f", "cached": "#b6d7a8", "failed": "#e06666",
    "skipped": "#cccccc", "cancelled": "#f6b26b",
    # the lifecycle verbs' statuses (SPEC 10)
    "would-change": "#f1c232", "no-change": "#b6d7a8", "needs-upstream": "#cccccc",
    "destroyed": "#8e7cc3", "drifted": "#e69138",
}
TEXT_COLOURS = {"succeeded": "#fff", "failed": "#fff", "destroyed": "#fff"}
STATUSES = ("succeeded", "failed", "cancelled", "skipped", "cached",
            "would-change", "no-change", "needs-upstream", "destroyed", "drifted")
CRITICAL = "#1c4587"


def _e(text) -> str:
    return escape("" if text is None else str(text), quote=True)


def _seconds(s: float) -> str:
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    return f"{int(s // 60)} min {s % 60:02.0f} s"


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def log_tail(path: str | None, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last `lines` lines of a log, reading only its end."""
    if not path:
        return []
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            chunk = min(size, max(lines * (LOG_LINE_MAX + 1), 8192))
            fh.seek(size - chunk)
            data = fh.read(chunk)
    except OSError:
        return []
    text = data.decode("utf-8", "replace").splitlines()
    if chunk < size and text:
        text = text[1:]  # a partial first line
    return [_short(line, LOG_LINE_MAX) for line in text[-lines:]]


class _Page:
    def __init__(self, report: RunReport) -> None:
        self.r = report
        self.nodes = list(report.nodes)
        self.index = {n.id: i for i, n in enumerate(self.nodes)}
        self.critical = report.critical_path()
        self.on_path = set(self.critical)
        logs = [n.log for n in self.nodes if n.log]
        self.log_dir = os.path.commonpath(logs) if len(logs) > 1 else (
            os.path.dirname(logs[0]) if logs else "")
        if self.log_dir and self.r.run_id and self.r.run_id in self.log_dir:
            # the run's own directory, not a component's subdirectory
            head, _, _ = self.log_dir.partition(self.r.run_id)
            self.log_dir = head + self.r.run_id
        self.counts = {s: 0 for s in STATUSES}
        for n in self.nodes:
            self.counts[n.status] = self.counts.get(n.status, 0) + 1

    def anchor(self, n: NodeRun) -> str:
        return f"n{self.index[n.id]}"

    # -- the parts ---------------------------------------------------------------

    def render(self) -> str:
        r = self.r
        title = f"atmosbuild {r.label}: {r.result}"
        return "".join([
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
            self.header(),
            self.failures(),
            self.timeline(),
            self.graph(),
            self.table(),
            f"<script>{JS}</script></body></html>\n",
        ])

    def header(self) -> str:
        r = self.r
        ran = [n for n in self.nodes if n.ran]
        busy = sum(n.duration for n in ran)
        span = max((n.finished for n in ran), default=0.0)
        use = f"{100 * busy / (r.parallelism * span):.0f}%" if span > 0 else "–"
        counts = " ".join(
            f"<span class=\"pill s-{s}\">{self.counts[s]} {s}</span>" for s in STATUSES if self.counts[s])
        if isinstance(r.workspace, str):
            ws = f"workspace <code>{_e(r.workspace)}</code>"
        else:  # one per label
            ws = (f"{len(r.workspace)} workspaces <code>"
                  + ", ".join(_e(os.path.basename(w)) for w in r.workspace) + "</code>")
        crit = sum(self.nodes[self.index[c]].duration for c in self.critical)
        return (
            f"<header><h1>{_e(r.label)} <span class=\"result r-{_e(r.result)}\">{_e(r.result)}</span></h1>"
            f"<p class=\"facts\">{len(self.nodes)} components · {counts} · took "
            f"{_e(_seconds(r.duration_s))} at -j{r.parallelism} ({_e(r.schedule)}) · slots busy {use}"
            f" · critical path {len(self.critical)} actions, {_e(_seconds(crit))}</p>"
            f"<p class=\"meta\">run {_e(r.run_id)} · {ws}"
            + (f" · logs <code>{_e(self.log_dir)}/</code>" if self.log_dir else "") + "</p>"
            "<div id=\"tools\" hidden><input id=\"filter\" type=\"search\" "
            "placeholder=\"filter: id, status or reason\" aria-label=\"filter components\">"
            " <button type=\"button\" id=\"expand\">expand all waves</button>"
            " <button type=\"button\" id=\"collapse\">collapse all waves</button>"
            " <span id=\"shown\"></span></div></header>")

    def failures(self) -> str:
        bad = [n for n in self.nodes if n.status in ("failed", "cancelled") and n.ran]
        if not bad:
            return ""
        out = [f"<section id=\"failures\"><h2>Failed ({len(bad)})</h2>"]
        for n in bad[:FAILURES_SHOWN]:
            tail = log_tail(n.log)
            out.append(
                f"<div class=\"failure\"><h3><a href=\"#{self.anchor(n)}\">{_e(n.id)}</a> "
                f"<span class=\"pill s-{n.status}\">{n.status}</span></h3>"
                f"<p>{_e(n.reason)}"
                + (f" · exit code {n.exit_code}" if n.exit_code is not None
                   and f"exit code {n.exit_code}" not in n.reason else "") +
                f" · log <code>{_e(n.log)}</code></p>"
                + (f"<pre>{_e(chr(10).join(tail))}</pre>" if tail else "") + "</div>")
        if len(bad) > FAILURES_SHOWN:
            out.append(f"<p>… and {len(bad) - FAILURES_SHOWN} more in the table below.</p>")
        out.append("</section>")
        return "".join(out)

    def legend(self) -> str:
        items = "".join(f"<span class=\"key\"><i style=\"background:{COLOURS[s]}\"></i>{s}</span>"
                        for s in STATUSES)
        return (f"<p class=\"legend\">{items}<span class=\"key\"><i class=\"crit\"></i>"
                "critical path</span></p>")

    def graph(self) -> str:
        waves = self.r.waves()
        big = len(self.nodes) > GRAPH_SVG_MAX or any(len(w) > WAVE_SVG_MAX for w in waves)
        body = self.graph_chips(waves) if big else self.graph_svg(waves)
        note = (" (one box per component; large graphs are drawn without edges, "
                "each wave collapsed)" if big else "")
        return (f"<section id=\"graph\"><h2>Graph by waves{note}</h2>{self.legend()}{body}</section>")

    def graph_svg(self, waves: list[list[NodeRun]]) -> str:
        longest = max((len(n.id) for n in self.nodes), default=10)
        chars = min(max(longest, 16), 48)  # ids longer than this are cut (the tooltip has them whole)
        w = int(chars * 6.7) + 14
        cw, h, gap, top = w + 30, 24, 8, 30
        pos = {}
        for k, wave in enumerate(waves):
            for i, n in enumerate(wave):
                pos[n.id] = (10 + k * cw, top + i * (h + gap))
        width = 20 + len(waves) * cw
        height = top + max((len(wv) for wv in waves), default=0) * (h + gap) + 10
        out = [f"<div class=\"scroll dagbox\"><svg class=\"dag\" width=\"{width}\" height=\"{height}\" "
               f"viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"dependency graph by waves\">"]
        for k, wave in enumerate(waves):
            x = 10 + k * cw
            out.append(f"<text x=\"{x}\" y=\"18\" class=\"wave\">Wave {wave[0].wave} ({len(wave)})</text>")
        crit_edges = set(zip(self.critical, self.critical[1:]))
        for n in self.nodes:
            x2, y2 = pos[n.id]
            for d in n.deps:
                if d not in pos:
                    continue
                x1, y1 = pos[d]
                x1, y1, y2c = x1 + w, y1 + h / 2, y2 + h / 2
                cls = "edge crit" if (d, n.id) in crit_edges else "edge"
                out.append(f"<path class=\"{cls}\" d=\"M{x1} {y1} C{x1 + 20} {y1} {x2 - 20} {y2c} "
                           f"{x2} {y2c}\"/>")
        for n in self.nodes:
            x, y = pos[n.id]
            crit = " crit" if n.id in self.on_path else ""
            tip = f"{n.id}: {n.status}" + (f" in {_seconds(n.duration)}" if n.ran else "") + \
                  (f" — {n.reason}" if n.reason else "")
            out.append(
                f"<a href=\"#{self.anchor(n)}\"><g class=\"node{crit}\">"
                f"<title>{_e(tip)}</title>"
                f"<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"4\" "
                f"fill=\"{COLOURS.get(n.status, '#fff')}\"/>"
                f"<text x=\"{x + 6}\" y=\"{y + 16}\" fill=\"{TEXT_COLOURS.get(n.status, '#000')}\">"
                f"{_e(_short(n.id, chars))}</text></g></a>")
        out.append("</svg></div>")
        return "".join(out)

    def graph_chips(self, waves: list[list[NodeRun]]) -> str:
        out = ["<div class=\"waves\">"]
        for wave in waves:
            counts: dict[str, int] = {}
            for n in wave:
                counts[n.status] = counts.get(n.status, 0) + 1
            bar = "".join(f"<i style=\"background:{COLOURS[s]};flex:{counts[s]}\" title=\"{counts[s]} {s}\"></i>"
                          for s in STATUSES if counts.get(s))
            said = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s))
            opened = " open" if len(wave) <= WAVES_OPEN_MAX and len(waves) <= 12 else ""
            out.append(f"<details class=\"wave\"{opened}><summary><span class=\"what\">Wave {wave[0].wave}: "
                       f"{len(wave)} components ({said})</span> <span class=\"mix\">{bar}</span></summary>"
                       "<div class=\"chips\">")
            for n in wave:
                crit = " crit" if n.id in self.on_path else ""
                out.append(f"<a class=\"chip s-{n.status}{crit}\" href=\"#{self.anchor(n)}\" "
                           f"title=\"{_e(n.status + ': ' + n.reason)}\">"
                           f"{_e(n.id)}</a>")
            out.append("</div></details>")
        out.append("</div>")
        return "".join(out)

    def timeline(self) -> str:
        ran = [n for n in self.nodes if n.ran]
        if not ran:
            return ("<section id=\"timeline\"><h2>Timeline</h2><p>Nothing ran: every component "
                    "was cached or skipped.</p></section>")
        spans = [(n.started, n.finished) for n in ran]
        lanes = assign_lanes(spans, max(self.r.parallelism, 1))
        rows = max(lanes) + 1
        end = max(max(n.finished for n in ran), self.r.duration_s, 1e-6)
        left, width, row_h = 70, 1100, 22
        scale = width / end
        height = 24 + rows * row_h + 10
        total = left + width + 40  # room for the last tick's label
        dense = " dense" if len(ran) > width // 4 else ""  # bars of a pixel or two: no outlines
        out = [f"<div class=\"scroll\"><svg class=\"timeline{dense}\" width=\"{total}\" height=\"{height}\" "
               f"viewBox=\"0 0 {total} {height}\" role=\"img\" aria-label=\"timeline by slot\">"]
        step = _tick(end)
        t = 0.0
        while t <= end + 1e-9:
            x = left + t * scale
            out.append(f"<line class=\"tick\" x1=\"{x:.1f}\" y1=\"16\" x2=\"{x:.1f}\" y2=\"{height - 8}\"/>"
                       f"<text class=\"axis\" x=\"{x + 2:.1f}\" y=\"12\">{_e(_tick_label(t, step))}</text>")
            t += step
        for lane in range(rows):
            y = 22 + lane * row_h
            out.append(f"<text class=\"lane\" x=\"4\" y=\"{y + 15}\">slot {lane + 1}</text>")
        for wave, at in self.r.wave_marks:
            x = left + at * scale
            out.append(f"<line class=\"wavemark\" x1=\"{x:.1f}\" y1=\"18\" x2=\"{x:.1f}\" "
                       f"y2=\"{height - 8}\"><title>wave {wave} opens at {_e(_seconds(at))}</title></line>")
        # Failures last, so they are drawn on top, and never thinner than 3 px.
        drawn = sorted(zip(ran, lanes), key=lambda nl: nl[0].status in ("failed", "cancelled"))
        for n, lane in drawn:
            x = left + n.started * scale
            bw = max(n.duration * scale, 1.0 if n.status == "succeeded" else 3.0)
            y = 22 + lane * row_h + 2
            crit = " crit" if n.id in self.on_path else ""
            tip = f"{n.id}: {n.status}, {_seconds(n.duration)} (from {_seconds(n.started)}), wave {n.wave}"
            out.append(f"<a href=\"#{self.anchor(n)}\"><rect class=\"bar{crit}\" "
                       f"x=\"{x:.2f}\" y=\"{y}\" width=\"{bw:.2f}\" height=\"{row_h - 4}\" "
                       f"fill=\"{COLOURS[n.status]}\"><title>{_e(tip)}</title></rect></a>")
            if bw > 60:
                out.append(f"<text class=\"barlabel\" x=\"{x + 3:.2f}\" y=\"{y + 13}\">"
                           f"{_e(_short(n.id, int(bw / 7)))}</text>")
        out.append("</svg></div>")
        path = " → ".join(self.critical[:12]) + (" → …" if len(self.critical) > 12 else "")
        return (f"<section id=\"timeline\"><h2>Timeline ({rows} slot{'s' if rows > 1 else ''})</h2>"
                f"{self.legend()}{''.join(out)}<p class=\"path\">Critical path (the chain of "
                f"dependencies that ended last): {_e(path)}</p></section>")

    def table(self) -> str:
        budget = LOG_BUDGET
        # Fixed column widths (no pass over every cell to size them), and the
        # rows in chunks the browser may skip laying out while off screen
        # (content-visibility does not apply to rows themselves).
        cols = ("<colgroup><col style=\"width:28%\"><col style=\"width:5%\"><col style=\"width:9%\">"
                "<col style=\"width:8%\"><col style=\"width:32%\"><col style=\"width:18%\"></colgroup>")
        out = ["<section id=\"components\"><h2>Components</h2><table class=\"head\">", cols,
               "<thead><tr><th>component</th><th>wave</th><th>status</th><th>duration</th>"
               "<th>reason</th><th>log</th></tr></thead></table>"]
        for i, n in enumerate(self.nodes):
            if i % TABLE_CHUNK == 0:
                if i:
                    out.append("</tbody></table></div>")
                rows = min(TABLE_CHUNK, len(self.nodes) - i)
                out.append(f"<div class=\"chunk\" style=\"contain-intrinsic-size:auto {rows * 25}px\">"
                           f"<table>{cols}<tbody>")
            tail: list[str] = []
            if n.ran and (n.status != "succeeded" or budget > 0):
                tail = log_tail(n.log)
                if n.status == "succeeded":
                    budget -= sum(len(line) + 1 for line in tail)
            crit = " <span class=\"crit-mark\" title=\"on the critical path\">critical</span>" \
                if n.id in self.on_path else ""
            if tail:
                lines = "last line" if len(tail) == 1 else f"last {len(tail)} lines"
                log = (f"<details><summary>{lines}</summary><pre>{_e(chr(10).join(tail))}</pre>"
                       f"<code>{_e(self.log_name(n))}</code></details>")
            elif n.log:
                log = f"<code>{_e(self.log_name(n))}</code>"
            else:
                log = ""
            out.append(
                f"<tr id=\"{self.anchor(n)}\" class=\"s-{n.status}\">"
                f"<td class=\"id\">{_e(n.id)}{crit}</td><td>{n.wave}</td>"
                f"<td><span class=\"pill s-{n.status}\">{n.status}</span></td>"
                f"<td class=\"num\">{_e(_seconds(n.duration)) if n.ran else ''}</td>"
                f"<td>{_e(n.reason)}</td><td>{log}</td></tr>")
        if self.nodes:
            out.append("</tbody></table></div>")
        out.append("</section>")
        return "".join(out)

    def log_name(self, n: NodeRun) -> str:
        """A log's path below the run's log directory (named once, in the header)."""
        if self.log_dir and n.log and n.log.startswith(self.log_dir + os.sep):
            return n.log[len(self.log_dir) + 1:]
        return n.log or ""


def _tick(end: float) -> float:
    raw = end / 10
    base = 10 ** _floor_log10(raw)
    for m in (1, 2, 5, 10):
        if base * m >= raw:
            return base * m
    return base * 10


def _floor_log10(x: float) -> int:
    n = 0
    while x >= 10:
        x /= 10
        n += 1
    while x < 1:
        x *= 10
        n -= 1
    return n


def _tick_label(t: float, step: float) -> str:
    if step >= 1:
        return f"{t:.0f} s"
    if step >= 0.1:
        return f"{t:.1f} s"
    return f"{t * 1000:.0f} ms"


def render_html(report: RunReport) -> str:
    return _Page(report).render()


CSS = """
:root{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;background:#fafafa}
body{margin:0 auto;padding:12px 20px;max-width:1400px}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:22px 0 6px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:4px 0}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:#555;word-break:break-all}
pre{font:12px/1.35 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#1e1e1e;color:#e8e8e8;
padding:8px;overflow:auto;max-height:24em;white-space:pre-wrap;word-break:break-all;margin:4px 0}
.facts,.meta{margin:4px 0}.meta{color:#666}
.result{font-size:14px;padding:2px 10px;border-radius:12px;vertical-align:middle;color:#fff}
.r-success{background:#38761d}.r-failure{background:#cc0000}.r-interrupted{background:#e69138}
.pill{display:inline-block;padding:0 7px;border-radius:9px;font-size:12px;white-space:nowrap}
.s-succeeded.pill,.chip.s-succeeded{background:#6aa84f;color:#fff}.s-cached.pill,.chip.s-cached{background:#b6d7a8}
.s-failed.pill,.chip.s-failed{background:#e06666;color:#fff}.s-skipped.pill,.chip.s-skipped{background:#cccccc}
.s-cancelled.pill,.chip.s-cancelled{background:#f6b26b}
.failure{border-left:4px solid #e06666;background:#fff;padding:2px 10px;margin:6px 0}
.failure p{margin:2px 0}.failure pre{max-height:12em}
.legend{margin:4px 0;font-size:12px}.key{margin-right:14px;white-space:nowrap}
.key i{display:inline-block;width:12px;height:12px;border-radius:2px;vertical-align:-2px;margin-right:4px}
.key i.crit{border:2px solid #1c4587;width:10px;height:10px}
.scroll{overflow:auto;background:#fff;border:1px solid #e3e3e3;max-height:80vh}
.dagbox{max-height:min(70vh,560px)}
svg text{font:11px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
svg .wave{font-weight:bold;fill:#444}
.edge{fill:none;stroke:#9aa;stroke-width:1;stroke-opacity:.45}.edge.crit{stroke:#1c4587;stroke-width:2.5;stroke-opacity:1}
.node.crit rect{stroke:#1c4587;stroke-width:3}
.bar.crit{stroke:#1c4587;stroke-width:2.5}.bar{stroke:#fff;stroke-width:.5}
.tick{stroke:#eee}.axis{fill:#888}.lane{fill:#555}.barlabel{fill:#fff;pointer-events:none;font-size:10px}
.wavemark{stroke:#777;stroke-dasharray:3 3}
.dense .bar{stroke:none}.dense .bar.crit{stroke:#1c4587;stroke-width:1.5}
.dim{opacity:.15}
.path{font-size:12px;color:#444}
.waves details{background:#fff;border:1px solid #e3e3e3;margin:3px 0;padding:2px 8px}
.waves summary{cursor:pointer}
td summary{white-space:nowrap;cursor:pointer}
.what{display:inline-block;min-width:31em}
.mix{display:inline-flex;width:200px;height:9px;vertical-align:middle;margin-left:8px}
.mix i{display:block;height:9px}
.chips{display:flex;flex-wrap:wrap;gap:3px;padding:4px 0}
.chip{font:11px ui-monospace,Menlo,Consolas,monospace;padding:1px 5px;border-radius:3px;text-decoration:none;color:#222}
.chip.crit{outline:2px solid #1c4587}
table{border-collapse:collapse;width:100%;background:#fff;table-layout:fixed}
.chunk{content-visibility:auto}
th,td{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f0f0f0}
td.id{font:12px ui-monospace,Menlo,Consolas,monospace;word-break:break-all}td.num{text-align:right;white-space:nowrap}
tr.s-failed td.id{color:#990000;font-weight:bold}
.crit-mark{font:10px system-ui,sans-serif;color:#fff;background:#1c4587;border-radius:3px;padding:0 4px;margin-left:4px}
tr:target{background:#fff2cc}
#tools{margin:8px 0}#filter{width:320px;padding:3px 6px}#shown{color:#666;font-size:12px}
"""

# Progressive enhancement only: the page says everything without it.
JS = """
(function(){
var tools=document.getElementById('tools');tools.hidden=false;
var box=document.getElementById('filter'),shown=document.getElementById('shown');
function low(t){return (t||'').toLowerCase();}
var rows=[].slice.call(document.querySelectorAll('tbody tr')).map(function(r){
  return [r,low(r.cells[0].textContent+' '+r.cells[2].textContent+' '+r.cells[4].textContent)];});
var marks=[].slice.call(document.querySelectorAll('.chip,.node,rect.bar')).map(function(m){
  var t=m.querySelector('title');return [m,low(m.textContent+' '+(m.getAttribute('title')||'')+' '+(t?t.textContent:''))];});
var timer=null;
function apply(){
  var q=box.value.trim().toLowerCase(),n=0;
  rows.forEach(function(e){var hit=!q||e[1].indexOf(q)>=0;e[0].hidden=!hit;if(hit)n++;});
  marks.forEach(function(e){var m=e[0],hit=!q||e[1].indexOf(q)>=0;
    if(m.classList.contains('chip'))m.hidden=!hit;else m.classList.toggle('dim',!hit);});
  if(q){[].forEach.call(document.querySelectorAll('.waves details'),function(d){
    d.open=!!d.querySelector('.chip:not([hidden])');});}
  shown.textContent=q?(n+' of '+rows.length+' components match'):'';
}
box.addEventListener('input',function(){clearTimeout(timer);timer=setTimeout(apply,120);});
// A link can carry a filter: report.html#filter=failed
var m=/^#filter=(.*)$/.exec(location.hash);if(m){box.value=decodeURIComponent(m[1]);apply();}
function all(open){[].forEach.call(document.querySelectorAll('.waves details'),function(d){d.open=open;});}
document.getElementById('expand').onclick=function(){all(true);};
document.getElementById('collapse').onclick=function(){all(false);};
})();
"""
