"""`incentivize report`: one self-contained HTML page about one run, or several runs side by side.

:func:`write_report` reads the run directories (see :mod:`incentivize.report.runs` for what is read
and what is refused), draws every logged metric against the step with matplotlib as inline SVG, and
writes the page (:mod:`incentivize.report.page`) with its styles, script and data inline, so that it
opens from disk with no network. Every input is checked before anything is written.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from incentivize.atomic import require_directory_path, write_text
from incentivize.errors import IncentivizeError
from incentivize.report.runs import read_run

__all__ = ["REPORT_NAME", "write_report"]

REPORT_NAME = "report.html"


def write_report(run_dirs: Sequence[str | Path], output: str | Path | None = None, *,
                 on_warning: Callable[[str], None] | None = None) -> Path:
    """Write the HTML report of ``run_dirs`` and return its path.

    ``output`` defaults to ``<run>/report.html`` for one run and ``./report.html`` for several; an
    existing directory gets a ``report.html`` inside it. Warnings (a torn last line of a JSON-lines
    file) go to ``on_warning`` (default: :func:`warnings.warn`) and onto the page. Bad input (a path
    that is not a run, an empty or corrupt `metrics.jsonl`) raises :class:`IncentivizeError` naming
    the file and line, before anything is written.
    """
    from incentivize.report.page import render

    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise IncentivizeError("no run directory given; name one or more, e.g. incentivize report runs/<run>")
    runs = [read_run(path, name) for path, name in zip(paths, run_names(paths))]
    target = _output_path(paths, None if output is None else Path(output))
    for run in runs:
        for message in run.warnings:
            (on_warning or _warn)(message)
    write_text(target, render(runs))
    return target


def run_names(paths: Sequence[Path]) -> list[str]:
    """A short distinct name per run: its directory name, with parent directories added where two
    runs would share one.

    >>> run_names([Path("a/x"), Path("b/x"), Path("runs/y")])
    ['a/x', 'b/x', 'y']
    """
    parts = [p.resolve().parts for p in paths]
    depth = [1] * len(paths)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clashes = {n for n in names if names.count(n) > 1}
        grow = [i for i, n in enumerate(names) if n in clashes and depth[i] < len(parts[i])]
        if not grow:
            return names
        for i in grow:
            depth[i] += 1


def _output_path(paths: list[Path], output: Path | None) -> Path:
    if output is None:
        output = paths[0] / REPORT_NAME if len(paths) == 1 else Path(REPORT_NAME)
    elif output.is_dir():
        output = output / REPORT_NAME
    if output.exists() and (output.is_dir() or output.suffix.lower() not in (".html", ".htm")):
        raise IncentivizeError(f"--output {output} exists and is not an HTML file; choose another path")
    require_directory_path(output.parent, "--output")
    return output


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)
