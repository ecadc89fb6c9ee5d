"""`clue-run report --format html`: one self-contained page (CSS, JS and figures inline; nothing fetched).

The same rows as the markdown table: scores with their 95 % intervals and significance marks, sortable by
any column (click a header); published rows in their own section; the forest plot (with --compare) or the
scores-and-curves picture; per system the config, the per-split/seed scores and the training curves.
"""

from __future__ import annotations

import base64
import json
import tempfile
from html import escape
from pathlib import Path
from typing import Optional

from ..runs.result import read_result
from . import Cell, Report, Row, Run, format_score, notes

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC",sans-serif;margin:24px;color:#1d232a;max-width:1400px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{padding:4px 9px;border-bottom:1px solid #dde1e6;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
th{background:#f1f3f5;cursor:pointer;user-select:none}
th.sorted-asc::after{content:" ▲";font-size:10px} th.sorted-desc::after{content:" ▼";font-size:10px}
tbody.published td{color:#6b7280;font-style:italic;background:#fafafa}
tr.section td{background:#eef2f7;color:#374151;font-weight:600;font-style:normal;cursor:default}
.ci{color:#6b7280;font-size:11px} .n{color:#9ca3af;font-size:11px}
.sig{color:#b91c1c;font-weight:700} .note{color:#4b5563;font-size:12px;max-width:1100px;line-height:1.45}
details{margin:6px 0;border:1px solid #e5e7eb;border-radius:6px;padding:6px 10px}
summary{cursor:pointer;font-weight:600} pre{background:#f8fafc;padding:8px;font-size:11px;overflow:auto;max-height:260px}
svg{max-width:100%;height:auto} .wide{overflow-x:auto}
#comparisons td:nth-child(-n+3),#comparisons th:nth-child(-n+3){text-align:left}
"""

SCRIPT = """
document.querySelectorAll("table.sortable").forEach(function(table){
  table.querySelectorAll("thead th").forEach(function(th, col){
    th.addEventListener("click", function(){
      var asc = !th.classList.contains("sorted-asc");
      table.querySelectorAll("thead th").forEach(function(h){h.classList.remove("sorted-asc","sorted-desc");});
      th.classList.add(asc ? "sorted-asc" : "sorted-desc");
      table.querySelectorAll("tbody").forEach(function(body){
        var rows = Array.prototype.filter.call(body.rows, function(r){return !r.classList.contains("section");});
        rows.sort(function(a, b){
          var x = a.cells[col].getAttribute("data-sort"), y = b.cells[col].getAttribute("data-sort");
          var nx = parseFloat(x), ny = parseFloat(y);
          if (x === "" || isNaN(nx)) { nx = null; } if (y === "" || isNaN(ny)) { ny = null; }
          var r;
          if (nx !== null && ny !== null) { r = nx - ny; }
          else if (nx === null && ny === null) { r = String(x).localeCompare(String(y)); }
          else { return nx === null ? 1 : -1; }
          return asc ? r : -r;
        });
        rows.forEach(function(r){body.appendChild(r);});
      });
    });
  });
});
"""


def _td(text: str, sort, extra: str = "") -> str:
    return f'<td data-sort="{escape(str(sort))}"{extra}>{text}</td>'


def _cell_html(cell: Optional[Cell], mark: str, title: str) -> str:
    if cell is None:
        return _td("", "")
    body = format_score(cell.mean)
    if cell.ci_low is not None:
        body += f' <span class="ci">[{cell.ci_low:.2f}, {cell.ci_high:.2f}]</span>'
    if cell.n is not None:
        body += f' <span class="n">n={cell.n}</span>'
    if mark:
        body += f' <span class="sig">{mark}</span>'
    return _td(body, f"{cell.mean:.6f}", f' title="{escape(title)}"' if title else "")


def _marks(comparisons) -> dict[tuple[str, str], tuple[str, str]]:
    """(system label, task) → (mark, tooltip) from the comparisons against a reference."""
    marks = {}
    for c in comparisons or []:
        r = c.result
        tip = f"vs {c.reference}: Δ {r.mean:+.2f}, Holm p {r.holm_p:.3f}" if r.holm_p is not None else ""
        mark = "*" if r.significant else ""
        marks[(c.system, c.task)] = (mark, tip)
    return marks


def _score_table(report: Report, comparisons) -> str:
    avg = report.has_avg
    head = "".join(f"<th>{escape(h)}</th>" for h in ["system", *report.tasks, *(["avg"] if avg else [])])
    marks = _marks(comparisons)

    def row_html(row: Row) -> str:
        cells = [_td(escape(row.label), row.label)]
        for t in report.tasks:
            mark, tip = marks.get((f"{row.model} · {row.method}", t), ("", "")) if not row.published else ("", "")
            cells.append(_cell_html(row.cells.get(t), mark, tip))
        if avg:
            value = row.avg(report.tasks)
            cells.append(_td(format_score(value), "" if value is None else f"{value:.6f}"))
        return "<tr>" + "".join(cells) + "</tr>"

    mine = "".join(row_html(r) for r in report.rows if not r.published)
    published = [r for r in report.rows if r.published]
    width = 1 + len(report.tasks) + avg
    section = (f'<tbody class="published"><tr class="section"><td colspan="{width}">Published baselines '
               "(copied from their sources; not part of your runs)</td></tr>" + "".join(row_html(r) for r in published)
               + "</tbody>") if published else ""
    return (f'<table class="sortable" id="scores"><thead><tr>{head}</tr></thead><tbody class="runs">{mine}</tbody>'
            f"{section}</table>")


def _comparison_table(comparisons) -> str:
    from .compare import HEADER, values

    head = "".join(f"<th>{escape(h)}</th>" for h in HEADER)
    body = []
    for c in comparisons:
        shown = values(c)
        sort = [c.task, c.system, c.reference, c.result.n, c.result.mean, c.result.mean, c.result.perm_p,
                "" if c.result.t_p is None else c.result.t_p, "" if c.result.holm_p is None else c.result.holm_p,
                int(c.result.significant), "" if c.bootstrap is None else c.bootstrap.mean,
                "" if c.result.aso is None else c.result.aso]
        body.append("<tr>" + "".join(_td(escape(v) if v != "*" else '<span class="sig">*</span>', s)
                                     for v, s in zip(shown, sort)) + "</tr>")
    return (f'<div class="wide"><table class="sortable" id="comparisons"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _curve_svg(runs: list[Run], metric: str, width: int = 360, height: int = 120) -> str:
    """The eval metric against the step, one polyline per run (inline SVG)."""
    series = [[(h.step, h.metrics[metric] * 100) for h in r.history if metric in h.metrics] for r in runs]
    series = [s for s in series if s]
    if not series:
        return '<p class="note">no training history</p>'
    xs = [x for s in series for x, _ in s]
    ys = [y for s in series for _, y in s]
    x0, x1, y0, y1 = min(xs), max(xs) or 1, min(ys), max(ys)
    sx = lambda x: 30 + (width - 40) * ((x - x0) / ((x1 - x0) or 1))  # noqa: E731
    sy = lambda y: height - 18 - (height - 28) * ((y - y0) / ((y1 - y0) or 1))  # noqa: E731
    lines = "".join(f'<polyline fill="none" stroke="hsl({(i * 67) % 360},60%,45%)" stroke-width="1.4" points="'
                    + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s) + '"/>' for i, s in enumerate(series))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="{escape(metric)} during training">{lines}'
            f'<text x="2" y="12" font-size="10">{y1:.1f}</text><text x="2" y="{height - 18}" font-size="10">{y0:.1f}</text>'
            f'<text x="30" y="{height - 4}" font-size="10">step {x0}</text>'
            f'<text x="{width - 60}" y="{height - 4}" font-size="10">step {x1}</text></svg>')


def _details(report: Report, runs: list[Run]) -> str:
    parts = []
    for row in (r for r in report.rows if not r.published):
        members = [r for r in runs if r.system == (row.model, row.method) and r.task in row.cells]
        config = _config_of(members[0]) if members else {}
        scores = "".join(f"<tr><td>{escape(t)}</td><td>{escape(str(p['split'] or '-'))}</td><td>{p['seed']}</td>"
                         f"<td>{p['score']:.2f}</td><td>{escape(p['run'])}</td></tr>"
                         for t, c in row.cells.items() for p in c.per_run)
        curves = "".join(f"<div><b>{escape(t)}</b> ({escape(report.metrics.get(t, ''))})<br>"
                         f"{_curve_svg([r for r in members if r.task == t], report.metrics.get(t, ''))}</div>"
                         for t in report.tasks if t in row.cells)
        parts.append(f"<details><summary>{escape(row.label)}</summary>"
                     f'<table><thead><tr><th>task</th><th>split</th><th>seed</th><th>score</th><th>run</th></tr></thead>'
                     f'<tbody>{scores}</tbody></table><div style="display:flex;gap:18px;flex-wrap:wrap">{curves}</div>'
                     f"<pre>{escape(json.dumps(config, ensure_ascii=False, indent=1))}</pre></details>")
    return "".join(parts)


def _config_of(run: Run) -> dict:
    return read_result(run.path).config  # the file was read (and validated) when the run was loaded


def _figure(report: Report, runs: list[Run], comparisons) -> str:
    if comparisons:
        from .plots import forest_svg

        return forest_svg(comparisons)
    from .plots import plot_report

    with tempfile.TemporaryDirectory() as tmp:
        png = plot_report(report, runs, Path(tmp) / "report.png").read_bytes()
    return f'<img alt="scores and training curves" style="max-width:100%" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def to_html(report: Report, runs: list[Run], comparisons=None, aso: bool = False) -> str:
    from .compare import footnote

    note_lines = notes(report) + (footnote(comparisons, aso, aso) if comparisons else [])
    compared = (f"<h2>Paired comparisons</h2>{_comparison_table(comparisons)}" if comparisons else "")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>clue-run report</title>"
            f"<style>{STYLE}</style></head><body><h1>clue-run report</h1>"
            f'<p class="note">Click a column header to sort. * : significantly different from the reference '
            f"(Holm-corrected paired sign-flip test, p &lt; 0.05).</p>"
            f"<h2>Scores</h2>{_score_table(report, comparisons)}{compared}"
            f"<h2>Figure</h2>{_figure(report, runs, comparisons)}"
            f"<h2>Notes</h2>" + "".join(f'<p class="note">{escape(line)}</p>' for line in note_lines)
            + f"<h2>Details per system</h2>{_details(report, runs)}<script>{SCRIPT}</script></body></html>\n")
