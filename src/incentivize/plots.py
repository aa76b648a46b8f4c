"""The one line plot of the project: series of (x, y) points drawn by matplotlib, returned as SVG text.

The run report inlines these SVGs into its HTML and :func:`incentivize.inference.selection.plot_sweep`
writes one to `sweep.svg`. Each series is one matplotlib line with a marker at every point; its
``gid`` becomes the ``id`` of the SVG group holding the line's path and one ``<use>`` element per
point, so a browser (or a test) can find each series and count its points. Text stays text
(``svg.fonttype: none``), and the ids matplotlib makes up for markers and clip paths are prefixed
with the plot's ``gid`` so that several SVGs inlined into one page cannot resolve each other's.

Only ``matplotlib.figure.Figure`` is used, never pyplot: no GUI backend, no global figure state.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Colours of matplotlib's default cycle ("tab10"), in order.
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
LINESTYLES = ("-", "--", ":", "-.")

_RC: dict[Any, Any] = {
    "svg.fonttype": "none",  # <text> elements, not glyph outlines: smaller, searchable, testable
    "svg.hashsalt": "incentivize",  # matplotlib's made-up ids are then the same on every run
    "font.size": 9.0,
    "axes.titlesize": 10.0,
    "legend.fontsize": 8.0,
    "axes.formatter.useoffset": False,  # "1e-5+1.0776e1" above an axis is hard to read
}


@dataclass(frozen=True)
class Series:
    """One line: ``label`` in the legend, finite points ``(x[i], y[i])`` (others are left out), and an
    optional SVG ``gid``, colour and matplotlib line style."""

    label: str
    x: Sequence[float]
    y: Sequence[float | None]
    gid: str | None = None
    color: str | None = None
    linestyle: str = "-"


def line_plot_svg(
    series: Sequence[Series],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    gid: str = "plot",
    log2_x: bool = False,
    xticks: Sequence[float] | None = None,
    ylim: tuple[float, float] | None = None,
    legend_outside: bool = False,
    size: tuple[float, float] = (6.0, 3.2),
) -> str:
    """An SVG document (text, from ``<svg`` on) of ``series`` as lines with a marker at each point.

    ``log2_x`` draws x on a log-2 axis; ``xticks`` puts labelled ticks at exactly those x values;
    ``legend_outside`` puts the legend right of the axes (for long or many labels). The root element
    carries ``id=gid``; each series's group its own ``gid``.

    >>> svg = line_plot_svg([Series("loss", [1, 2, 3], [0.9, None, 0.5], gid="loss-0")], title="loss")
    >>> import xml.etree.ElementTree as ET
    >>> line = next(g for g in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}g") if g.get("id") == "loss-0")
    >>> len(line.findall(".//{http://www.w3.org/2000/svg}use"))  # one marker per finite point
    2
    """
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    drawn_series = []
    for line in series:
        points = [(float(x), float(y)) for x, y in zip(line.x, line.y) if y is not None and _finite(x) and _finite(y)]
        if points:
            # a label starting with "_" would be hidden from the legend; a "$" would start mathtext
            label = line.label.replace("$", r"\$")
            drawn_series.append((line, " " + label if label.startswith("_") else label, points))
    labelled = any(line.label for line, _, _ in drawn_series)
    outside = legend_outside and labelled
    # Fixed margins in inches (matplotlib's constrained layout draws each figure twice: 2.5x slower);
    # an outside legend widens the figure by about its own width.
    legend_width = 0.55 + 0.055 * max((len(label) for _, label, _ in drawn_series), default=0) if outside else 0.0
    width, height = size[0] + legend_width, size[1]
    right, bottom, top = 0.2 + legend_width, 0.5, 0.35
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(width, height))
        figure.subplots_adjust(right=1 - right / width, bottom=bottom / height, top=1 - top / height)
        axes = figure.add_subplot()
        for index, (line, label, points) in enumerate(drawn_series):
            xs, ys = zip(*points)
            (drawn,) = axes.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.5, label=label,
                                 linestyle=line.linestyle, color=line.color or COLORS[index % len(COLORS)])
            drawn.set_gid(line.gid)
        if log2_x:
            axes.set_xscale("log", base=2)
            axes.minorticks_off()
        elif all(float(x).is_integer() for line in series for x in line.x if _finite(x)):
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps: no tick at 1.25
        if xticks is not None:
            ticks = sorted(set(xticks))
            axes.set_xticks(ticks, [_tick_label(t) for t in ticks])
            if len(ticks) == 1:  # one point: give the axis some width around it
                low, high = (ticks[0] / 1.5, ticks[0] * 1.5) if log2_x else (ticks[0] - 1, ticks[0] + 1)
                axes.set_xlim(low, high)
        if ylim is not None:
            axes.set_ylim(*ylim)
        axes.set_title(title.replace("$", r"\$"))
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(True, color="#e5e5e5", linewidth=0.8)
        axes.set_axisbelow(True)
        if labelled:
            if outside:
                axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
            else:
                axes.legend(frameon=False)
        # the left margin fits the longest y tick label (formatted here without drawing the figure)
        labels = axes.yaxis.get_major_formatter().format_ticks(list(axes.yaxis.get_majorticklocs()))
        left = 0.45 + 0.085 * max((len(text) for text in labels), default=4)
        figure.subplots_adjust(left=left / width)
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    return _inlinable(buffer.getvalue(), gid)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _tick_label(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _inlinable(svg: str, gid: str) -> str:
    """matplotlib's SVG from the ``<svg`` tag on, with ``id=gid`` on the root and matplotlib's own ids
    (those that ``#`` references point to: marker shapes, clip paths) prefixed with ``gid``."""
    svg = svg[svg.index("<svg"):]
    referenced = set(re.findall(r'(?:href="#|url\(#)([^")]+)', svg))
    if referenced:
        pattern = re.compile(r'(id="|href="#|url\(#)(' + "|".join(map(re.escape, sorted(referenced))) + r')(?=[")])')
        svg = pattern.sub(lambda m: f"{m.group(1)}{gid}-{m.group(2)}", svg)
    return svg.replace("<svg ", f'<svg id="{_attribute(gid)}" ', 1)


def _attribute(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def sweep_svg(table: Mapping[str, Mapping[int, float]], *, title: str = "accuracy vs samples", gid: str = "sweep") -> str:
    """The N-sweep of :func:`incentivize.inference.selection.sweep` as SVG: accuracy (0 to 1) against N on
    a log-2 axis, one line per selector (series ``gid`` ``<gid>/<row number>``), the ``pass@`` baselines
    grey and dashed, the legend on the right."""
    sizes = sorted({n for row in table.values() for n in row})
    if not sizes:
        raise ValueError("nothing to plot: the sweep table is empty")
    series, colors = [], iter(COLORS[:7] + COLORS[8:])  # grey is for the baselines
    for number, (name, row) in enumerate(table.items()):
        baseline = name.startswith("pass@")
        style = (":" if name == "pass@1" else "--") if baseline else "-"
        color = "#7f7f7f" if baseline else next(colors, None)
        series.append(Series(name, sorted(row), [row[n] for n in sorted(row)], gid=f"{gid}/{number}", color=color,
                             linestyle=style))
    return line_plot_svg(series, title=title, xlabel="samples per problem, N (log scale)", ylabel="accuracy", gid=gid,
                         log2_x=True, xticks=sizes, ylim=(-0.02, 1.02), legend_outside=True, size=(7.2, 3.6))
