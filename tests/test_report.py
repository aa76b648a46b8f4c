"""`incentivize report`: the HTML page as a user sees it, from the committed fixture run
(tests/fixtures/report_run: 4 GRPO steps, 4 samples per step, evaluations before, at step 2 and after).

The `browser` tests open the page in headless Chromium (Debian's `chromium` and `chromium-driver`,
which `make test` installs) through selenium, look at the pixels, count the plotted points in the DOM
and click the sample browser's filters."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from incentivize.errors import IncentivizeError
from incentivize.report import write_report
from incentivize.report.page import GROUPS
from incentivize.report.runs import SAMPLES_PER_STEP, read_run

FIXTURE = Path(__file__).parent / "fixtures" / "report_run"
SVG = "{http://www.w3.org/2000/svg}"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


METRICS = _rows(FIXTURE / "metrics.jsonl")
SAMPLES = _rows(FIXTURE / "samples.jsonl")
HELD_OUT_STEPS = [0, 2, 4]  # eval-before, eval-step-2 (also eval/greedy_accuracy in metrics.jsonl), eval-after


def _points(key: str) -> int:
    """How many points a metric's line should have: the steps where it is a number."""
    if key == "eval/greedy_accuracy":
        return len(HELD_OUT_STEPS)
    return sum(1 for row in METRICS if isinstance(row.get(key), (int, float)))


@pytest.fixture
def run(tmp_path) -> Path:
    """A copy of the fixture run (a report is written into its directory)."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "grpo-run"))


def _figures(page: str) -> dict[str, dict]:
    """figure id -> {plot, metrics, series: {series id: number of points}} from the page's inline SVGs."""
    figures = {}
    pattern = r'<figure class="plot[^"]*" id="([^"]+)" data-plot="([^"]+)" data-metrics="([^"]*)">(.*?)</figure>'
    for match in re.finditer(pattern, page, re.S):
        figure_id, plot, metrics, svg = match.groups()
        root = ET.fromstring(svg)
        series = {g.get("id"): len(g.findall(f".//{SVG}use")) for g in root.iter(f"{SVG}g")
                  if g.get("id", "").startswith(figure_id + "/")}
        figures[figure_id] = {"plot": plot, "metrics": metrics.split(), "series": series, "root": root}
    return figures


def _sample_data(page: str) -> list[dict]:
    text = re.search(r'<script type="application/json" id="sample-data">(.*?)</script>', page, re.S).group(1)
    return json.loads(text)


def test_one_run_report_has_a_figure_per_metric_with_a_point_per_step(run):
    path = write_report([run])
    assert path == run / "report.html"
    page = path.read_text()
    figures = _figures(page)
    keys = [k for k in dict.fromkeys(k for row in METRICS for k in row) if k != "step"]
    for key in keys:  # every numeric key is in exactly one figure, with one point per step that logged it
        holders = [f for f in figures.values() if key in f["metrics"]]
        assert len(holders) == 1, key
        series = holders[0]["series"]
        assert series == {**series, f"curves-{holders[0]['plot']}/0/{key}": _points(key)}, key
    by_key = {key: f["plot"] for f in figures.values() for key in f["metrics"]}
    assert by_key["reward_mean"] == by_key["reward/correctness"] == by_key["reward/length"] == "reward"
    assert by_key["accuracy"] == by_key["eval/greedy_accuracy"] == "accuracy"
    assert by_key["completion_length_correct"] == "completion_length" and by_key["time/generate"] == "time"
    assert by_key["clip_frac_low"] == by_key["clip_frac_high"] == "clipping"
    assert by_key["mystery_metric"] == "other-mystery_metric"  # unknown keys get a figure of their own
    assert {f["plot"] for f in figures.values()} <= {g.id for g in GROUPS} | {p for p in by_key.values()}
    # every figure has a title, axis labels and a legend naming its lines, as text
    reward = figures["curves-reward"]
    texts = {t.text for t in reward["root"].iter(f"{SVG}text")}
    assert {"reward_mean", "reward/correctness", "reward/length", "step"} <= texts
    # nothing is fetched: no external script, style, image or font
    assert not re.search(r'(src|href)="(https?:)?//', page) and "@import" not in page


def test_header_heldout_table_and_samples(run):
    page = write_report([run], run / "out.html").read_text()
    header = re.search(r'<table class="runs">.*?</table>', page, re.S).group(0)
    for fragment in ("grpo-run", "grpo", "tiny-random", "arithmetic", "<td>4</td>", "42.5 s", "finished"):
        assert fragment in header
    table = re.search(r'<table class="heldout".*?</table>', page, re.S).group(0)
    assert re.search(r"<th>before</th><th>step-2</th><th>after</th><th>change</th>", table)
    row = re.search(r'<tr data-metric="greedy_accuracy">(.*?)</tr>', table).group(1)
    assert re.findall(r"<td>([^<]*)</td>", row) == ["0.250", "0.500", "0.750", "+0.500"]
    [data] = _sample_data(page)
    assert len(data["rows"]) == data["total"] == len(SAMPLES)
    assert [r["completion"] for r in data["rows"]] == [s["completion"] for s in SAMPLES]  # exactly, after escaping
    assert "</script><b>" not in page  # a completion cannot end the script or inject markup
    first, later = data["rows"][0], data["rows"][4]
    assert first["prompt"] is None and first["extracted"] is None and first["finish"] is None  # older fields absent
    assert data["prompts"][later["prompt"]].startswith("<|im_start|>user")
    assert later["rewards"] == {"correctness": 1.0, "length": 0.05} and later["finish"] == "length"


def test_several_runs_overlay_their_curves_and_show_the_config_keys_that_differ(tmp_path, monkeypatch):
    a = Path(shutil.copytree(FIXTURE, tmp_path / "runs" / "beta0"))
    b = Path(shutil.copytree(FIXTURE, tmp_path / "runs" / "beta004"))
    config = yaml.safe_load((b / "config.yaml").read_text())
    config.update(beta=0.04, learning_rate=3e-6, output_dir="runs/other")
    (b / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    with (b / "metrics.jsonl").open("w") as handle:  # a shorter run: 3 steps
        handle.writelines(json.dumps({**row, "reward_mean": row["reward_mean"] / 2}) + "\n" for row in METRICS[:3])
    monkeypatch.chdir(tmp_path)
    path = write_report([a, b])
    assert path == Path("report.html") and not (a / "report.html").exists()
    page = path.read_text()
    diff = re.search(r'<table class="config-diff">.*?</table>', page, re.S).group(0)
    assert re.findall(r'<tr data-key="([^"]+)">', diff) == ["learning_rate", "beta"]  # output_dir is left out
    assert "<th>beta0</th><th>beta004</th>" in diff and "<td>0.0</td><td>0.04</td>" in diff
    reward = _figures(page)["curves-reward"]
    assert reward["series"]["curves-reward/0/reward_mean"] == 4 and reward["series"]["curves-reward/1/reward_mean"] == 3
    colours = {}
    for g in reward["root"].iter(f"{SVG}g"):
        if g.get("id", "").startswith("curves-reward/"):
            style = g.find(f"{SVG}path").get("style")
            colours.setdefault(g.get("id").split("/")[1], set()).add(re.search(r"stroke: (#\w+)", style).group(1))
    assert all(len(c) == 1 for c in colours.values()) and colours["0"] != colours["1"]  # one colour per run
    texts = {t.text for t in reward["root"].iter(f"{SVG}text")}
    assert {"beta0: reward_mean", "beta004: reward/length"} <= texts
    assert [d["name"] for d in _sample_data(page)] == ["beta0", "beta004"]


def test_a_verifier_recipe_shows_its_sweep_and_its_stages(tmp_path):
    recipe = tmp_path / "verifier-run"
    shutil.copytree(FIXTURE, recipe / "generator")
    (recipe / "eval").mkdir()
    sweep = {"pass@1": {"1": 0.2, "2": 0.2, "4": 0.2}, "majority": {"1": 0.2, "2": 0.25, "4": 0.3},
             "orm": {"1": 0.2, "2": 0.3, "4": 0.35}, "pass@N": {"1": 0.2, "2": 0.35, "4": 0.5}}
    (recipe / "eval" / "sweep.json").write_text(json.dumps({"accuracy": sweep, "trials": 200}))
    (recipe / "eval" / "results.json").write_text(json.dumps({"metrics": {"greedy_accuracy": 0.3, "select/orm": 0.35}}))
    (recipe / "summary.json").write_text(json.dumps({"seconds": 90.0}))
    page = write_report([recipe]).read_text()
    figures = _figures(page)
    [sweep_figure] = [f for f in figures.values() if f["plot"] == "sweep"]
    assert sweep_figure["metrics"] == list(sweep)
    assert sorted(sweep_figure["series"].values()) == [3, 3, 3, 3]
    assert figures["curves-generator-reward"]["series"]["curves-generator-reward/0/reward_mean"] == 4
    assert '<table class="heldout" data-run="verifier-run">' in page  # eval/results.json
    assert '<table class="heldout" data-run="verifier-run/generator">' in page


def test_samples_are_capped_per_step(run):
    rows = [{"step": step, "example_id": f"e{i}", "completion": "x" * 5000, "gold": "1", "reward": 0.0, "correct": False}
            for step in (1, 2) for i in range(SAMPLES_PER_STEP + 7)]
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = write_report([run]).read_text()
    [data] = _sample_data(page)
    assert data["total"] == len(rows) and len(data["rows"]) == 2 * SAMPLES_PER_STEP
    assert len(data["rows"][0]["completion"]) < 2100  # long texts are cut
    assert f"the first {SAMPLES_PER_STEP} of each step are kept" in page


def test_a_torn_last_line_is_a_warning_and_a_resumed_step_counts_once(run):
    text = (run / "metrics.jsonl").read_text()
    again = json.dumps({**METRICS[1], "reward_mean": 0.99}) + "\n"  # step 2 logged again after a resume
    (run / "metrics.jsonl").write_text(text + again + '{"step": 5, "reward_me')  # a crash mid-write: no newline
    warnings: list[str] = []
    page = write_report([run], on_warning=warnings.append).read_text()
    assert warnings == [f"{run / 'metrics.jsonl'}:6: ignored an incomplete last line (a write torn by a crash, or a run "
                        "still writing)"]
    assert "ignored an incomplete last line" in page
    reward = _figures(page)["curves-reward"]
    assert reward["series"]["curves-reward/0/reward_mean"] == 4
    assert [row["reward_mean"] for row in read_run(run).metrics][1] == 0.99  # the later row of step 2 counts


BAD_RUNS = [
    ("missing", lambda d: shutil.rmtree(d), "no such directory"),
    ("file", lambda d: (shutil.rmtree(d), d.write_text("x")), "is a file, not a run directory"),
    ("empty dir", lambda d: [p.unlink() if p.is_file() else shutil.rmtree(p) for p in list(d.iterdir())],
     "is not a run directory: it holds no metrics.jsonl or config.yaml"),
    ("config only", lambda d: (d / "metrics.jsonl").unlink(), "metrics.jsonl: missing; the run has not logged a step"),
    ("empty metrics", lambda d: (d / "metrics.jsonl").write_text(""), "metrics.jsonl: empty; the run has not logged"),
    ("blank metrics", lambda d: (d / "metrics.jsonl").write_text("\n\n"), "metrics.jsonl: empty"),
    ("torn middle line", lambda d: _edit_line(d / "metrics.jsonl", 2, '{"step": 2, "rew'),
     "metrics.jsonl:2: not a JSON object (Unterminated string"),
    ("a list, not an object", lambda d: _edit_line(d / "metrics.jsonl", 3, "[1, 2]"),
     "metrics.jsonl:3: a JSON list, not an object; fix or delete that line"),
    ("no step", lambda d: _edit_line(d / "metrics.jsonl", 1, '{"loss": 1.0}'), 'metrics.jsonl:1: no integer "step"'),
    ("torn last line with a newline", lambda d: _edit_line(d / "metrics.jsonl", 4, '{"step": 4, "lo'),
     "metrics.jsonl:4: not a JSON object"),
    ("bad samples line", lambda d: _edit_line(d / "samples.jsonl", 5, "garbage"), "samples.jsonl:5: not a JSON object"),
    ("bad results.json", lambda d: (d / "eval-after" / "results.json").write_text("{"),
     "eval-after/results.json: not valid JSON"),
    ("bad config.yaml", lambda d: (d / "config.yaml").write_text("a: [1"), "config.yaml: not valid YAML"),
]


def _edit_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("case, damage, message", BAD_RUNS, ids=[c[0] for c in BAD_RUNS])
def test_bad_input_names_the_file_and_line_and_writes_nothing(case, damage, message, run, tmp_path):
    damage(run)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(IncentivizeError, match=re.escape(message)) as caught:
        write_report([FIXTURE, run], tmp_path / "out" / "report.html")  # the good run first: all are checked first
    assert "\n" not in str(caught.value)
    assert sorted(tmp_path.rglob("*")) == before
    if run.is_dir():
        with pytest.raises(IncentivizeError, match=re.escape(message)):
            write_report([run])
        assert not (run / "report.html").exists()


def test_output_that_is_not_html_is_refused(run):
    with pytest.raises(IncentivizeError, match="exists and is not an HTML file"):
        write_report([run], run / "metrics.jsonl")
    assert _rows(run / "metrics.jsonl") == METRICS
    assert write_report([run], run / "eval-before") == run / "eval-before" / "report.html"  # a directory: inside it


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "incentivize.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_cli_writes_the_report_and_says_where(run):
    result = _cli("report", run)
    assert result.returncode == 0, result.stderr
    # (a first matplotlib import on a fresh machine may say first that it builds its font cache)
    assert re.search(rf"^wrote {re.escape(str(run / 'report.html'))} in \d+\.\ds$", result.stderr, re.M), result.stderr
    assert (run / "report.html").stat().st_size > 10_000


def test_cli_on_a_directory_that_is_not_a_run_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    result = _cli("report", tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {tmp_path} is not a run directory: it holds no metrics.jsonl or "
                                     "config.yaml; give the directory that `incentivize train` wrote")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------------------------------------
# In a real browser


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and chromedriver, "no chromium or chromedriver: `make browser` installs Debian's packages"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    # as root Chromium needs --no-sandbox; without the background-networking flags it dials out on start
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.browser
def test_the_page_in_chromium_draws_every_plot_and_its_filters_work(browser, run):
    from PIL import Image
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    path = write_report([run])
    browser.get(path.resolve().as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not errors, errors

    # (a) the screenshot is not blank: many colours, a good share of non-white pixels
    image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert len(colours) > 50
    white = sum(count for count, rgb in colours if min(rgb) >= 250)
    assert white < 0.97 * image.width * image.height

    # (b) the DOM: one figure per metric group, each drawn with one marker element per data point
    figures = browser.execute_script("""
        return Array.from(document.querySelectorAll("figure.plot")).map(function (f) {
          var box = f.querySelector("svg").getBoundingClientRect();
          return {id: f.id, metrics: f.dataset.metrics.split(" "), width: box.width, height: box.height,
                  series: Array.from(f.querySelectorAll("svg g[id]")).filter(function (g) {
                    return g.id.indexOf(f.id + "/") === 0; }).map(function (g) {
                    return [g.id.slice(f.id.length + 1), g.querySelectorAll("use").length]; })};
        });""")
    keys = [k for k in dict.fromkeys(k for row in METRICS for k in row) if k != "step"]
    assert sorted(k for f in figures for k in f["metrics"]) == sorted(keys)
    for figure in figures:
        assert figure["width"] > 200 and figure["height"] > 100, figure["id"]
        assert dict(figure["series"]) == {f"0/{key}": _points(key) for key in figure["metrics"]}, figure["id"]

    # (c) the sample browser: the verdict filter and the step selector
    def visible_rows():
        rows = browser.find_elements(By.CSS_SELECTOR, "#sample-rows tr.sample")
        return [(int(r.get_attribute("data-step")), r.get_attribute("data-correct")) for r in rows if r.is_displayed()]

    correct = sum(s["correct"] for s in SAMPLES)
    assert len(visible_rows()) == len(SAMPLES)
    browser.find_element(By.CSS_SELECTOR, 'button[data-filter="incorrect"]').click()
    shown = visible_rows()
    assert len(shown) == len(SAMPLES) - correct and {c for _, c in shown} == {"false"}
    browser.find_element(By.CSS_SELECTOR, 'button[data-filter="correct"]').click()
    shown = visible_rows()
    assert len(shown) == correct and {c for _, c in shown} == {"true"}
    Select(browser.find_element(By.ID, "sample-step")).select_by_value("4")
    assert visible_rows() == [(4, "true")] * sum(s["correct"] for s in SAMPLES if s["step"] == 4)
    browser.find_element(By.CSS_SELECTOR, 'button[data-filter="all"]').click()
    assert len(visible_rows()) == sum(1 for s in SAMPLES if s["step"] == 4)
    assert "samples (" in browser.find_element(By.ID, "sample-count").text
    # the completion that looks like markup is shown as text
    Select(browser.find_element(By.ID, "sample-step")).select_by_value("3")
    texts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#sample-rows pre.completion")]
    assert "</script><b>not html</b> & <!-- done" in texts
