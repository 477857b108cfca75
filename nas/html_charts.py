"""The SVG charts of ``report.html``: accuracy against predicted latency and size, with the
budgets, the Pareto front and the winner (inline SVG, no scripts)."""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .pareto import non_dominated

_COLORS = {
    "complete": "#4c72b0",
    "infeasible": "#c44e52",
    "front": "#55a868",
    "winner": "#dd8452",
    "budget": "#c44e52",
}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class _Axis:
    lo: float
    hi: float
    px0: float
    px1: float

    def __call__(self, v: float) -> float:
        span = self.hi - self.lo or 1.0
        return self.px0 + (v - self.lo) / span * (self.px1 - self.px0)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _chart(
    rows: Sequence[Mapping[str, Any]],
    x_of: Callable[[Mapping[str, Any]], float | None],
    x_label: str,
    budget: float | None,
    budget_label: str,
    winner: Any,
    title: str,
) -> str:
    w, h, left, right, top, bottom = 540, 360, 58, 16, 28, 64
    done = [
        r
        for r in rows
        if r.get("state") == "complete" and r.get("accuracy") is not None and x_of(r) is not None
    ]
    screened = [r for r in rows if r.get("state") == "infeasible" and x_of(r) is not None]
    xs = [x_of(r) for r in done + screened]
    # a budget far beyond every point would squeeze them all into the left edge: it is then
    # drawn as an arrow at the right edge instead of stretching the axis
    budget_off = bool(budget and xs and budget > 2.5 * max(xs))
    if budget and not budget_off:
        xs.append(budget)
    ys = [100 * float(r["accuracy"]) for r in done]
    if not xs:
        return f"<p>No priced trials to plot for {_e(title)}.</p>"
    x_lo, x_hi = min(xs), max(xs)
    pad = (x_hi - x_lo) * 0.06 or max(abs(x_hi) * 0.1, 1e-3)
    y_lo, y_hi = (min(ys), max(ys)) if ys else (0.0, 100.0)
    y_pad = (y_hi - y_lo) * 0.08 or 2.0
    ax = _Axis(max(0.0, x_lo - pad), x_hi + pad, left, w - right)
    ay = _Axis(
        max(0.0, y_lo - 2 * y_pad),
        min(100.0, y_hi + y_pad) if y_hi + y_pad > y_lo else y_lo + 1,
        h - bottom,
        top,
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
        f'aria-label="{_e(title)}" font-family="system-ui,sans-serif" font-size="11">',
        f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" fill="#fbfcfe" stroke="#ccd"/>',
        f'<text x="{w / 2}" y="17" text-anchor="middle" font-size="13" font-weight="600">{_e(title)}</text>',
    ]
    for t in _ticks(ax.lo, ax.hi):
        x = ax(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{h - bottom}" stroke="#e6e8ef"/>'
            f'<text x="{x:.1f}" y="{h - bottom + 14}" text-anchor="middle">{t:g}</text>'
        )
    for t in _ticks(ay.lo, ay.hi):
        y = ay(t)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{w - right}" y2="{y:.1f}" stroke="#e6e8ef"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>'
        )
    out.append(
        f'<text x="{(left + w - right) / 2}" y="{h - bottom + 30}" text-anchor="middle">{_e(x_label)}</text>'
        f'<text x="14" y="{(top + h - bottom) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(top + h - bottom) / 2})">validation accuracy (%)</text>'
    )
    if budget and budget_off:
        out.append(
            f'<text x="{w - right - 4}" y="{top + 12}" text-anchor="end" fill="{_COLORS["budget"]}">'
            f"{_e(budget_label)} →<title>beyond the axis: every point is under it</title></text>"
        )
    elif budget:
        x = ax(budget)
        out.append(
            f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{h - bottom}" stroke="{_COLORS["budget"]}" '
            f'stroke-dasharray="5 4" stroke-width="1.5"><title>{_e(budget_label)}</title></line>'
            # feasible points lie left of the line: the label goes right of it unless there is no room
            + (
                f'<text x="{x + 4:.1f}" y="{top + 12}" fill="{_COLORS["budget"]}">{_e(budget_label)}</text>'
                if x < w - right - 110
                else f'<text x="{x - 4:.1f}" y="{h - bottom - 6}" text-anchor="end" fill="{_COLORS["budget"]}">{_e(budget_label)}</text>'
            )
        )
    y_floor = ay(ay.lo) - 6
    for r in screened:
        x = ax(x_of(r))  # type: ignore[arg-type]
        out.append(
            f'<path d="M{x - 3:.1f},{y_floor - 3:.1f}l6,6m0,-6l-6,6" stroke="{_COLORS["infeasible"]}" '
            f'stroke-opacity="0.6"><title>trial {r["number"]} screened out: {_e(_violations(r))}</title></path>'
        )
    points = [(x_of(r), 100 * float(r["accuracy"]), r) for r in done]
    front = non_dominated(points, cost=lambda p: p[0], value=lambda p: p[1])  # type: ignore[misc]
    if len(front) > 1:
        pts = []
        for (x0, y0, _), (x1, _y1, _) in zip(front, front[1:], strict=False):
            pts += [f"{ax(x0):.1f},{ay(y0):.1f}", f"{ax(x1):.1f},{ay(y0):.1f}"]
        pts.append(f"{ax(front[-1][0]):.1f},{ay(front[-1][1]):.1f}")
        out.append(
            f'<polyline points="{" ".join(pts)}" fill="none" stroke="{_COLORS["front"]}" stroke-width="2"/>'
        )
    on_front = {id(p[2]) for p in front}
    for r in done:
        x, y = ax(x_of(r)), ay(100 * float(r["accuracy"]))  # type: ignore[arg-type]
        stroke = f' stroke="{_COLORS["front"]}" stroke-width="2"' if id(r) in on_front else ""
        out.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{_COLORS["complete"]}" fill-opacity="0.85"{stroke}>'
            f"<title>trial {r['number']}: {_e(r.get('arch'))}, accuracy {100 * float(r['accuracy']):.2f}%</title></circle>"
        )
    win = next((r for r in done if r.get("number") == winner), None)
    if win is not None:
        out.append(_star(ax(x_of(win)), ay(100 * float(win["accuracy"])), f"winner: trial {winner}"))  # type: ignore[arg-type]
    # the legend sits under the axis, where it can never hide a point
    legend = [
        ("circle", _COLORS["complete"], f"trained ({len(done)})"),
        ("line", _COLORS["front"], "Pareto front"),
        ("star", _COLORS["winner"], "winner"),
        ("x", _COLORS["infeasible"], f"screened out ({len(screened)})"),
    ]
    for i, (kind, color, label) in enumerate(legend):
        lx, y = left + i * 118, h - 8
        if kind == "circle":
            out.append(f'<circle cx="{lx + 5}" cy="{y - 3}" r="4" fill="{color}"/>')
        elif kind == "line":
            out.append(
                f'<line x1="{lx}" y1="{y - 3}" x2="{lx + 10}" y2="{y - 3}" stroke="{color}" stroke-width="2"/>'
            )
        elif kind == "star":
            out.append(_star(lx + 5, y - 3, "winner", r=6))
        else:
            out.append(f'<path d="M{lx + 2},{y - 6}l6,6m0,-6l-6,6" stroke="{color}"/>')
        out.append(f'<text x="{lx + 16}" y="{y}">{_e(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _star(cx: float, cy: float, title: str, r: float = 9) -> str:
    pts = []
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        a = math.pi / 2 + i * math.pi / 5
        pts.append(f"{cx + rad * math.cos(a):.1f},{cy - rad * math.sin(a):.1f}")
    return (
        f'<polygon points="{" ".join(pts)}" fill="{_COLORS["winner"]}" stroke="#222" stroke-width="1">'
        f"<title>{_e(title)}</title></polygon>"
    )


def _charts(
    rows: Sequence[Mapping[str, Any]], front: Sequence[int], budgets: Mapping[str, float], winner: Any
) -> str:
    lat_budget = budgets.get("max_latency_ms")
    size_budget = budgets.get("max_size_kb")
    a = _chart(
        rows,
        lambda r: r.get("predicted_latency_ms"),
        "predicted latency (ms)",
        lat_budget,
        f"latency budget {lat_budget:g} ms" if lat_budget else "",
        winner,
        "Accuracy against latency",
    )
    b = _chart(
        rows,
        lambda r: None if r.get("size_bytes") is None else float(r["size_bytes"]) / 1024,
        "predicted int8 size (KB)",
        size_budget,
        f"size budget {size_budget:g} KB" if size_budget else "",
        winner,
        "Accuracy against size",
    )
    note = (
        f"Trained trials (validation accuracy at search fidelity) against the latency and size the models "
        f"predicted; crosses are candidates screened out before training. The front on latency holds trials "
        f"{', '.join(str(n) for n in front) or '–'}."
    )
    return f'<div class="charts"><figure>{a}</figure><figure>{b}</figure></div><p class="sub">{_e(note)}</p>'


def _violations(row: Mapping[str, Any]) -> str:
    units = {"max_latency_ms": "ms", "max_size_kb": "KB", "max_memory_kb": "KB"}
    over = [
        f"{k.removeprefix('max_')} +{v:.3g} {units.get(k, '')} over"
        for k, v in (row.get("violations") or {}).items()
        if isinstance(v, (int, float)) and v > 0
    ]
    return "; ".join(over)
