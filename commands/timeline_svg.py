"""Drawing a Timeline: a self-contained SVG (jinja2 template), and an HTML page around it.

Layout is computed here in plain Python (positions, ticks, label lanes); the templates only
place what was computed. No external resources: fonts are the viewer's sans-serif, no scripts.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from jinja2 import Environment, Template

from steplog.commands.timeline import OUTCOMES, Bar, Timeline
from steplog.words import counted

COLORS = {
    "succeeded": "#2f9e5b",
    "cached": "#3a7bd5",
    "failed": "#d64545",
    "skipped": "#a8aeb5",
    "interrupted": "#8e6cc9",
    "running": "#e0a526",
}
LABELS = {
    "succeeded": "succeeded",
    "cached": "cache hit",
    "failed": "failed",
    "skipped": "skipped (reused)",
    "interrupted": "interrupted",
    "running": "running",
}
MARKER_COLORS = {
    "resumed": "#2f6fb0",
    "interrupted": "#8e6cc9",
    "crashed": "#8e6cc9",
    "failed": "#d64545",
    "cancelled": "#6b7280",
}
CHAR_W = 7.3  # average width of a 12 px sans-serif character, for layout estimates
ROW_H = 24
BAR_H = 14
MIN_BAR_W = 3.0
SKIP_W = 6.0


GAP_W = 40.0  # pixels an idle stretch is squeezed into
GAP_MIN_SHARE = 0.2  # … when it is at least this share of the job's span
GAP_MIN_S = 2.0  # … and at least this long


def idle_gaps(busy: list[tuple[float, float]], span: float) -> list[tuple[float, float]]:
    """Stretches with nothing going on (no bar, no marker) long enough to squeeze."""
    if span <= 0:
        return []
    gaps = []
    reach = 0.0
    for start, end in sorted(busy):
        if start - reach >= max(GAP_MIN_S, GAP_MIN_SHARE * span):
            gaps.append((reach, start))
        reach = max(reach, end)
    # Squeezing needs some busy time left to scale; with (almost) none, the float error of
    # span - gaps would blow the scale up. Then the plain linear axis is the honest picture.
    # (A millisecond of work after hours idle is squeezed: ticks follow the busy time only.)
    if span - sum(b - a for a, b in gaps) < max(1e-3, 1e-9 * span):
        return []
    return gaps


@dataclass
class Layout:
    """Time → x: linear, except idle gaps, each drawn GAP_W wide (an axis break)."""

    width: int
    left: float  # x where time 0 is drawn
    right: float  # x where the last event is drawn
    top: float  # y of the first row
    span: float
    gaps: list[tuple[float, float]]

    @property
    def busy_time(self) -> float:
        return self.span - sum(b - a for a, b in self.gaps)

    def x(self, t: float) -> float:
        if self.span <= 0:
            return self.left
        scale = (self.right - self.left - GAP_W * len(self.gaps)) / max(self.busy_time, 1e-12)
        x = self.left
        cursor = 0.0
        for a, b in self.gaps:
            if t <= a:
                break
            if t < b:
                return x + (a - cursor) * scale + GAP_W * (t - a) / (b - a)
            x += (a - cursor) * scale + GAP_W
            cursor = b
        return x + (t - cursor) * scale

    def visible(self, t: float) -> bool:
        return not any(a < t < b for a, b in self.gaps)


def nice_step(span: float, max_ticks: int) -> float:
    """A tick step of 1, 2 or 5 × 10^k seconds giving at most max_ticks intervals."""
    if span <= 0:
        return 1.0
    # not below a microsecond, the log's resolution (a denormal span would underflow to 0)
    raw = max(span / max(1, max_ticks), 1e-6)
    if span >= 120:  # whole minutes and hours read better than 2 × 10^k seconds
        for step in (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400):
            if step >= raw:
                return float(step)
        return 86400.0 * math.ceil(raw / 86400)
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * power >= raw:
            return m * power
    return 10 * power


def axis_ticks(lay: Layout, max_ticks: int) -> list[dict]:
    """Ticks at multiples of a nice step over the busy time; around each axis break, the times
    where it starts and ends; labels that would collide are dropped (the line stays)."""
    if lay.span <= 0:
        return [{"x": lay.left, "label": "0 s", "major": True}]
    step = nice_step(lay.busy_time, max_ticks)
    times = [t for gap in lay.gaps for t in gap]
    edges = [0.0, *times, lay.span]
    for lo, hi in zip(edges[::2], edges[1::2]):  # the drawn stretches, between the breaks
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        times += [n * step for n in range(first, last + 1)]
    ticks = []
    last_x, last_label = -1e9, ""
    for t in sorted(set(times)):
        x = lay.x(t)
        label = tick_label(t, step, lay.span)
        if label == last_label:  # a break's edge next to a tick: tell them apart
            label = tick_label(t, step / 10, lay.span)
        fits = x - last_x >= max(len(label) * CHAR_W * 0.9 + 10, 40)
        ticks.append({"x": x, "label": label if fits else "", "major": fits})
        if fits:
            last_x, last_label = x, label
    return ticks


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0


def tick_label(t: float, step: float, span: float) -> str:
    """One style for the whole axis: ms under a second, seconds under two minutes, then m:ss
    (h:mm:ss past an hour), with as many decimals as the step needs."""
    if span < 1:
        return f"{t * 1000:.{_decimals(step * 1000)}f} ms"
    if span < 120:
        return f"{t:.{_decimals(step)}f} s"
    digits = _decimals(step)
    minutes, seconds = divmod(t, 60)
    hours, minutes = divmod(int(minutes), 60)
    width = 2 + (digits + 1 if digits else 0)
    sec = f"{seconds:0{width}.{digits}f}"
    if sec.startswith("60"):  # rounding up to the next minute
        return tick_label(round(t), 1, span)
    return f"{hours}:{minutes:02d}:{sec}" if hours else f"{minutes}:{sec}"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{s:02d}s" if hours else f"{minutes}m{s:02d}s"


def _fit(text: str, width: float) -> str:
    chars = max(3, int(width / CHAR_W))
    return text if len(text) <= chars else text[: chars - 1] + "…"


def place_labels(
    items: list[tuple[float, str]], lo: float, hi: float, gap: float = 6.0
) -> list[tuple[int, float, str]]:
    """(lane, x, anchor) for each vertical marker's label, x-sorted input: right of its line
    when it fits, else left, else one lane up. No label overlaps another, and no marker line
    (drawn from its label down) crosses a label in a lower lane."""
    placed: list[tuple[int, float, float, float]] = []  # lane, x0, x1, line x
    out: dict[int, tuple[int, float, str]] = {}
    # right to left: a label then moves left of its line rather than under a later line
    for index in range(len(items) - 1, -1, -1):
        x, text = items[index]
        w = len(text) * CHAR_W * 0.92
        lane = 0
        while True:
            found = None
            for side in ("start", "end"):
                a, b = (x + 3, x + 3 + w) if side == "start" else (x - 3 - w, x - 3)
                if a < lo or b > hi:
                    continue
                strict = lane < 4  # past a few lanes, only labels must not overlap
                clash = any(
                    (pl == lane and a < px1 + gap and b > px0 - gap)
                    or (strict and lane < pl and a - 2 <= line <= b + 2)
                    or (strict and pl < lane and px0 - 2 <= x <= px1 + 2)
                    for pl, px0, px1, line in placed
                )
                if not clash:
                    found = (side, a, b)
                    break
            if found is not None or lane > 20:
                side, a, b = found or ("start", x + 3, x + 3 + w)
                placed.append((lane, a, b, x))
                out[index] = (lane, x + 3 if side == "start" else x - 3, side)
                break
            lane += 1
    return [out[i] for i in range(len(items))]


def _bar_title(bar: Bar) -> str:
    head = f"{bar.step}" + (f" attempt {bar.attempt}" if bar.attempt else "")
    lines = [f"{head}: {LABELS[bar.outcome]}"]
    if bar.outcome != "skipped":
        lines.append(f"{bar.start:.3f}s → {bar.end:.3f}s ({human_duration(bar.end - bar.start)})")
    if bar.detail:
        lines.append(bar.detail)
    lines.extend(m.text for m in bar.marks)
    return "\n".join(lines)


def scene(tl: Timeline, width: int = 1200) -> dict:
    """Everything the template draws, positioned."""
    width = max(600, width)  # narrower leaves no room beside the step names (CLI: 600+)
    longest = max((len(s) for s in tl.steps), default=4)
    gutter = min(260.0, max(90.0, longest * CHAR_W + 28))
    legend_y = 62
    markers_sorted = sorted(tl.markers, key=lambda m: m.t)
    top_axis = 118.0
    lane_y0 = top_axis - 26  # marker labels sit above the tick labels
    busy = [(b.start, b.end) for b in tl.bars] + [(m.t, m.t) for m in tl.markers]
    busy += [(0.0, 0.0), (tl.span, tl.span)]
    lay = Layout(width, gutter + 10, width - 40, top_axis + 10, tl.span, idle_gaps(busy, tl.span))
    marker_labels = place_labels([(lay.x(m.t), m.text) for m in markers_sorted], 16, width - 8)
    extra = (max(lane for lane, _, _ in marker_labels) + 1) * 14 if marker_labels else 0
    lay.top += extra
    top_axis += extra
    rows = {name: i for i, name in enumerate(tl.steps)}
    for bar in tl.bars:  # events for a step the job did not declare still get a row
        if bar.step not in rows:
            rows[bar.step] = len(rows)
    row_y = {name: lay.top + i * ROW_H for name, i in rows.items()}
    plot_bottom = lay.top + len(rows) * ROW_H
    max_ticks = max(2, int((lay.right - lay.left) / 90))
    ticks = axis_ticks(lay, max_ticks)
    gaps = [
        {"x0": lay.x(a), "x1": lay.x(b), "label": human_duration(b - a) + " idle"}
        for a, b in lay.gaps
    ]
    bars = []
    for bar in tl.bars:
        x0 = lay.x(bar.start)
        w = SKIP_W if bar.outcome == "skipped" else max(MIN_BAR_W, lay.x(bar.end) - x0)
        y = row_y[bar.step] + (ROW_H - BAR_H) / 2
        bars.append(
            {
                "x": x0,
                "y": y,
                "w": w,
                "h": BAR_H,
                "outcome": bar.outcome,
                "color": COLORS[bar.outcome],
                "step": bar.step,
                "attempt": bar.attempt,
                "title": _bar_title(bar),
                "marks": [{"x": lay.x(m.t), "kind": m.kind, "title": m.text} for m in bar.marks],
            }
        )
    edges = []
    for step_name, needs in tl.needs.items():
        mine = tl.bars_of(step_name)
        if not mine:
            continue
        first = min(mine, key=lambda b: b.start)
        for need in needs:
            theirs = tl.bars_of(need)
            if not theirs:
                continue
            before = [b for b in theirs if b.end <= first.start + 1e-9] or theirs
            src = max(before, key=lambda b: b.end)
            sx = lay.x(src.end) + (SKIP_W if src.outcome == "skipped" else 0)
            sy = row_y[need] + ROW_H / 2
            tx, ty = lay.x(first.start), row_y[step_name] + ROW_H / 2
            bend = max(14.0, min(60.0, abs(ty - sy) / 2))
            edges.append(
                {
                    "from": need,
                    "to": step_name,
                    "d": f"M{sx:.1f},{sy:.1f} C{sx + bend:.1f},{sy:.1f} {tx - bend:.1f},{ty:.1f} {tx - 1:.1f},{ty:.1f}",
                }
            )
    markers = []
    for m, (lane, label_x, anchor) in zip(markers_sorted, marker_labels):
        x = lay.x(m.t)
        markers.append(
            {
                "x": x,
                "kind": m.kind,
                "text": m.text,
                "color": MARKER_COLORS[m.kind],
                "label_y": lane_y0 + extra - lane * 14,
                "label_x": label_x,
                "anchor": anchor,
            }
        )
    labels = [
        {
            "y": row_y[name] + ROW_H / 2 + 4,
            "text": _fit(name, gutter - 20),
            "full": name,
            "title": f"{name}: {tl.step_status.get(name, '?')}"
            + (f"; needs {', '.join(tl.needs.get(name, []))}" if tl.needs.get(name) else ""),
            "not_run": not tl.bars_of(name),
        }
        for name in rows
    ]
    legend = []
    x = 16.0
    present = {b.outcome for b in tl.bars}
    for outcome in OUTCOMES:
        if outcome in ("running", "interrupted") and outcome not in present:
            continue
        legend.append(
            {
                "x": x,
                "kind": "bar",
                "outcome": outcome,
                "color": COLORS[outcome],
                "text": LABELS[outcome],
            }
        )
        x += 34 + len(LABELS[outcome]) * CHAR_W
    for kind, text in (
        ("retry", "retry"),
        ("llm-failed", "failed LLM call"),
        ("dep", "dependency"),
        ("marker", "resume / stop"),
    ):
        legend.append({"x": x, "kind": kind, "text": text, "color": ""})
        x += 34 + len(text) * CHAR_W
    started = tl.start_ts[:19].replace("T", " ") + " UTC" if tl.start_ts else ""
    subtitle = " · ".join(
        [
            f"status {tl.status}",
            counted(len(tl.steps), "step"),
            counted(tl.runs, "run"),
            f"duration {human_duration(tl.duration_s)}",
            f"started {started}",
        ]
    )
    height = plot_bottom + (56 if len(rows) > 12 else 44)
    return {
        "width": width,
        "height": int(math.ceil(height)),
        "gutter": gutter,
        "lay": lay,
        "title": _fit(f"{tl.job_id} — {tl.pipeline}", width - 32),
        "subtitle": subtitle,
        "status": tl.status,
        "legend": legend,
        "legend_y": legend_y,
        "ticks": ticks,
        "top_axis": top_axis,
        "plot_top": lay.top,
        "plot_bottom": plot_bottom,
        "bottom_axis": len(rows) > 12,
        "rows": [row_y[n] for n in rows],
        "labels": labels,
        "bars": bars,
        "edges": edges,
        "markers": markers,
        "job_id": tl.job_id,
        "gaps": gaps,
        "edge_opacity": 0.75 if len(edges) <= 20 else 0.45,
    }


SVG = """\
<svg xmlns="http://www.w3.org/2000/svg" width="{{ s.width }}" height="{{ s.height }}" viewBox="0 0 {{ s.width }} {{ s.height }}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12" class="steplog-timeline" data-job="{{ s.job_id }}">
<title>{{ s.title }}</title>
<defs>
<pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)"><rect width="3" height="6" fill="#ffffff" fill-opacity="0.35"/></pattern>
<marker id="arrow" viewBox="0 0 8 8" refX="7" refY="4" markerWidth="7" markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#7b8794"/></marker>
</defs>
<style>
.bar:hover rect.fill { stroke: #111; stroke-width: 1.5; }
.dep { fill: none; stroke: #7b8794; stroke-width: 1.2; stroke-opacity: {{ s.edge_opacity }}; }
.grid { stroke: #e3e7eb; stroke-width: 1; }
.tick, .gap-label { fill: #52606d; font-size: 11px; }
.label { fill: #1f2933; }
.label.not-run { fill: #9aa5b1; font-style: italic; }
</style>
<rect width="100%" height="100%" fill="#ffffff"/>
<g class="title"><text x="16" y="26" font-size="17" font-weight="bold" fill="#1f2933">{{ s.title }}</text>
<text x="16" y="46" fill="#52606d">{{ s.subtitle }}</text></g>
<g class="legend" transform="translate(0,{{ s.legend_y }})">
{%- for item in s.legend %}
<g class="legend-item" data-kind="{{ item.kind }}">
{%- if item.kind == "bar" %}<rect x="{{ '%.1f'|format(item.x) }}" y="0" width="16" height="11" rx="2" fill="{{ item.color }}"/>{% if item.outcome == "cached" %}<rect x="{{ '%.1f'|format(item.x) }}" y="0" width="16" height="11" rx="2" fill="url(#hatch)"/>{% endif %}
{%- elif item.kind == "retry" %}<path d="M{{ '%.1f'|format(item.x + 8) }},11 l-5,-9 h10 z" fill="#f59f00" stroke="#ffffff" stroke-width="0.8"/>
{%- elif item.kind == "llm-failed" %}<path d="M{{ '%.1f'|format(item.x + 3) }},1 l10,10 M{{ '%.1f'|format(item.x + 13) }},1 l-10,10" stroke="#9b1c1c" stroke-width="2.2"/>
{%- elif item.kind == "dep" %}<path d="M{{ '%.1f'|format(item.x) }},6 h14" class="dep" marker-end="url(#arrow)"/>
{%- else %}<path d="M{{ '%.1f'|format(item.x + 8) }},-2 v15" stroke="#2f6fb0" stroke-width="1.5" stroke-dasharray="3,2"/>{% endif %}
<text x="{{ '%.1f'|format(item.x + 20) }}" y="10" fill="#323f4b">{{ item.text }}</text></g>
{%- endfor %}
</g>
<g class="rows">
{%- for y in s.rows %}{% if loop.index0 % 2 == 0 %}<rect x="8" y="{{ '%.1f'|format(y) }}" width="{{ s.width - 16 }}" height="24" fill="#f5f7fa"/>{% endif %}{% endfor %}
</g>
<g class="axis">
{%- for t in s.ticks %}
<line class="grid" x1="{{ '%.1f'|format(t.x) }}" y1="{{ '%.1f'|format(s.top_axis + 4) }}" x2="{{ '%.1f'|format(t.x) }}" y2="{{ '%.1f'|format(s.plot_bottom) }}"/>
{%- if t.label %}<text class="tick" x="{{ '%.1f'|format(t.x) }}" y="{{ '%.1f'|format(s.top_axis) }}" text-anchor="middle">{{ t.label }}</text>
{%- if s.bottom_axis %}<text class="tick" x="{{ '%.1f'|format(t.x) }}" y="{{ '%.1f'|format(s.plot_bottom + 15) }}" text-anchor="middle">{{ t.label }}</text>{% endif %}{% endif %}
{%- endfor %}
{%- for g in s.gaps %}
<g class="gap"><title>{{ g.label }}: squeezed</title><rect x="{{ '%.1f'|format(g.x0 + 3) }}" y="{{ '%.1f'|format(s.top_axis + 4) }}" width="{{ '%.1f'|format(g.x1 - g.x0 - 6) }}" height="{{ '%.1f'|format(s.plot_bottom - s.top_axis - 4) }}" fill="#ffffff"/>
<path d="M{{ '%.1f'|format(g.x0 + 6) }},{{ '%.1f'|format(s.plot_bottom + 4) }} l6,-10 M{{ '%.1f'|format(g.x1 - 12) }},{{ '%.1f'|format(s.plot_bottom + 4) }} l6,-10" stroke="#7b8794" stroke-width="1.5"/>
<text x="{{ '%.1f'|format((g.x0 + g.x1) / 2) }}" y="{{ '%.1f'|format(s.plot_bottom + 26 if s.bottom_axis else s.plot_bottom + 16) }}" text-anchor="middle" class="gap-label">{{ g.label }}</text></g>
{%- endfor %}
</g>
<g class="labels">
{%- for l in s.labels %}
<text class="label{% if l.not_run %} not-run{% endif %}" x="{{ '%.1f'|format(s.gutter) }}" y="{{ '%.1f'|format(l.y) }}" text-anchor="end" data-step="{{ l.full }}"><title>{{ l.title }}</title>{{ l.text }}</text>
{%- endfor %}
</g>
<g class="markers">
{%- for m in s.markers %}
<g class="marker {{ m.kind }}"><title>{{ m.text }}</title><line x1="{{ '%.1f'|format(m.x) }}" y1="{{ '%.1f'|format(m.label_y + 3) }}" x2="{{ '%.1f'|format(m.x) }}" y2="{{ '%.1f'|format(s.plot_bottom) }}" stroke="{{ m.color }}" stroke-width="1.5" stroke-dasharray="4,3"/>
<text x="{{ '%.1f'|format(m.label_x) }}" y="{{ '%.1f'|format(m.label_y) }}" fill="{{ m.color }}" font-size="11" text-anchor="{{ m.anchor }}">{{ m.text }}</text></g>
{%- endfor %}
</g>
<g class="edges">
{%- for e in s.edges %}
<path class="dep" data-from="{{ e.from }}" data-to="{{ e.to }}" d="{{ e.d }}" marker-end="url(#arrow)"><title>{{ e.to }} needs {{ e.from }}</title></path>
{%- endfor %}
</g>
<g class="bars">
{%- for b in s.bars %}
<g class="bar {{ b.outcome }}" data-step="{{ b.step }}" data-attempt="{{ b.attempt }}"><title>{{ b.title }}</title>
<rect class="fill" x="{{ '%.1f'|format(b.x) }}" y="{{ '%.1f'|format(b.y) }}" width="{{ '%.1f'|format(b.w) }}" height="{{ b.h }}" rx="2" fill="{{ b.color }}"/>
{%- if b.outcome == "cached" %}<rect x="{{ '%.1f'|format(b.x) }}" y="{{ '%.1f'|format(b.y) }}" width="{{ '%.1f'|format(b.w) }}" height="{{ b.h }}" rx="2" fill="url(#hatch)"/>{% endif %}
{%- for m in b.marks %}
{%- if m.kind == "retry" %}<path class="mark retry" d="M{{ '%.1f'|format(m.x) }},{{ '%.1f'|format(b.y + 3) }} l-5,-9 h10 z" fill="#f59f00" stroke="#ffffff" stroke-width="0.8"><title>{{ m.title }}</title></path>
{%- else %}<path class="mark llm-failed" d="M{{ '%.1f'|format(m.x - 4) }},{{ '%.1f'|format(b.y + 3) }} l8,8 M{{ '%.1f'|format(m.x + 4) }},{{ '%.1f'|format(b.y + 3) }} l-8,8" stroke="#9b1c1c" stroke-width="2.2"><title>{{ m.title }}</title></path>{% endif %}
{%- endfor %}</g>
{%- endfor %}
</g>
</svg>
"""

HTML = """\
<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ s.title }}</title>
<style>
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; margin: 16px; color: #1f2933; }
table { border-collapse: collapse; margin-top: 16px; font-size: 13px; }
th, td { border-bottom: 1px solid #e3e7eb; padding: 4px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:hover td { background: #f5f7fa; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
</style></head>
<body>
{{ svg }}
<table class="steps">
<thead><tr><th>step</th><th>status</th><th>needs</th><th>attempts</th><th>retries</th><th>failed LLM calls</th><th>time</th><th>last</th></tr></thead>
<tbody>
{%- for r in table %}
<tr title="{{ r.title }}"><td>{{ r.step }}</td><td><span class="swatch" style="background: {{ r.color }}"></span>{{ r.status }}</td><td>{{ r.needs }}</td><td class="num">{{ r.attempts }}</td><td class="num">{{ r.retries }}</td><td class="num">{{ r.llm_failed }}</td><td class="num">{{ r.time }}</td><td>{{ r.last }}</td></tr>
{%- endfor %}
</tbody></table>
</body></html>
"""


@functools.cache
def _template(source: str) -> Template:
    """Compiled on first use: every `steplog` command imports this module, few draw."""
    return Environment(autoescape=True).from_string(source)


def render_svg(tl: Timeline, width: int = 1200) -> str:
    return _template(SVG).render(s=scene(tl, width))


def render_html(tl: Timeline, width: int = 1200) -> str:
    from markupsafe import Markup

    table = []
    for name in tl.steps:
        bars = tl.bars_of(name)
        last = bars[-1] if bars else None
        table.append(
            {
                "step": name,
                "status": tl.step_status.get(name, "?"),
                "color": COLORS[last.outcome] if last else "#ffffff",
                "needs": ", ".join(tl.needs.get(name, [])) or "-",
                "attempts": sum(1 for b in bars if b.outcome != "skipped"),
                "retries": sum(1 for b in bars for m in b.marks if m.kind == "retry"),
                "llm_failed": sum(1 for b in bars for m in b.marks if m.kind == "llm-failed"),
                "time": human_duration(sum(b.end - b.start for b in bars)) if bars else "-",
                "last": LABELS[last.outcome] + (f" — {last.detail}" if last and last.detail else "")
                if last
                else "not run",
                "title": _bar_title(last) if last else name,
            }
        )
    svg = Markup(render_svg(tl, width))  # our own escaped output
    return _template(HTML).render(s=scene(tl, width), svg=svg, table=table)
