"""Inference-time selection: voting, best-of-N, weighted and top-k voting, the N sweep, its plot, and
`incentivize eval --select`."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from itertools import combinations

import pytest

from incentivize.errors import IncentivizeError
from incentivize.inference.voting import pass_at_k
from incentivize.inference import (
    Problem,
    Selector,
    best_of_n,
    build_selectors,
    majority,
    parse_select,
    pass_at_1,
    plot_sweep,
    sweep,
    sweep_markdown,
    sweep_sizes,
    top_k_vote,
    weighted_vote,
)

# Each selector picks a different answer here:
# - majority: "7" has 4 votes (two written differently: numbers vote by value);
# - best-of-N: the single best score, 0.95, is a "5";
# - weighted: "9" weighs 3 x 0.65 = 1.95, more than "3" (1.8), "5" (0.95) and "7" (0.4);
# - top-3 voting: the three best are "5", "3", "3", so "3".
ANSWERS = ["7", "7.0", "7", "7", "9", "9", "9", "5", "3", "3"]
SCORES = [0.1, 0.1, 0.1, 0.1, 0.65, 0.65, 0.65, 0.95, 0.9, 0.9]


def test_each_selector_picks_its_own_answer():
    assert ANSWERS[majority(ANSWERS)] == "7"
    assert ANSWERS[best_of_n(SCORES)] == "5"
    assert ANSWERS[weighted_vote(ANSWERS, SCORES)] == "9"
    assert ANSWERS[top_k_vote(ANSWERS, SCORES, 3)] == "3"
    # the index is the first sample of the winning answer, or the chosen sample itself
    assert (majority(ANSWERS), best_of_n(SCORES), weighted_vote(ANSWERS, SCORES), top_k_vote(ANSWERS, SCORES, 3)) == (
        0, 7, 4, 8)


def test_top_k_voting_spans_best_of_n_and_majority():
    assert top_k_vote(ANSWERS, SCORES, 1) == best_of_n(SCORES)
    assert top_k_vote(ANSWERS, SCORES, len(ANSWERS)) == majority(ANSWERS)
    assert top_k_vote(ANSWERS, SCORES, 100) == majority(ANSWERS)  # k beyond N keeps all


def test_ties_go_to_the_first_sample():
    assert best_of_n([0.5, 0.7, 0.7]) == 1
    assert majority(["2", "1", "1", "2"]) == 0
    assert weighted_vote(["2", "1", "1"], [0.5, 0.25, 0.25]) == 0
    assert top_k_vote(["1", "2", "3"], [0.5, 0.5, 0.5], 2) == 0  # keeps the first two, then "1" comes first


def test_unparsed_answers_do_not_vote_but_can_be_best():
    answers = [None, "4", " ", "4"]
    scores = [0.99, 0.2, 0.98, 0.3]
    assert majority(answers) == 1 and weighted_vote(answers, scores) == 1
    assert best_of_n(scores) == 0  # the verifier liked a completion with no answer: a wrong pick
    assert top_k_vote(answers, scores, 2) is None  # the two best have no answer
    assert majority([None, None]) is None and weighted_vote([None], [0.5]) is None and best_of_n([]) is None


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="probabilities in \\[0, 1\\]"):
        weighted_vote(["1", "2"], [0.5, 1.5])
    with pytest.raises(ValueError, match="probabilities"):
        weighted_vote(["1", "2"], [-0.1, 0.5])
    with pytest.raises(ValueError, match="finite"):
        best_of_n([0.1, math.nan])
    with pytest.raises(ValueError, match="2 scores for 3 samples"):
        top_k_vote(["1", "2", "3"], [0.1, 0.2], 1)
    with pytest.raises(ValueError, match="k >= 1"):
        top_k_vote(["1"], [0.1], 0)
    assert best_of_n([-3.0, 2.5]) == 1  # best-of-N takes any scale (a reward model's logits)


def test_pass_at_1_is_the_share_correct():
    assert pass_at_1([True, False, True, True]) == 0.75
    with pytest.raises(ValueError):
        pass_at_1([])


def test_selector_names_and_validation():
    assert [s.name for s in (Selector("majority"), Selector("best", "prm"), Selector("weighted", "orm"),
                             Selector("top", "orm", k=5))] == ["majority", "prm", "weighted:orm", "top5:orm"]
    for bad in (lambda: Selector("vote"), lambda: Selector("best"), lambda: Selector("majority", "orm"),
                lambda: Selector("top", "orm"), lambda: Selector("best", "orm", k=2)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError, match="needs scores from verifier 'orm'"):
        Selector("best", "orm").choose(["1"], {"prm": [0.5]})


def random_problems(seed: int, count: int, n: int) -> list[Problem]:
    """Problems whose right answer "0" is one of 4 answers; an ORM-like score that tends to be higher
    on correct samples, and an oracle score that is 1 exactly on correct ones."""
    import random

    rng = random.Random(seed)
    problems = []
    for _ in range(count):
        p_right = rng.random()
        answers = [("0" if rng.random() < p_right else str(rng.randint(1, 3))) if rng.random() > 0.1 else None
                   for _ in range(n)]
        correct = [a == "0" for a in answers]
        orm = [min(1.0, max(0.0, rng.gauss(0.65 if c else 0.4, 0.2))) for c in correct]
        problems.append(Problem(answers, correct, {"orm": orm, "oracle": [float(c) for c in correct]}))
    return problems


SELECTORS = [Selector("majority"), Selector("best", "orm"), Selector("weighted", "orm"), Selector("top", "orm", k=3),
             Selector("best", "oracle")]


def test_sweep_is_exact_at_n_max_and_pass_at_1_is_mean_correctness():
    n = 8
    problems = random_problems(0, 30, n)
    table = sweep(problems, SELECTORS, trials=20, seed=1)
    assert list(table) == ["pass@1", "majority", "orm", "weighted:orm", "top3:orm", "oracle", "pass@N"]
    assert all(list(row) == sweep_sizes(n) == [1, 2, 4, 8] for row in table.values())
    # N = N_max: each selector on all samples, once
    for selector in SELECTORS:
        expected = 0
        for p in problems:
            chosen = selector.choose(p.answers, p.scores)
            expected += chosen is not None and p.correct[chosen]
        assert table[selector.name][n] == pytest.approx(expected / len(problems), abs=1e-12)
    mean_correct = sum(sum(p.correct) / n for p in problems) / len(problems)
    assert all(value == pytest.approx(mean_correct, abs=1e-12) for value in table["pass@1"].values())
    # N = 1: every single sample is tried (8 <= trials), and each selector takes that sample
    assert table["orm"][1] == table["oracle"][1] == pytest.approx(mean_correct, abs=1e-12)
    for size in (1, 2, 4, 8):
        assert table["pass@N"][size] == pytest.approx(
            sum(pass_at_k(n, sum(p.correct), size) for p in problems) / len(problems), abs=1e-12)


def test_sweep_enumerates_all_subsets_when_few():
    problems = random_problems(3, 5, 5)
    table = sweep(problems, [Selector("majority")], trials=1000)
    for size in (2, 4):
        expected = 0.0
        for p in problems:
            subsets = list(combinations(range(5), size))
            hits = 0
            for subset in subsets:
                chosen = majority([p.answers[i] for i in subset])
                hits += chosen is not None and p.correct[subset[chosen]]
            expected += hits / len(subsets)
        assert table["majority"][size] == pytest.approx(expected / len(problems), abs=1e-12)


def test_a_perfect_verifier_reaches_pass_at_n_and_beats_majority():
    # The right answer is in the minority: majority voting gets worse with N, a perfect verifier better.
    problem = Problem(["1", "2", "2", "3", "2", "1"], [True, False, False, False, False, True],
                      {"oracle": [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]})
    table = sweep([problem], [Selector("majority"), Selector("best", "oracle")])  # all subsets: exact
    for size in (1, 2, 4, 6):
        assert table["oracle"][size] == pytest.approx(table["pass@N"][size], abs=1e-12)
        assert table["oracle"][size] >= table["majority"][size]
    assert table["majority"][6] == 0.0 and table["oracle"][6] == 1.0

    # With sampled subsets (C(16, 8) > trials) the estimate is close to the exact pass@N.
    problems = random_problems(5, 40, 16)
    table = sweep(problems, SELECTORS, trials=200, seed=0)
    for size in sweep_sizes(16):
        assert table["oracle"][size] == pytest.approx(table["pass@N"][size], abs=0.03)
        assert table["oracle"][size] >= table["majority"][size]
    assert table["oracle"][16] == table["pass@N"][16]


def test_sweep_is_seeded():
    problems = random_problems(1, 10, 16)
    assert sweep(problems, SELECTORS, seed=4) == sweep(problems, SELECTORS, seed=4)


def test_sweep_refuses_bad_input():
    with pytest.raises(ValueError, match="same number of samples"):
        sweep([Problem(["1"], [True]), Problem(["1", "2"], [True, False])], [Selector("majority")])
    with pytest.raises(ValueError, match="2 scores for 3 samples"):
        Problem(["1", "2", "3"], [True, False, False], {"orm": [0.1, 0.2]})
    with pytest.raises(ValueError, match="distinct"):
        sweep([Problem(["1"], [True])], [Selector("majority"), Selector("majority")])
    with pytest.raises(ValueError, match="sizes"):
        sweep([Problem(["1"], [True])], [Selector("majority")], sizes=[2])


def test_sweep_markdown_has_a_row_per_selector_and_a_column_per_n():
    table = sweep(random_problems(2, 4, 4), SELECTORS[:2])
    lines = sweep_markdown(table).splitlines()
    assert lines[0] == "| selector | N=1 | N=2 | N=4 |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| pass@1", "| majority", "| orm", "| pass@N"]


def test_plot_is_valid_svg(tmp_path):
    table = sweep(random_problems(2, 6, 8), SELECTORS)
    table["a <b> & c"] = {1: 0.5, 8: 0.25}  # names are escaped
    path = tmp_path / "sweep.svg"
    plot_sweep(table, path)
    root = ET.parse(path).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    ns = {"svg": "http://www.w3.org/2000/svg"}
    lines = [g for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("id", "").startswith("sweep/")]
    assert len(lines) == len(table)  # one line per selector, a marker (<use>) per N
    assert [len(g.findall(".//svg:use", ns)) for g in lines] == [len(row) for row in table.values()]
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "accuracy" in texts and "samples per problem, N (log scale)" in texts
    assert set(table) <= set(texts) and {"1", "2", "4", "8"} <= set(texts)
    # a single N (one sample per problem) still draws
    plot_sweep({"pass@1": {1: 0.3}, "majority": {1: 0.3}}, tmp_path / "one.svg")
    ET.parse(tmp_path / "one.svg")


def test_parse_select():
    specs = parse_select("majority,orm:runs/orm/final, prm:runs/prm/final,weighted:runs/orm/final,top3:runs/orm/final,"
                         "majority")
    assert [(s.method, s.path, s.kind, s.k) for s in specs] == [
        ("majority", None, None, 0), ("best", "runs/orm/final", "orm", 0), ("best", "runs/prm/final", "prm", 0),
        ("weighted", "runs/orm/final", None, 0), ("top", "runs/orm/final", None, 3)]
    for text, fragment in [("vote", "unknown selector 'vote'"), ("orm", "orm needs a verifier directory: orm:DIR"),
                           ("top3:", "top3 needs a verifier directory"), ("majority:x", "majority takes no verifier"),
                           ("top0:x", "k >= 1"), (" , ", "no selector"), ("best:x", "topK:DIR")]:
        with pytest.raises(IncentivizeError, match=fragment):
            parse_select(text)


def test_build_selectors_names_verifiers_and_checks_kinds():
    specs = parse_select("majority,orm:a,orm:b,top3:a,weighted:c")
    selectors, names = build_selectors(specs, {"a": "orm", "b": "orm", "c": "prm"})
    assert names == {"a": "orm:a", "b": "orm:b", "c": "prm"}
    assert [s.name for s in selectors] == ["majority", "orm:a", "orm:b", "top3:orm:a", "weighted:prm"]
    with pytest.raises(IncentivizeError, match="a holds a prm verifier, not an orm; write prm:a"):
        build_selectors(parse_select("orm:a"), {"a": "prm"})
    with pytest.raises(IncentivizeError, match="weighted voting needs probabilities"):
        build_selectors(parse_select("weighted:r"), {"r": "rm"})
    selectors, _ = build_selectors(parse_select("rm:r,top2:r"), {"r": "rm"})  # any scale is fine for these
    assert [s.name for s in selectors] == ["rm", "top2:rm"]


class LengthVerifier:
    """A stand-in verifier: longer completions score higher, as a probability."""

    kind = "orm"

    def __init__(self):
        self.scored: list[str] = []

    def score(self, prompts, completions, *, questions):
        assert len(prompts) == len(completions) == len(questions) and all(isinstance(p, str) and p for p in prompts)
        assert all(q and q in p for q, p in zip(questions, prompts))  # the problems' own text
        self.scored += completions
        return [min(1.0, len(c) / 100) for c in completions]


def test_evaluate_scores_each_sample_once_and_reports_selection(tiny, tmp_path):
    import json

    from incentivize.eval.runner import EvalSettings, evaluate
    from incentivize.tasks import load_task

    model, tokenizer = tiny
    task = load_task("arithmetic")
    examples = task.examples("test", 3)
    verifier = LengthVerifier()
    settings = EvalSettings(samples=4, max_new_tokens=8, batch_size=5)
    report = evaluate(model, tokenizer, task, examples, settings, verifiers={"orm": verifier},
                      selectors=[Selector("best", "orm"), Selector("top", "orm", k=2)])
    sampled = [r for r in report.records if r.mode == "sample"]
    assert verifier.scored == [r.completion for r in sampled]  # every sampled completion, once
    assert all(r.scores == {"orm": min(1.0, len(r.completion) / 100)} for r in sampled)
    assert all(not r.scores for r in report.records if r.mode == "greedy")
    assert list(report.sweep) == ["pass@1", "majority", "orm", "top2:orm", "pass@N"]  # majority always
    assert report.metrics["select/majority"] == report.metrics["maj@4"]
    from incentivize.eval.metrics import auroc
    assert report.metrics["auroc/orm"] == auroc([r.scores["orm"] for r in sampled], [r.correct for r in sampled])
    assert report.metrics["select/orm"] == report.sweep["orm"][4]
    assert report.sweep["pass@1"][1] == pytest.approx(report.metrics["pass@1"])

    report.write(tmp_path, {"seed": 0})
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["sweep"]["top2:orm"]["4"] == report.metrics["select/top2:orm"]
    assert json.loads((tmp_path / "sweep.json").read_text())["accuracy"] == results["sweep"]
    ET.parse(tmp_path / "sweep.svg")
    row = json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[-1])
    assert set(row["scores"]) == {"orm"}

    with pytest.raises(ValueError, match="samples >= 1"):
        evaluate(model, tokenizer, task, examples, EvalSettings(samples=0), selectors=[Selector("majority")])
    with pytest.raises(ValueError, match="not given"):
        evaluate(model, tokenizer, task, examples, settings, selectors=[Selector("best", "prm")])


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--samples", "0", "--select", "majority"], "--select chooses among sampled completions: give --samples N"),
        (["--select", "vote"], "--select: unknown selector 'vote'"),
        (["--select", "orm"], "orm needs a verifier directory: orm:DIR"),
        (["--select", "majority,orm:{tmp}/missing"], "missing does not exist: give the directory written by"),
        (["--select", "top3:{tmp}"], "has no incentivize_verifier.json"),
    ],
)
def test_eval_select_errors_are_one_line_before_any_model_loads(args, fragment, tmp_path, monkeypatch, capsys):
    from incentivize import cli

    argv = ["incentivize", "eval", "--model", "no-such-model", "--limit", "2", *(a.format(tmp=tmp_path) for a in args)]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and fragment in " ".join(err.split()), err
    assert "no-such-model" not in err  # refused before loading the model


def test_eval_select_end_to_end_with_a_trained_orm(tmp_path):
    import json
    import os
    import subprocess
    import sys

    def cli(*args):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-m", "incentivize.cli", *map(str, args)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, env=env)

    trained = cli("train", "orm", "--model", "tiny-random", "--output-dir", "orm", "--set", "num_problems=4",
                  "--set", "samples_per_problem=2", "--set", "max_completion_length=8")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    out = tmp_path / "eval"
    result = cli("eval", "--model", "tiny-random", "--samples", 4, "--limit", 3, "--max-new-tokens", 8,
                 "--select", "majority,orm:orm/final,top2:orm/final,weighted:orm/final", "--output", out)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((out / "results.json").read_text())
    for name in ("majority", "orm", "top2:orm", "weighted:orm"):
        assert 0.0 <= results["metrics"][f"select/{name}"] <= 1.0
        assert results["metrics"][f"select/{name}"] == results["sweep"][name]["4"]
    assert results["settings"]["select"] == "majority,orm:orm/final,top2:orm/final,weighted:orm/final"
    sweep_file = json.loads((out / "sweep.json").read_text())
    assert list(sweep_file["accuracy"]) == ["pass@1", "majority", "orm", "top2:orm", "weighted:orm", "pass@N"]
    ET.parse(out / "sweep.svg")
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["scores"]["orm"] <= 1.0 for r in rows if r["mode"] == "sample")
    assert "| selector | N=1 | N=2 | N=4 |" in result.stdout and "| weighted:orm |" in result.stdout
