"""The report's HTML: one self-contained page (styles, script, plots and data inline; nothing fetched).

Sections: the runs (name, algorithm, model, task, steps, duration), the config keys that differ
between runs, held-out evaluations before / during / after training, the training curves, the
N-sweep of a verifier recipe, and a sample browser.

Curves: every numeric key of `metrics.jsonl` is plotted against the step, in the curated groups of
:data:`GROUPS` where the key is known and in a figure of its own under "other metrics" where it is
not. Each figure is ``<figure class="plot" id=... data-plot=GROUP data-metrics="KEY KEY ...">``
holding one inline SVG; each line's SVG group has the id ``<figure id>/<run number>/<key>`` and one
``<use>`` element per point. Several runs share each figure: one colour per run, one line style per
key.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from incentivize.report.assets import SCRIPT, STYLE
from incentivize.trackers import flatten
from incentivize.plots import COLORS, LINESTYLES, Series, line_plot_svg, sweep_svg
from incentivize.report.runs import SAMPLES_PER_STEP, RunData, eval_step

HELD_OUT = "eval/greedy_accuracy"  # plotted from eval-*/results.json as well as from metrics.jsonl
IGNORED_CONFIG_KEYS = frozenset({"output_dir"})  # differs between any two runs; their names say it


@dataclass(frozen=True)
class Group:
    """A curated figure: the ``keys`` in this order, then any key starting with one of ``prefixes``."""

    id: str
    title: str
    ylabel: str
    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()


GROUPS = (
    Group("reward", "reward: mean, and per reward function", "reward", ("reward_mean",), ("reward/",)),
    Group("reward_std", "reward standard deviation", "std", ("reward_std",)),
    Group("accuracy", "accuracy: training samples, and held-out greedy", "accuracy", ("accuracy", HELD_OUT)),
    Group("monitor", "learned or judged rewards against the verifier: correlation, false-positive rate", "value",
          (), ("monitor/",)),
    Group("kl", "KL divergence to the reference policy", "KL", ("kl",)),
    Group("entropy", "entropy of the policy (nats per token)", "entropy", ("entropy",)),
    Group("clipping", "share of tokens clipped (low / high)", "share", ("clip_frac_low", "clip_frac_high")),
    Group("policy_shift", "policy shift within a step: mean ratio, approximate KL", "value", ("ratio_mean", "approx_kl")),
    Group("completion_length", "completion length (tokens): all, correct, incorrect", "tokens",
          ("completion_length", "completion_length_correct", "completion_length_incorrect")),
    Group("shares", "zero-variance groups and truncated completions", "share",
          ("zero_variance_groups", "truncated_share")),
    Group("time", "time per step", "seconds", ("time/generate", "time/score", "time/reference", "time/forward",
                                               "time/backward", "time/optimizer", "time/learn", "time/step"), ("time/",)),
    Group("throughput", "throughput", "tokens / s", ("tokens_per_second",)),
    Group("loss", "loss", "loss", ("loss", "lm_loss", "policy_loss", "value_loss")),
    Group("grad_norm", "gradient norm (before clipping)", "norm", ("grad_norm",)),
    Group("lr", "learning rate", "lr", ("lr",)),
    Group("faults", "skipped updates, non-finite streak, reward errors", "count",
          ("skipped_updates", "skipped_steps", "nonfinite_streak", "reward_errors", "reward_timeouts")),
)

Member = tuple[int, RunData]  # (run number, the run or sub-run whose curves are drawn)


def render(runs: Sequence[RunData]) -> str:
    """The whole page for ``runs`` (one or more), as text."""
    title = "incentivize report: " + ", ".join(run.name for run in runs)
    sections = [_runs_section(runs), _config_section(runs), _heldout_section(runs)]
    for section_id, heading, members in _curve_sets(runs):
        sections.append(_curves_section(section_id, heading, members, multi=len(runs) > 1))
    sections += [_sweep_section(runs), _summary_section(runs), _samples_section(runs)]
    body = "\n".join(s for s in sections if s)
    notices = [w for run in runs for w in run.warnings]
    notice = "".join(f'<p class="warning">{_e(w)}</p>' for w in notices)
    generated = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{_e(title)}</title>\n"
        f"<style>{STYLE}</style>\n</head>\n<body>\n<header><h1>{_e(title)}</h1>"
        f"<p class=\"muted\">generated {generated} by <code>incentivize report</code></p>{notice}</header>\n"
        f"<main>\n{body}\n</main>\n<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------
# The runs, their configs, held-out evaluations, summaries


def _runs_section(runs: Sequence[RunData]) -> str:
    rows = []
    for number, run in enumerate(runs):
        config = run.config or next((part.config for part in run.parts if part.config), {})
        algorithm = config.get("algorithm") or config.get("kind") or ("verifier recipe" if run.parts else "")
        if not run.metrics and run.parts:
            steps = ", ".join(f"{part.name} {part.steps}" for part in run.parts)
        else:
            wanted = config.get("max_steps")
            steps = f"{run.steps}" + (f" of {wanted}" if isinstance(wanted, int) and wanted != run.steps else "")
        seconds = (run.summary or {}).get("seconds")
        duration = _duration(seconds) if isinstance(seconds, (int, float)) else ""
        status = "finished" if run.summary is not None else "no summary.json: interrupted, or still running"
        swatch = f'<span class="swatch" style="background:{COLORS[number % len(COLORS)]}"></span>' if len(runs) > 1 else ""
        cells = [swatch + _e(run.name), _e(str(algorithm)), _e(str(config.get("model", ""))),
                 _e(str(config.get("task", ""))), _e(steps), _e(duration), _e(status), f"<code>{_e(str(run.path))}</code>"]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("run", "algorithm", "model", "task", "steps", "duration", "status", "path"))
    return (f'<section id="runs"><h2>Run{"s" if len(runs) > 1 else ""}</h2>'
            f'<table class="runs"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></section>')


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def config_differences(configs: Sequence[dict[str, Any]]) -> list[str]:
    """The dotted config keys whose values are not the same in all ``configs`` (a missing key differs).

    >>> config_differences([{"beta": 0.0, "lr": 1, "output_dir": "a"}, {"beta": 0.04, "lr": 1, "output_dir": "b"}])
    ['beta']
    """
    flat = [flatten(config) for config in configs]
    keys = list(dict.fromkeys(key for f in flat for key in f))
    missing = object()
    return [key for key in keys if key not in IGNORED_CONFIG_KEYS
            and len({json.dumps(f.get(key, missing), sort_keys=True, default=repr) for f in flat}) > 1]


def _config_section(runs: Sequence[RunData]) -> str:
    configs = [run.config or next((part.config for part in run.parts if part.config), {}) for run in runs]
    parts = ['<section id="config"><h2>Config</h2>']
    if len(runs) > 1:
        differing = config_differences(configs)
        if differing:
            head = "<th>key</th>" + "".join(f"<th>{_e(run.name)}</th>" for run in runs)
            rows = []
            for key in differing:
                cells = "".join(f"<td>{_e(_show(flatten(c).get(key, '(absent)')))}</td>" for c in configs)
                rows.append(f'<tr data-key="{_e(key)}"><th>{_e(key)}</th>{cells}</tr>')
            parts.append(f'<p>Keys that differ between the runs ({len(differing)}; output_dir left out):</p>'
                         f'<table class="config-diff"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
                         "</table>")
        else:
            parts.append('<p class="config-diff">The runs\' configs are the same (output_dir left out).</p>')
    for run, config in zip(runs, configs):
        keys = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_show(v))}</td></tr>" for k, v in flatten(config).items())
        parts.append(f"<details><summary>config.yaml of {_e(run.name)} ({len(flatten(config))} keys)</summary>"
                     f'<table class="config">{keys}</table></details>')
    parts.append("</section>")
    return "".join(parts)


def _heldout_section(runs: Sequence[RunData]) -> str:
    tables = []
    for run in runs:
        for label, member in [(run.name, run)] + [(f"{run.name}/{part.name}", part) for part in run.parts]:
            if not member.evals:
                continue
            columns = list(member.evals)
            names = list(dict.fromkeys(k for m in member.evals.values() for k, v in m.items()
                                       if _is_number(v) and k != "seconds"))
            head = "<th>metric</th>" + "".join(f"<th>{_e(c)}</th>" for c in columns)
            change = "before" in columns and "after" in columns
            head += "<th>change</th>" if change else ""
            rows = []
            for name in names:
                values = [member.evals[c].get(name) for c in columns]
                cells = "".join(f"<td>{_fmt(v)}</td>" for v in values)
                if change:
                    cells += f"<td>{_change(member.evals['before'].get(name), member.evals['after'].get(name))}</td>"
                rows.append(f'<tr data-metric="{_e(name)}"><th>{_e(name)}</th>{cells}</tr>')
            tables.append(f'<h3>{_e(label)}</h3><table class="heldout" data-run="{_e(label)}"><thead><tr>{head}</tr>'
                          f'</thead><tbody>{"".join(rows)}</tbody></table>')
    if not tables:
        return ""
    return ('<section id="heldout"><h2>Held-out evaluation</h2><p class="muted">From <code>eval-*/results.json</code>: '
            "before training, at eval_steps, and after.</p>" + "".join(tables) + "</section>")


def _summary_section(runs: Sequence[RunData]) -> str:
    blocks = []
    for run in runs:
        for label, member in [(run.name, run)] + [(f"{run.name}/{part.name}", part) for part in run.parts]:
            if not member.summary:
                continue
            flat = {k: v for k, v in flatten({k: v for k, v in member.summary.items() if k not in ("before", "after")}).items()
                    if _is_number(v) or isinstance(v, str)}
            if flat:
                rows = "".join(f"<tr><th>{_e(k)}</th><td>{_fmt(v) if _is_number(v) else _e(v)}</td></tr>"
                               for k, v in flat.items())
                blocks.append(f"<details><summary>summary.json of {_e(label)}</summary><table>{rows}</table></details>")
    return f'<section id="summary"><h2>Summaries</h2>{"".join(blocks)}</section>' if blocks else ""


# ---------------------------------------------------------------------------------------------
# Curves


def _curve_sets(runs: Sequence[RunData]) -> list[tuple[str, str, list[Member]]]:
    """(section id, heading, members) for the runs' own metrics and for each sub-run name."""
    sets = []
    own = [(number, run) for number, run in enumerate(runs) if run.metrics]
    if own:
        sets.append(("curves", "Training curves", own))
    part_names = list(dict.fromkeys(part.name for run in runs for part in run.parts))
    for name in part_names:
        members = [(number, part) for number, run in enumerate(runs) for part in run.parts if part.name == name]
        sets.append((f"curves-{_slug(name)}", f"Training curves: {name}", members))
    return sets


def numeric_keys(rows: Iterable[dict[str, Any]]) -> list[str]:
    """The keys with a number (not a bool) in some row, in order of first appearance, without ``step``."""
    keys: dict[str, None] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and key not in keys and _is_number(value):
                keys[key] = None
    return list(keys)


def plot_groups(keys: Sequence[str], held_out: bool = False) -> list[tuple[str, str, str, list[str]]]:
    """(plot id, title, y label, keys) for each figure: the curated :data:`GROUPS` that have keys, then one
    figure per remaining key. ``held_out``: evaluations exist, so the accuracy figure is drawn.

    >>> [(p, k) for p, _, _, k in plot_groups(["loss", "reward/length", "reward_mean", "a/b", "a-b"])]
    [('reward', ['reward_mean', 'reward/length']), ('loss', ['loss']), ('other-a-b', ['a/b']), ('other-a-b-2', ['a-b'])]
    """
    remaining = list(keys)
    figures = []
    for group in GROUPS:
        members = [k for k in group.keys if k in remaining]
        members += [k for k in remaining if group.prefixes and k.startswith(group.prefixes) and k not in members]
        if group.id == "accuracy" and held_out and HELD_OUT not in members:
            members.append(HELD_OUT)
        if members:
            figures.append((group.id, group.title, group.ylabel, members))
            remaining = [k for k in remaining if k not in members]
    used = {plot_id for plot_id, _, _, _ in figures}
    for key in remaining:
        plot_id, number = f"other-{_slug(key)}", 2
        while plot_id in used:  # two keys that slug alike ("select/orm", "select-orm")
            plot_id, number = f"other-{_slug(key)}-{number}", number + 1
        used.add(plot_id)
        figures.append((plot_id, key, key, [key]))
    return figures


def _curves_section(section_id: str, heading: str, members: list[Member], multi: bool) -> str:
    keys = numeric_keys(row for _, run in members for row in run.metrics)
    held_out = any(_held_out_points(run) for _, run in members)
    figures, other_started = [], False
    for plot_id, title, ylabel, group_keys in plot_groups(keys, held_out):
        figure_id = f"{section_id}-{plot_id}"
        series = []
        for number, run in members:
            for key_number, key in enumerate(group_keys):
                if key == HELD_OUT:
                    points = _held_out_points(run)
                    xs, ys = list(points), list(points.values())
                    label = "held-out greedy accuracy"
                else:
                    present = [row for row in run.metrics if _is_number(row.get(key))]
                    xs, ys, label = [row["step"] for row in present], [row[key] for row in present], key
                if not xs:
                    continue
                if multi:
                    label = f"{run.name}: {label}" if len(group_keys) > 1 else run.name
                series.append(Series(
                    label, xs, ys, gid=f"{figure_id}/{number}/{key}",
                    color=COLORS[(number if multi else key_number) % len(COLORS)],
                    linestyle=LINESTYLES[key_number % len(LINESTYLES)] if multi else "-",
                ))
        if not series:
            continue
        svg = line_plot_svg(series, title=title, xlabel="step", ylabel=ylabel, gid=f"{figure_id}/svg",
                            legend_outside=len(series) > 3 or multi)
        if plot_id.startswith("other-") and not other_started:
            figures.append('<h3 class="wide">other metrics</h3>')
            other_started = True
        figures.append(f'<figure class="plot" id="{_e(figure_id)}" data-plot="{_e(plot_id)}" '
                       f'data-metrics="{_e(" ".join(group_keys))}">{svg}</figure>')
    return f'<section id="{section_id}"><h2>{_e(heading)}</h2><div class="plots">{"".join(figures)}</div></section>'


def _held_out_points(run: RunData) -> dict[int, float]:
    """Held-out greedy accuracy by step: `eval/greedy_accuracy` of metrics.jsonl, and eval-before (step 0),
    eval-step-N and eval-after (the last step) from their results.json."""
    points = {int(row["step"]): float(row[HELD_OUT]) for row in run.metrics if _is_number(row.get(HELD_OUT))}
    for label, metrics in run.evals.items():
        step = eval_step(label, run.steps)
        if step is not None and _is_number(metrics.get("greedy_accuracy")):
            points[step] = float(metrics["greedy_accuracy"])
    return dict(sorted(points.items()))


def _sweep_section(runs: Sequence[RunData]) -> str:
    figures = []
    for number, run in enumerate(runs):
        for where, table in run.sweeps.items():
            if not any(table.values()):
                continue
            label = f"{run.name}/{where}" if where != "." else run.name
            svg = sweep_svg(table, title=f"accuracy vs samples per problem: {label}", gid=f"sweep-{number}-{_slug(where)}")
            figures.append(f'<figure class="plot wide" id="sweep-{number}-{_slug(where)}" data-plot="sweep" '
                           f'data-metrics="{_e(" ".join(table))}">{svg}</figure>')
    if not figures:
        return ""
    return ('<section id="sweep"><h2>Selection: accuracy against N</h2><p class="muted">From <code>sweep.json</code>: '
            "each selector choosing among N of the sampled completions per problem; pass@ lines are the baselines."
            f'</p><div class="plots">{"".join(figures)}</div></section>')


# ---------------------------------------------------------------------------------------------
# Samples


def _samples_section(runs: Sequence[RunData]) -> str:
    data: list[dict[str, Any]] = []
    for run in runs:
        for label, member in [(run.name, run)] + [(f"{run.name}/{part.name}", part) for part in run.parts]:
            if member.samples is not None and member.samples.rows:
                data.append({"name": label, "total": member.samples.total, "prompts": member.samples.prompts,
                             "rows": member.samples.rows})
    if not data:
        return ""
    kept, total = sum(len(d["rows"]) for d in data), sum(d["total"] for d in data)
    cap = f"; the first {SAMPLES_PER_STEP} of each step are kept ({kept} of {total})" if kept < total else ""
    return (
        '<section id="samples"><h2>Samples</h2>'
        f'<p class="muted">Completions sampled during training, from <code>samples.jsonl</code>{cap}. '
        "A badge ×k marks a completion repeated k times in its step.</p>"
        '<div class="controls">'
        '<label>run <select id="sample-run"></select></label>'
        '<label>step <select id="sample-step"></select></label>'
        '<span class="filters" role="group">'
        '<button type="button" data-filter="all" class="active">all</button>'
        '<button type="button" data-filter="correct">correct</button>'
        '<button type="button" data-filter="incorrect">incorrect</button></span>'
        '<label>order <select id="sample-order"><option value="step">by step</option>'
        '<option value="reward-desc">reward, high first</option><option value="reward-asc">reward, low first</option>'
        "</select></label>"
        '<input id="sample-search" type="search" placeholder="search completions">'
        '<span id="sample-count" class="muted"></span></div>'
        '<table class="samples"><thead><tr><th>step</th><th>reward</th><th>verdict</th><th>extracted</th><th>gold</th>'
        "<th>finish</th><th>completion</th></tr></thead><tbody id=\"sample-rows\"></tbody></table>"
        f'<script type="application/json" id="sample-data">{script_json(data)}</script></section>'
    )


def script_json(value: Any) -> str:
    """JSON that is safe inside a ``<script>`` element: no ``</script>``, ``<!--`` or line separators.

    >>> script_json({"a": "</script><!--"})
    '{"a": "\\\\u003c/script\\\\u003e\\\\u003c!--"}'
    """
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                          ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text


# ---------------------------------------------------------------------------------------------
# Small helpers


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


def _fmt(value: Any) -> str:
    if not _is_number(value):
        return "" if value is None else _e(str(value))
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.3f}"


def _change(before: Any, after: Any) -> str:
    if not (_is_number(before) and _is_number(after)):
        return ""
    return ("+" if after > before else "") + _fmt(after - before)


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text).strip("-") or "x"
