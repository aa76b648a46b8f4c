"""The report page's inline style sheet and script (plain CSS and vanilla JavaScript, no libraries).

The script drives the sample browser: it reads the samples from the JSON in
``<script id="sample-data">`` and renders the rows that pass the run, step, verdict and text filters
(``<tr class="sample" data-correct="true|false" data-step="N">``), at most ``MAX_ROWS`` at a time.
All text goes in through ``textContent``, never as HTML.
"""

STYLE = """
:root { --fg: #1d1d1f; --muted: #6e6e73; --line: #d9d9de; --bg: #ffffff; --soft: #f5f5f7;
        --good: #1a7f37; --bad: #c62828; --accent: #1f77b4; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg);
       background: var(--bg); }
header, main { max-width: 1400px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 16px; }
h1 { font-size: 20px; margin: 0 0 4px; word-break: break-all; }
h2 { font-size: 17px; border-bottom: 1px solid var(--line); padding-bottom: 4px; margin-top: 28px; }
h3 { font-size: 14px; margin: 14px 0 6px; }
.muted { color: var(--muted); }
.warning { background: #fff4e5; border-left: 4px solid #f0a020; padding: 6px 10px; margin: 6px 0; }
table { border-collapse: collapse; margin: 6px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 10px 3px 0; text-align: left; vertical-align: top; }
table.heldout td, table.heldout th + th { text-align: right; }
table.config th { font-weight: normal; color: var(--muted); }
code { font-size: 12px; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 12px; }
.plots .wide { grid-column: 1 / -1; }
figure.plot { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 4px; background: #fff; }
figure.plot svg { width: 100%; height: auto; display: block; }
figure.plot.wide svg { max-width: 900px; }
details { margin: 6px 0; }
summary { cursor: pointer; }
.controls { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin: 8px 0;
            position: sticky; top: 0; background: var(--bg); padding: 6px 0; z-index: 1; }
.controls label { display: flex; gap: 4px; align-items: center; }
.filters button { border: 1px solid var(--line); background: var(--soft); padding: 3px 12px; cursor: pointer;
                  font: inherit; }
.filters button:first-child { border-radius: 4px 0 0 4px; }
.filters button:last-child { border-radius: 0 4px 4px 0; }
.filters button.active { background: var(--accent); color: #fff; border-color: var(--accent); }
table.samples { width: 100%; table-layout: fixed; }
table.samples th:nth-child(-n+6) { width: 7%; }
table.samples td { font-size: 13px; overflow-wrap: anywhere; }
tr.sample.correct td.verdict { color: var(--good); font-weight: 600; }
tr.sample.incorrect td.verdict { color: var(--bad); }
pre.completion { margin: 0; white-space: pre-wrap; font: 12px/1.4 ui-monospace, Menlo, Consolas, monospace;
                 background: var(--soft); padding: 4px 6px; border-radius: 4px; }
.badge { display: inline-block; background: #f0a020; color: #fff; border-radius: 8px; padding: 0 6px;
         font-size: 11px; margin-bottom: 2px; }
.rewards { color: var(--muted); font-size: 11px; }
"""

SCRIPT = """
(function () {
  "use strict";
  var holder = document.getElementById("sample-data");
  if (!holder) { return; }
  var MAX_ROWS = 1000;
  var runs = JSON.parse(holder.textContent);
  var runSelect = document.getElementById("sample-run");
  var stepSelect = document.getElementById("sample-step");
  var orderSelect = document.getElementById("sample-order");
  var search = document.getElementById("sample-search");
  var count = document.getElementById("sample-count");
  var body = document.getElementById("sample-rows");
  var buttons = Array.prototype.slice.call(document.querySelectorAll("[data-filter]"));
  var verdict = "all";

  function option(select, value, text) {
    var node = document.createElement("option");
    node.value = String(value);
    node.textContent = text;
    select.appendChild(node);
  }
  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }
  function fmt(x) {
    if (x === null || x === undefined) { return "-"; }
    return Number.isInteger(x) ? String(x) : x.toFixed(3);
  }

  runs.forEach(function (run, index) {
    option(runSelect, index, run.name);
    run.repeats = new Map();
    run.rows.forEach(function (row) {
      var key = row.step + "\\u0000" + row.completion;
      run.repeats.set(key, (run.repeats.get(key) || 0) + 1);
    });
  });
  runSelect.parentNode.hidden = runs.length < 2;

  function fillSteps() {
    var run = runs[Number(runSelect.value)];
    var steps = Array.from(new Set(run.rows.map(function (r) { return r.step; }))).sort(function (a, b) { return a - b; });
    stepSelect.textContent = "";
    option(stepSelect, "all", "all steps (" + steps.length + ")");
    steps.forEach(function (s) { option(stepSelect, s, "step " + s); });
  }

  function row(run, r) {
    var tr = el("tr", "sample " + (r.correct ? "correct" : "incorrect"));
    tr.dataset.correct = String(r.correct);
    tr.dataset.step = String(r.step);
    tr.appendChild(el("td", "step", r.step));
    var reward = el("td", "reward", fmt(r.reward));
    if (r.rewards) {
      var parts = Object.keys(r.rewards).map(function (k) { return k + " " + fmt(r.rewards[k]); });
      reward.appendChild(el("div", "rewards", parts.join(", ")));
    }
    tr.appendChild(reward);
    tr.appendChild(el("td", "verdict", r.correct ? "\\u2713 correct" : "\\u2717 incorrect"));
    tr.appendChild(el("td", "extracted", r.extracted === null ? "-" : r.extracted));
    tr.appendChild(el("td", "gold", r.gold === null ? "-" : r.gold));
    tr.appendChild(el("td", "finish", r.finish === null ? "-" : r.finish));
    var cell = el("td", "text");
    var repeated = run.repeats.get(r.step + "\\u0000" + r.completion) || 1;
    if (repeated > 1) { cell.appendChild(el("span", "badge", "\\u00d7" + repeated + " in this step")); }
    cell.appendChild(el("pre", "completion", r.completion));
    if (r.prompt !== null && r.prompt !== undefined) {
      var details = el("details");
      details.appendChild(el("summary", "muted", "prompt" + (r.id ? " (" + r.id + ")" : "")));
      details.appendChild(el("pre", "completion", run.prompts[r.prompt]));
      cell.appendChild(details);
    } else if (r.id) {
      cell.appendChild(el("div", "muted", r.id));
    }
    tr.appendChild(cell);
    return tr;
  }

  function render() {
    var run = runs[Number(runSelect.value)];
    var step = stepSelect.value;
    var needle = search.value.toLowerCase();
    var rows = run.rows.filter(function (r) {
      return (step === "all" || r.step === Number(step)) &&
        (verdict === "all" || (verdict === "correct") === r.correct) &&
        (!needle || r.completion.toLowerCase().indexOf(needle) >= 0);
    });
    var order = orderSelect.value;
    if (order !== "step") {
      var sign = order === "reward-desc" ? -1 : 1;
      var value = function (r) { return r.reward === null ? Infinity * sign : r.reward; };
      rows = rows.slice().sort(function (a, b) { return sign * (value(a) - value(b)) || a.step - b.step; });
    }
    var fragment = document.createDocumentFragment();
    rows.slice(0, MAX_ROWS).forEach(function (r) { fragment.appendChild(row(run, r)); });
    body.textContent = "";
    body.appendChild(fragment);
    var correct = rows.filter(function (r) { return r.correct; }).length;
    count.textContent = rows.length + " samples (" + correct + " correct)" +
      (rows.length > MAX_ROWS ? "; showing the first " + MAX_ROWS + ", choose a step" : "");
  }

  buttons.forEach(function (button) {
    button.addEventListener("click", function () {
      verdict = button.dataset.filter;
      buttons.forEach(function (b) { b.classList.toggle("active", b === button); });
      render();
    });
  });
  runSelect.addEventListener("change", function () { fillSteps(); render(); });
  stepSelect.addEventListener("change", render);
  orderSelect.addEventListener("change", render);
  search.addEventListener("input", render);
  fillSteps();
  render();
})();
"""
