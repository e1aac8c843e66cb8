"""The report as one self-contained HTML page: styles, figures (PNG, base64) and the small
script that sorts its tables are inline, so it opens anywhere with no network access."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from robench.leaderboard import FLAG_MARK
from robench.report.data import RunData, eps_label
from robench.report.figures import NORM_NAMES, FigureFile
from robench.report.summary import Summary

STYLE_SHEET = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;
line-height:1.45;background:#fff}
header{background:#24292f;color:#fff;padding:18px 28px}
header h1{margin:0 0 4px;font-size:1.5em}header p{margin:2px 0;color:#d0d7de}
nav{position:sticky;top:0;background:#f6f8fa;border-bottom:1px solid #d0d7de;padding:8px 28px;
z-index:2}nav a{margin-right:16px;color:#0969da;text-decoration:none;font-size:.95em}
main{max-width:1240px;padding:8px 28px 40px}
section{margin-top:28px}h2{border-bottom:1px solid #d0d7de;padding-bottom:4px}
.lead{font-size:1.05em;background:#ddf4ff;border:1px solid #54aeff;padding:10px 14px;
border-radius:6px}.note{color:#57606a;font-size:.92em}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa;cursor:pointer;user-select:none}td.num{text-align:right;
font-variant-numeric:tabular-nums}tr.flagged td{background:#fff1f0}
.flag{color:#cf222e;font-weight:600}.err{color:#cf222e}
table.board td:nth-child(2){white-space:nowrap}
figure{margin:14px 0 24px}figure img{max-width:100%;height:auto;border:1px solid #eaeef2}
figcaption{color:#57606a;font-size:.9em;max-width:1000px}
pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:.85em;max-height:480px}
details summary{cursor:pointer;font-weight:600;margin:8px 0}
"""

SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.title = 'click to sort';
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0];
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var down = th.dataset.order !== 'asc';
    th.parentNode.querySelectorAll('th').forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = down ? 'asc' : 'desc';
    var rows = Array.prototype.slice.call(body.rows);
    function key(row) {
      var cell = row.children[col];
      var v = cell ? (cell.dataset.sort || cell.textContent.trim()) : '';
      var n = parseFloat(v);
      return isNaN(n) ? v.toLowerCase() : n;
    }
    rows.sort(function (a, b) {
      var x = key(a), y = key(b);
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      return (x < y ? -1 : x > y ? 1 : 0) * (down ? 1 : -1);
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""


def _num(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value):
        return ""
    return f"{float(value):.{digits}f}"


def table(
    headers: Sequence[str] | None,
    rows: Iterable[Sequence[Any]],
    *,
    numeric: Iterable[int] = (),
    row_classes: Sequence[str] | None = None,
    sortable: bool = True,
    css: str = "",
) -> str:
    """An HTML table; cells are escaped unless given as ``("html", text)``."""
    nums = set(numeric)
    head = "".join(f"<th>{escape(h)}</th>" for h in headers or ())
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        cells = []
        for j, v in enumerate(row):
            text = v[1] if isinstance(v, tuple) and v[0] == "html" else escape(str(v))
            cells.append(f'<td class="num">{text}</td>' if j in nums else f"<td>{text}</td>")
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    classes = " ".join(c for c in ("sortable" if sortable else "", css) if c)
    css = f' class="{classes}"' if classes else ""
    thead = f"<thead><tr>{head}</tr></thead>" if head else ""
    return f"<table{css}>{thead}<tbody>{''.join(body)}</tbody></table>"


def figure_html(fig: FigureFile, base: Path | None) -> str:
    data = base64.b64encode(fig.png).decode()
    where = ""
    if fig.files:
        names = []
        for f in fig.files:
            try:
                names.append(str(f.relative_to(base)) if base is not None else f.name)
            except ValueError:
                names.append(str(f))
        where = f" <em>Files: {escape(', '.join(names))}.</em>"
    return (
        f'<figure id="fig-{escape(fig.name)}"><img src="data:image/png;base64,{data}" '
        f'alt="{escape(fig.title)}"><figcaption>{escape(fig.caption)}{where}</figcaption></figure>'
    )


def _duration(seconds: Any) -> str:
    """``"1959 s (32.6 min)"``; "" when unknown."""
    if seconds is None or pd.isna(seconds):
        return ""
    s = float(seconds)
    text = f"{s:.1f} s" if s < 10 else f"{s:.0f} s"
    if s >= 120:
        text += f" ({s / 60:.1f} min)" if s < 7200 else f" ({s / 3600:.1f} h)"
    return text


def _short_flags(flags: str) -> str:
    """A defense's flags without their figures (the reasons are under Trust checks):
    ``"masked gradients; gradient-free beats white-box at linf 0.1"``."""
    return "; ".join(dict.fromkeys(f.split(":")[0].strip() for f in flags.split("; ") if f))


def _budget(summary: Summary, norm: str, eps: float) -> str:
    return f"{NORM_NAMES.get(norm, norm)} ε = {eps_label(eps, summary.k255.get(norm, False))}"


def _defense(summary: Summary, d: str) -> tuple[str, str]:
    mark = f' <span class="flag" title="a trust check failed">{FLAG_MARK}</span>'
    return ("html", escape(d) + (mark if summary.is_flagged(d) else ""))


def lead(summary: Summary) -> str:
    """The report's first sentences: who ranks first, at which budget, and who is flagged."""
    board = summary.board
    parts = []
    if board is not None and len(board) and summary.ranked_at is not None:
        top = board.iloc[0]
        where = _budget(summary, *summary.ranked_at)
        parts.append(
            f"Ranked first at {where}: <b>{escape(str(top['defense']))}</b>, worst-case robust "
            f"accuracy {_num(top['robust_accuracy'])} % (95 % interval "
            f"{escape(str(top['robust_ci95']))} %), clean {_num(top['clean_accuracy'])} %."
        )
    flagged = [d for d in [*summary.defenses, *summary.hidden] if summary.is_flagged(d)]
    if flagged:
        how = {
            "last": "ranked after the unflagged ones",
            "hide": "left out of the leaderboard and figures",
            "keep": "ranked by their numbers alone (--flagged keep)",
        }[board.attrs.get("flagged", "last") if board is not None else "last"]
        names = ", ".join(escape(d) for d in flagged)
        parts.append(
            f'<span class="flag">{FLAG_MARK}</span> {len(flagged)} flagged defense'
            f"{'s' if len(flagged) > 1 else ''} ({names}), {how}: their numbers fail a trust "
            'check (see <a href="#trust">Trust checks</a>).'
        )
    else:
        parts.append("No defense raised a trust-check flag.")
    if summary.board_note:
        parts.append(escape(summary.board_note))
    return f'<p class="lead">{" ".join(parts)}</p>'


def leaderboard(summary: Summary) -> str:
    board = summary.board
    if board is None or not len(board):
        return f'<p class="note">{escape(summary.board_note or "every defense is hidden")}</p>'
    budgets = [c for c in board.columns if c.startswith("robust ") and c != "robust_accuracy"]
    ranked = board["ranked_at"].iloc[0]
    if summary.ranked_at is not None:
        ranked = _budget(summary, *summary.ranked_at)
    heads = ["rank", "defense", "clean %", f"worst case % at {ranked}"]
    heads += ["95 % interval", "interval", "strongest attack"]
    for c in budgets:
        norm, eps = c[len("robust ") :].split(" ")
        heads.append(f"{_budget(summary, norm, float(eps))} %")
    heads += ["flags", "status"]
    rows, classes = [], []
    several = "clean_std" in board and board["clean_std"].notna().any()
    for _, r in board.iterrows():
        clean = _num(r["clean_accuracy"])
        robust = _num(r["robust_accuracy"])
        if several and not pd.isna(r.get("robust_std")):
            clean += f" ± {_num(r['clean_std'])}"
            robust += f" ± {_num(r['robust_std'])}"
        rows.append(
            [
                r["rank"],
                _defense(summary, r["defense"]),
                clean,
                robust,
                r["robust_ci95"],
                r["ci_method"],
                r["strongest_attack"],
                *[_num(r[c]) for c in budgets],
                ("html", f'<span class="flag">{escape(_short_flags(r["flags"]))}</span>')
                if r["flags"]
                else "none",
                r["status"],
            ]
        )
        classes.append("flagged" if r["flagged"] else "")
    numeric = [0, 2, 3, *range(7, 7 + len(budgets))]
    html = table(heads, rows, numeric=numeric, row_classes=classes, css="board")
    if summary.hidden:
        names = escape(", ".join(summary.hidden))
        html += f'<p class="note">Hidden (flagged, --flagged hide): {names}.</p>'
    return html


def trust(summary: Summary) -> str:
    rows = []
    for d in [*summary.defenses, *summary.hidden]:
        for seed, reason in summary.flags.get(d, []):
            rows.append([_defense(summary, d), "" if seed < 0 else seed, reason])
    if not rows:
        return "<p>No defense raised a flag: every trust check passed.</p>"
    return table(["defense", "training seed", "why its numbers are not to be trusted"], rows)


def all_results(run: RunData, summary: Summary) -> str:
    r = run.results
    rows, classes = [], []
    for _, x in r.iterrows():
        budget = "" if x["kind"] == "clean" else _budget(summary, x["norm"], float(x["eps"]))
        ci = (
            f"{_num(100 * x['ci_low'])}–{_num(100 * x['ci_high'])}"
            if not pd.isna(x["ci_low"])
            else ""
        )
        rows.append(
            [
                _defense(summary, x["defense"]),
                "" if pd.isna(x["train_seed"]) else int(x["train_seed"]),
                x["kind"],
                x["attack"] + (f" ← {x['source']}" if x["source"] else ""),
                budget,
                _num(100 * x["accuracy"]) if not pd.isna(x["accuracy"]) else "",
                ci,
                _num(100 * x["adv_accuracy"]) if not pd.isna(x["adv_accuracy"]) else "",
                "" if pd.isna(x["n_attacked"]) else int(x["n_attacked"]),
                _num(x["seconds"], 2),
                ("html", f'<span class="err">{escape(x["error"])}</span>')
                if x["status"] != "ok"
                else x["status"],
            ]
        )
        classes.append("flagged" if x["status"] != "ok" else "")
    heads = ["defense", "seed", "kind", "attack", "budget", "accuracy %", "95 % CI"]
    heads += ["adv. accuracy %", "attacked", "seconds", "status"]
    return table(heads, rows, numeric=[1, 5, 7, 8, 9], row_classes=classes)


def provenance(run: RunData) -> str:
    p = run.provenance
    if not p:
        return '<p class="note">No provenance file (results.json) was found beside the results.</p>'
    git = p.get("git") or {}
    device = p.get("device") or {}
    cells = p.get("cells") or {}
    facts = [
        ("benchmark", p.get("benchmark", "")),
        ("status", p.get("status", "")),
        ("started / finished", f"{p.get('started', '?')} / {p.get('finished', '?')}"),
        ("run time", _duration(p.get("seconds"))),
        (
            "command",
            " ".join(p["command"]) if isinstance(p.get("command"), list) else p.get("command", ""),
        ),
        ("config file", p.get("config_file", "")),
        (
            "git commit",
            f"{git.get('commit', '?')}{' (uncommitted changes)' if git.get('dirty') else ''}",
        ),
        ("device", ", ".join(f"{k} {v}" for k, v in device.items() if k != "thread_env")),
        (
            "dataset",
            (p.get("dataset") or {}).get("note", "") or (p.get("dataset") or {}).get("name", ""),
        ),
        ("cells", ", ".join(f"{k} {v}" for k, v in cells.items() if k != "file")),
        ("results file", str(run.results_path)),
    ]
    html = table(None, [(k, v) for k, v in facts if v not in ("", None, "None")], sortable=False)
    versions = p.get("versions") or {}
    if versions:
        html += "<h3>Versions</h3>" + table(["library", "version"], sorted(versions.items()))
    plugins = p.get("plugins") or []
    if plugins:
        rows = [
            [
                x.get("kind", ""),
                x.get("name", ""),
                f"{x.get('distribution', '')} {x.get('version', '')}",
            ]
            for x in plugins
        ]
        html += "<h3>Plugins</h3>" + table(["kind", "name", "supplied by"], rows)
    errors = p.get("errors") or []
    if errors:
        html += "<h3>Errors</h3>" + table(
            ["cell", "error"], [[e.get("cell", ""), e.get("error", "")] for e in errors]
        )
    config = p.get("config")
    if config:
        text = escape(json.dumps(config, indent=2, default=str))
        html += f"<details><summary>Resolved configuration</summary><pre>{text}</pre></details>"
    return html
