"""``report.html``: the run's report as one self-contained page (inline SVG charts and CSS, no
scripts, nothing fetched), written beside ``report.json`` from the same report dict."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .html_charts import _charts, _e, _violations

__all__ = ["render_html_report", "write_html_report"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1180px;
color:#1d2433;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
.sub{color:#556;margin:0 0 16px}.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #dde;border-radius:8px;padding:8px 12px;min-width:150px;background:#f8f9fc}
.card b{display:block;font-size:17px}.card span{color:#556;font-size:12px}
table{border-collapse:collapse;width:100%;font-size:12.5px}th,td{padding:3px 8px;border-bottom:1px solid #eef;
text-align:left;vertical-align:top}th{background:#f2f4f9;position:sticky;top:0}td.n{text-align:right;
font-variant-numeric:tabular-nums}tr.complete td:first-child{border-left:3px solid #4c72b0}
tr.infeasible{color:#8a3a3c}tr.infeasible td:first-child{border-left:3px solid #c44e52}
tr.failed{color:#9a6a00}tr.failed td:first-child{border-left:3px solid #dd8452}tr.duplicate{color:#778}
tr.winner{background:#fff5e6;font-weight:600}.ok{color:#2e7d32}.bad{color:#c62828}
.charts{display:flex;flex-wrap:wrap;gap:16px}.charts figure{margin:0}figcaption{font-size:12px;color:#556}
.scroll{max-height:520px;overflow:auto;border:1px solid #eef}code{font-size:12px}
"""


def write_html_report(out: str | os.PathLike[str], report: Mapping[str, Any]) -> Path:
    """Write ``out/report.html`` (atomically) and return its path."""
    from latency_models.table import write_atomic

    folder = Path(out)
    path = folder / "report.html"
    write_atomic(path, render_html_report(report, folder))
    return path


def render_html_report(report: Mapping[str, Any], folder: Path | None = None) -> str:
    """The page for ``report`` (a ``report.json`` dict); ``folder`` supplies ``compress_report.json``
    and the sizes of the files on disk when given."""
    rows = list(report.get("trials", []))
    best = report.get("best") or {}
    budgets = dict(report.get("constraints") or {})
    winner = best.get("trial")
    task = report.get("task") or {}
    title = f"edge-nas report: {task.get('name', '?')} on {report.get('device', '?')}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # no network at all: not even a favicon request
        '<link rel="icon" href="data:,">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">space <code>{_e((report.get("space") or {}).get("name", "?"))}</code>, '
        f"strategy {_e(report.get('strategy', '?'))}, latency model: "
        f"{_e((report.get('latency_model') or {}).get('description', '?'))}{_drift(report)}</p>",
        _summary(report, best, budgets),
        "<h2>Budgets</h2>",
        _budgets(report),
        "<h2>Verified before shipping</h2>",
        _verification(report),
        "<h2>Pareto front</h2>",
        _charts(rows, report.get("pareto_front") or [], budgets, winner),
        "<h2>Exported files</h2>",
        _exports(report, best, folder),
        "<h2>Compression stages</h2>",
        _compression(report, folder),
        f"<h2>All trials ({len(rows)})</h2>",
        _trials(rows, winner),
        "<h2>Library versions</h2>",
        _kv_table(report.get("versions") or {}),
        "<h2>Configuration</h2>",
        f"<pre>{_e(json.dumps(report.get('config') or {}, indent=1, default=str))}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _kb(value: Any) -> str:
    return "–" if value is None else f"{float(value) / 1024:.1f}"


# -- budgets and verification -----------------------------------------------------------------------
def _budgets(report: Mapping[str, Any]) -> str:
    """As configured, as resolved on the device (and how), and the guard the search screened with."""
    doc = report.get("budgets") or {}
    resolved = doc.get("resolved") or report.get("constraints") or {}
    how = doc.get("how") or {}
    rows = [[name, _fmt(value), how.get(name, "absolute, as configured")] for name, value in resolved.items()]
    guard = doc.get("latency_guard")
    note = (
        f"<p>The search screened latency at {100 * (1 - float(guard)):.0f}% of the budget (the latency "
        "model's error near it and the timing noise).</p>"
        if guard
        else ""
    )
    requested = ", ".join(f"{k}: {_fmt(v)}" for k, v in (doc.get("requested") or {}).items())
    return (
        f"<p>As configured: {_e(requested or 'none')}</p>"
        + _table(["budget", "resolved", "how"], rows)
        + note
    )


def _verification(report: Mapping[str, Any]) -> str:
    """Every candidate whose exported file was measured, and the verdict on it."""
    rows = [
        [
            v.get("trial"),
            v.get("stage"),
            v.get("arch"),
            _fmt(v.get("search_accuracy")),
            _fmt(v.get("accuracy")),
            _fmt(v.get("predicted_latency_ms")),
            _fmt(v.get("measured_latency_ms"))
            + (f" ± {_fmt(v.get('latency_spread_ms'), 2)}" if v.get("latency_spread_ms") is not None else ""),
            _fmt(v.get("size_bytes")),
            "shipped" if v.get("shipped") else ("fits" if v.get("fits") else "does not fit"),
            "; ".join(v.get("reasons") or []),
        ]
        for v in report.get("verification") or []
    ]
    if not rows:
        return "<p>No candidate was verified.</p>"
    return _table(
        [
            "trial",
            "stage",
            "arch",
            "search acc",
            "file acc",
            "predicted ms",
            "measured ms ± spread",
            "bytes",
            "verdict",
            "why",
        ],
        rows,
    )


# -- summary --------------------------------------------------------------------------------------
def _drift(report: dict[str, Any]) -> str:
    """What re-timing the cached profile found (host runs with a cached profile only)."""
    drift = (report.get("latency_model") or {}).get("drift")
    if not drift or not drift.get("message"):
        return ""
    return f"; profile check: {_e(drift['message'])}"


def _summary(report: Mapping[str, Any], best: Mapping[str, Any], budgets: Mapping[str, float]) -> str:
    task = report.get("task") or {}
    counts = report.get("counts") or {}
    cards = [
        (
            "task",
            task.get("name", "?"),
            f"input {task.get('input_shape')} · {task.get('num_classes')} classes"
            + (f": {', '.join(task['class_names'])} (labels.txt)" if task.get("class_names") else ""),
        ),
        ("device", report.get("device", "?"), "the latency model prices candidates for this device"),
    ]
    names = {
        "max_latency_ms": ("latency budget", "ms"),
        "max_size_kb": ("size budget", "KB"),
        "max_memory_kb": ("memory budget", "KB"),
    }
    for key, (label, unit) in names.items():
        cards.append((label, f"{budgets[key]:g} {unit}" if key in budgets else "none", key))
    if best:
        cards += [
            (
                "winner accuracy",
                f"{100 * float(best.get('accuracy', 0)):.2f}%",
                _e(best.get("accuracy_split", "")),
            ),
            (
                "measured latency",
                f"{_fmt(best.get('measured_latency_ms'))} ms",
                f"predicted {_fmt(best.get('predicted_latency_ms'))} ms",
            ),
            (
                "file size",
                f"{_kb(best.get('size_bytes'))} KB",
                f"predicted {_kb(best.get('predicted_size_bytes'))} KB",
            ),
        ]
    cards.append(
        (
            "trials",
            str(counts.get("trials", len(report.get("trials", [])))),
            " · ".join(f"{k} {v}" for k, v in counts.items() if k != "trials"),
        )
    )
    html_cards = "".join(
        f'<div class="card"><span>{_e(a)}</span><b>{_e(b)}</b><span>{c if a.startswith("winner") else _e(c)}</span></div>'
        for a, b, c in cards
    )
    checks = best.get("meets_budgets") or {}
    check_line = ""
    if checks:
        items = ", ".join(
            f'<span class="{"ok" if ok else "bad"}">{_e(k.replace("_", " "))}: {"yes" if ok else "NO"}</span>'
            for k, ok in checks.items()
        )
        check_line = f"<p>Winner <code>{_e(best.get('arch'))}</code> (trial {_e(best.get('trial'))}) meets the budgets: {items}</p>"
    return f'<div class="cards">{html_cards}</div>{check_line}'


# -- tables ---------------------------------------------------------------------------------------
def _trials(rows: Sequence[Mapping[str, Any]], winner: Any) -> str:
    head = (
        "#",
        "state",
        "why",
        "accuracy",
        "latency ms",
        "size KB",
        "memory KB",
        "epochs",
        "ran on",
        "run s",
        "arch",
    )
    body = []
    for r in rows:
        why = _violations(r) if r.get("state") == "infeasible" else (r.get("error") or "")
        worker = r.get("worker") or {}
        where = f"{worker.get('host') or '?'}:{worker.get('pid')}" if worker else "–"
        acc = "–" if r.get("accuracy") is None else f"{100 * float(r['accuracy']):.2f}%"
        cls = f"{r.get('state', '')}{' winner' if r.get('number') == winner else ''}"
        cells = [
            (str(r.get("number")), True),
            (str(r.get("state")), False),
            (why, False),
            (acc, True),
            (_fmt(r.get("predicted_latency_ms")), True),
            (_kb(r.get("size_bytes")), True),
            (_kb(r.get("predicted_memory_bytes")), True),
            (_fmt(r.get("fidelity_epochs")), True),
            (where, False),
            (_fmt(r.get("run_s"), 3), True),
            (str(r.get("arch")), False),
        ]
        body.append(
            f'<tr class="{_e(cls)}">'
            + "".join(f"<td{' class=n' if n else ''}>{_e(v)}</td>" for v, n in cells)
            + "</tr>"
        )
    return (
        '<div class="scroll"><table><thead><tr>'
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table></div>"
    )


def _kv_table(items: Mapping[str, Any]) -> str:
    if not items:
        return "<p>–</p>"
    return (
        "<table>"
        + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in items.items())
        + "</table>"
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    return (
        "<table><thead><tr>"
        + "".join(f"<th>{_e(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in row) + "</tr>" for row in rows)
        + "</tbody></table>"
    )


def _compression_doc(report: Mapping[str, Any], folder: Path | None) -> Mapping[str, Any] | None:
    if isinstance(report.get("compression"), Mapping):
        return report["compression"]
    if folder is not None and (folder / "compress_report.json").is_file():
        try:
            doc = json.loads((folder / "compress_report.json").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return doc if isinstance(doc, Mapping) else None
    return None


def _compression(report: Mapping[str, Any], folder: Path | None) -> str:
    doc = _compression_doc(report, folder)
    pipeline = ((report.get("config") or {}).get("export") or {}).get("pipeline")
    if not doc or not doc.get("rows"):
        return (
            f"<p>No compression stages were recorded for this run (pipeline: "
            f"<code>{_e(', '.join(pipeline or []) or '–')}</code>; the winner was exported directly).</p>"
        )
    rows = []
    for r in doc["rows"]:
        rows.append(
            [
                r.get("stage"),
                r.get("dtype"),
                f"{100 * float(r.get('accuracy', 0)):.2f}%",
                f"{0.0 - float(r.get('accuracy_drop', 0)):+.2f} pts",  # 0.0 - 0.0 prints +0.00, not -0.00
                _kb(r.get("size_bytes")),
                _kb(r.get("gzip_bytes")),
                _fmt(r.get("sparsity"), 3),
                _fmt(r.get("macs")),
                _fmt(r.get("latency_ms")),
                _fmt(r.get("params")),
                _fmt(r.get("seconds"), 3),
                "yes" if r.get("kept", True) else "undone",
                "; ".join(r.get("notes") or ()),
            ]
        )
    head = (
        "stage",
        "dtype",
        "accuracy",
        "change",
        "size KB",
        "gzip KB",
        "sparsity",
        "MACs",
        "latency ms",
        "params",
        "seconds",
        "kept",
        "notes",
    )
    target = doc.get("target")
    extra = f"<p>Target: {_e(target.get('reason', ''))}</p>" if isinstance(target, Mapping) else ""
    return _table(head, rows) + extra


def _where(name: str, folder: Path | None) -> str:
    """A compression export's file relative to the run folder (``nas run`` puts them in export/)."""
    if folder is not None and not (folder / name).is_file() and (folder / "export" / name).is_file():
        return f"export/{name}"
    return name


def _exports(report: Mapping[str, Any], best: Mapping[str, Any], folder: Path | None) -> str:
    rows = []
    if best.get("file"):
        on_disk = folder / best["file"] if folder is not None else None
        size = on_disk.stat().st_size if on_disk is not None and on_disk.is_file() else best.get("size_bytes")
        rows.append(
            [
                best["file"],
                best.get("format"),
                _kb(size),
                f"{100 * float(best.get('accuracy', 0)):.2f}%",
                _fmt(best.get("measured_latency_ms")),
                " – ".join(_fmt(v) for v in best.get("latency_spread_ms") or []) or "–",
                best.get("accuracy_split", ""),
            ]
        )
    doc = _compression_doc(report, folder) or {}
    for e in doc.get("exports") or []:
        rows.append(
            [
                ", ".join(_where(f, folder) for f in e.get("files") or []),
                f"{e.get('format')} {e.get('dtype', '')}",
                _kb(e.get("size_bytes")),
                f"{100 * float(e.get('accuracy', 0)):.2f}%",
                _fmt(e.get("latency_ms")),
                "–",
                f"{e.get('runtime', '')}"
                + (f"; arena {_kb(e['arena_bytes'])} KB" if e.get("arena_bytes") else ""),
            ]
        )
    for fmt, why in (doc.get("failed") or {}).items():
        rows.append(["(not written)", fmt, "–", "–", "–", "–", f"export failed: {why}"])
    if not rows:
        return "<p>No exported files recorded.</p>"
    head = (
        "file",
        "format",
        "size KB",
        "test accuracy",
        "latency ms (median)",
        "p10 – p90 ms",
        "measured how",
    )
    return _table(head, rows)
