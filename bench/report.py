"""Turning collected samples into the table, results.json and results.md.

`results["scenarios"][SCENARIO][TOOL]` is one entry:

    {"status": "ok" | "n/a" | "error", "median_s", "runs_s": [...],
     "peak_rss_mb" (max over runs), "ratio_ninja", "ratio_doit",
     "command", "note", "error"}

Ratios divide by the ninja / doit entry *of the same scenario* (for `load`
those are `ninja -t targets all` and `doit list`, the tools' own
load-the-graph steps).
"""

from __future__ import annotations

import json
import os
import statistics

RSS_LIMIT_MB = 150.0
DASK_OVERHEAD_MS = 25.0


def entry_from_runs(runs_s: list[float], rss_mb: list[float | None], command: str) -> dict:
    rss = [r for r in rss_mb if r is not None]
    return {
        "status": "ok",
        "median_s": statistics.median(runs_s),
        "runs_s": [round(s, 4) for s in runs_s],
        "peak_rss_mb": round(max(rss), 1) if rss else None,
        "command": command,
    }


def na_entry(reason: str) -> dict:
    return {"status": "n/a", "median_s": None, "peak_rss_mb": None, "note": reason}


def error_entry(message: str, command: str = "") -> dict:
    return {"status": "error", "median_s": None, "peak_rss_mb": None, "error": message, "command": command}


def add_ratios(scenarios: dict) -> None:
    for entries in scenarios.values():
        ninja = (entries.get("ninja") or {}).get("median_s")
        doit = (entries.get("doit") or {}).get("median_s")
        for e in entries.values():
            t = e.get("median_s")
            e["ratio_ninja"] = t / ninja if t is not None and ninja else None
            e["ratio_doit"] = t / doit if t is not None and doit else None


def _get(results: dict, scenario: str, tool: str, key: str):
    return results["scenarios"].get(scenario, {}).get(tool, {}).get(key)


def _worst_round(results: dict, scenario: str) -> float | None:
    """The largest atmosbuild / ninja ratio of one round (both run in every
    round, so round i of one pairs with round i of the other)."""
    entries = results["scenarios"].get(scenario, {})
    ours = (entries.get("atmosbuild") or {}).get("runs_s") or []
    ninja = (entries.get("ninja") or {}).get("runs_s") or []
    pairs = [a / n for a, n in zip(ours, ninja) if n]
    return max(pairs) if pairs and len(ours) == len(ninja) else None


def targets(results: dict) -> list[dict]:
    """The issue's targets for atmosbuild, each with its measured value."""
    n = results["meta"]["n"]
    rss = [
        e["peak_rss_mb"]
        for scenario in ("cold", "noop", "edit", "load")
        for tool, e in results["scenarios"].get(scenario, {}).items()
        if tool.startswith("atmosbuild") and e.get("peak_rss_mb") is not None
    ]
    span = results["scenarios"].get("makespan", {})
    rows = [
        ("cold <= 1.0x Ninja", _get(results, "cold", "atmosbuild", "ratio_ninja"), 1.0),
        ("cold <= 2x Ninja, median (issue 16)", _get(results, "cold", "atmosbuild", "ratio_ninja"), 2.0),
        ("cold <= 2.5x Ninja in every round (issue 16)", _worst_round(results, "cold"), 2.5),
        ("no-op <= 3x Ninja", _get(results, "noop", "atmosbuild", "ratio_ninja"), 3.0),
        ("no-op <= 0.4x doit", _get(results, "noop", "atmosbuild", "ratio_doit"), 0.4),
        ("one-file edit <= 3x Ninja", _get(results, "edit", "atmosbuild", "ratio_ninja"), 3.0),
        (f"peak RSS <= {RSS_LIMIT_MB:.0f} MB (at n={n})", max(rss) if rss else None, RSS_LIMIT_MB),
        ("eager makespan <= 1.08x lower bound",
         span.get("atmosbuild-eager", {}).get("target_ratio"), 1.08),
        ("waves makespan <= 1.05x ideal per-wave schedule",
         span.get("atmosbuild-waves", {}).get("target_ratio"), 1.05),
    ]
    if "dask" in results:
        rows.append((f"dask overhead <= {DASK_OVERHEAD_MS:.0f} ms/action over local at -j{results['dask']['jobs']}",
                     results["dask"].get("overhead_ms_report", results["dask"].get("overhead_ms_wall")),
                     DASK_OVERHEAD_MS))
    if "postgres-noop" in results["scenarios"]:
        rows.append(("no-op on PostgreSQL <= 1.5x no-op on SQLite",
                     _get(results, "postgres-noop", "atmosbuild-postgres", "ratio_sqlite"), 1.5))
    out = []
    for name, value, limit in rows:
        status = "n/a" if value is None else ("pass" if value <= limit else "FAIL")
        out.append({"target": name, "value": value, "limit": limit, "status": status})
    return out


# --- text ------------------------------------------------------------------------


def _s(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _x(v) -> str:
    return "" if v is None else f"{v:.2f}x"


def _mb(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


def rows(results: dict) -> list[list[str]]:
    out = []
    for scenario, entries in results["scenarios"].items():
        for tool, e in entries.items():
            note = e.get("note", "")
            if e["status"] == "error":
                note = "ERROR: " + e["error"].splitlines()[0][:80]
            elif e["status"] == "n/a":
                note = "n/a"
            out.append([scenario, tool, _s(e["median_s"]), _x(e.get("ratio_ninja")),
                        _x(e.get("ratio_doit")), _mb(e["peak_rss_mb"]), note])
    for op, by_size in results.get("scale", {}).get("ops", {}).items():
        for size, e in by_size.items():
            note = e.get("note", "") if e["status"] != "error" else "ERROR: " + e["error"][:80]
            out.append([f"scale n={size}", f"atmosbuild {op}", _s(e["median_s"]), "", "",
                        _mb(e["peak_rss_mb"]), "n/a" if e["status"] == "n/a" else note])
    return out


HEADER = ["scenario", "tool", "median s", "x ninja", "x doit", "peak RSS MB", "note"]


def text_table(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER] + table) for i in range(len(HEADER))]
    lines = []
    for k, r in enumerate([HEADER] + table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in table]
    return "\n".join(lines)


def _targets_table(results: dict) -> list[list[str]]:
    return [[t["target"], "n/a" if t["value"] is None else f"{t['value']:.3f}", t["status"]]
            for t in results["targets"]]


def _slopes_lines(results: dict) -> list[str]:
    scale = results.get("scale", {})
    lines = [f"generate n={n} (1 file each): {s:.2f} s" for n, s in scale.get("generate_s", {}).items()]
    for op, segs in results.get("scale", {}).get("slopes", {}).items():
        for seg in segs:
            flag = "  <-- SUPERLINEAR?" if seg["superlinear"] else ""
            lines.append(
                f"{op}: {seg['from']} -> {seg['to']}: {seg['s_per_1k']:.4f} s/1k components, "
                f"{seg['mb_per_1k']:.2f} MB/1k{flag}"
            )
    return lines


def _makespan_lines(results: dict) -> list[str]:
    g = results.get("makespan_graph")
    if not g:
        return []
    return [
        f"makespan graph: {g['nodes']} nodes, {g['waves']} waves, -j{g['slots']}, "
        f"total work {g['total_work_s']:.3f} s, critical path {g['critical_path_s']:.3f} s",
        f"lower bound {g['lower_bound_s']:.3f} s, ideal per-wave schedule {g['ideal_waves_s']:.3f} s, "
        f"ideal eager (longest path first) {g['ideal_eager_s']:.3f} s",
    ]


def summary_text(results: dict) -> str:
    meta = results["meta"]
    parts = [
        f"n={meta['n']} components x {meta['files']} files, {meta['runs']} runs, -j{meta['jobs']}, "
        f"{meta['cpus']} CPUs, load average at start {meta['loadavg']}",
        "",
        text_table(rows(results)),
        "",
    ]
    parts += _makespan_lines(results)
    parts += _slopes_lines(results)
    parts += ["", "targets (atmosbuild):"]
    parts += [f"  {t}: {v} [{s}]" for t, v, s in _targets_table(results)]
    parts += ["", "tools:"] + [f"  {k}: {v}" for k, v in meta["tools"].items()]
    return "\n".join(parts)


def markdown(results: dict) -> str:
    meta = results["meta"]
    parts = [
        "# atmosbuild benchmark results",
        "",
        f"`{meta['command']}` at {meta['started']}: n={meta['n']} components x {meta['files']} files, "
        f"{meta['runs']} runs (median), -j{meta['jobs']}, {meta['cpus']} CPUs, "
        f"load average at start {meta['loadavg']}, {meta['platform']}.",
        "",
        markdown_table(HEADER, rows(results)),
        "",
    ]
    extra = _makespan_lines(results) + _slopes_lines(results)
    if extra:
        parts += [f"- {line}" for line in extra] + [""]
    parts += ["## Targets", "", markdown_table(["target", "value", "status"], _targets_table(results)), ""]
    parts += ["## Tools", ""] + [f"- {k}: {v}" for k, v in meta["tools"].items()] + [""]
    return "\n".join(parts)


def write(results: dict, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=False)
        f.write("\n")
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(markdown(results))
