"""The gate's result as text: a terminal table, Markdown for a CI job summary, JUnit XML, JSON.

Kept apart from the rules (gate.py): the rules decide, these only say it.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from .gate import FAIL, SKIP, WARN, GateResult, _fmt, _fmt_change


HEADERS = ["status", "task", "kind", "method", "budget", "metric", "base", "new", "change", "tolerance", "seeds", "reason"]


def _rows(res: GateResult) -> list[list[str]]:
    return [[c.status.upper(), *(str(x) for x in c.row), c.column, _fmt(c.base), _fmt(c.new),
             _fmt_change(c.change, "%" in c.tolerance), c.tolerance or "-", str(c.seeds or "-"), c.reason]
            for c in res.checks]


def verdict(res: GateResult) -> str:
    n, f = len([c for c in res.checks if c.status != SKIP]), len(res.failures)
    w = sum(c.status == WARN for c in res.checks)
    warned = f", {w} beyond tolerance but not significant" if w else ""
    return f"gate {'PASSED' if res.passed else 'FAILED'}: {n} checks, {f} regression{'s' if f != 1 else ''}{warned}"


def render_table(res: GateResult) -> str:
    rows = _rows(res)
    if not rows:
        return verdict(res) + "\n(nothing to check)"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    line = lambda cells: "  ".join(c.ljust(w) if i not in (6, 7, 8) else c.rjust(w)
                                   for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    out = [line(HEADERS), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(out + [""] + [f"note: {n}" for n in res.notes] + [verdict(res)])


def render_markdown(res: GateResult) -> str:
    """Regressions and warnings in a table, every check in a collapsed one (a CI job summary)."""
    head = f"### lowdim-bench gate: {'PASSED' if res.passed else 'FAILED'}\n\n{verdict(res)}\n"
    tols = ", ".join(f"`{t.text}`" for t in res.tolerances) or "none"
    out = [head, f"Tolerances: {tols}\n"]
    rows = _rows(res)
    esc = lambda s: s.replace("|", "\\|")
    table = lambda rs: ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)] + [
        "| " + " | ".join(esc(x) for x in r) + " |" for r in rs]
    flagged = [r for r in rows if r[0] in (FAIL.upper(), WARN.upper())]
    out += table(flagged) if flagged else ["No check beyond its tolerance."]
    out += [""] + [f"- {n}" for n in res.notes]
    if rows:
        out += ["", f"<details><summary>all {len(rows)} checks</summary>", ""] + table(rows) + ["", "</details>"]
    return "\n".join(out) + "\n"


def render_junit(res: GateResult) -> str:
    """JUnit XML: one testcase per row and metric; a regression is a <failure> with the numbers."""
    suite = ET.Element("testsuite", name="lowdim-bench gate", tests=str(len(res.checks)),
                       failures=str(len(res.failures)), errors="0",
                       skipped=str(sum(c.status == SKIP for c in res.checks)))
    props = ET.SubElement(suite, "properties")  # before the testcases, as the JUnit schema wants
    for n in res.notes:
        ET.SubElement(props, "property", name="note", value=n)
    for c in res.checks:
        case = ET.SubElement(suite, "testcase", classname="lowdim_bench.gate." + ".".join(
            re.sub(r"[^A-Za-z0-9_-]+", "_", str(x)) for x in c.row), name=c.column)
        if c.status == FAIL:
            ET.SubElement(case, "failure", message=c.reason, type="regression").text = (
                f"base={_fmt(c.base)} new={_fmt(c.new)} change={_fmt_change(c.change, '%' in c.tolerance)} "
                f"tolerance={c.tolerance or '-'} seeds={c.seeds}\n{c.reason}")
        elif c.status == SKIP:
            ET.SubElement(case, "skipped", message=c.reason)
        elif c.status == WARN:
            ET.SubElement(case, "system-out").text = f"not significant: {c.reason}"
    suites = ET.Element("testsuites", tests=suite.get("tests"), failures=suite.get("failures"))
    suites.append(suite)
    ET.indent(suites)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def to_dicts(res: GateResult) -> dict:
    return {"passed": res.passed, "tolerances": [t.text for t in res.tolerances], "notes": res.notes,
            "checks": [{"task": c.row[0], "kind": c.row[1], "method": c.row[2], "size": c.row[3], "metric": c.column,
                        "status": c.status, "base": c.base, "new": c.new, "change": c.change,
                        "tolerance": c.tolerance, "seeds": c.seeds, "p_value": c.p_value, "reason": c.reason}
                       for c in res.checks]}
