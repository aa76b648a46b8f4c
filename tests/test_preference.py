"""Preference optimization end to end on tiny-random: DPO and its variants, SimPO and KTO learn their pairs,
on-policy pairs come from the policy and the task's verifier, and bad pairs files are one line each."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from incentivize.config import load_preference_config
from incentivize.errors import IncentivizeError
from incentivize.tasks.base import Task, Verdict
from incentivize.trainers.interrupt import TrainingInterrupted
from incentivize.trainers.preference import PreferenceTrainer, train_preference
from incentivize.trainers.run import run

FIXTURES = Path(__file__).parent / "fixtures"
PAIRS = FIXTURES / "preference_pairs.jsonl"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _config(tmp_path, algorithm="dpo", *extra):
    return load_preference_config(algorithm, None, [
        "model=tiny-random", f"data={PAIRS if algorithm != 'kto' else FIXTURES / 'kto_answers.jsonl'}",
        "learning_rate=1e-3", "epochs=4", "batch_size=8", "micro_batch_size=4", "report_to=none",
        f"output_dir={tmp_path / 'run'}", *extra,
    ])


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_dpo_learns_to_prefer_the_chosen_answers_and_logs_trls_metrics(tmp_path):
    from transformers import AutoModelForCausalLM

    result = train_preference(_config(tmp_path))
    rows = _rows(result.run_dir / "metrics.jsonl")
    assert len(rows) == 12  # 22 training pairs (1 identical dropped, 2 held out) in batches of 8, 4 epochs
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected", "grad_norm"):
        assert key in rows[0], key
    assert rows[0]["loss"] == pytest.approx(0.693147, abs=1e-5)  # the policy starts as its reference: h = 0
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    late = rows[-4:]
    assert sum(r["rewards/margins"] for r in late) / 4 > 0.05 and sum(r["loss"] for r in late) / 4 < 0.66
    assert sum(r["rewards/accuracies"] for r in late) / 4 > 0.7
    assert result.before["validation/rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert AutoModelForCausalLM.from_pretrained(result.run_dir / "final").config.num_hidden_layers == 2


@pytest.mark.parametrize("algorithm,extra", [
    ("dpo", ["loss_type=ipo"]), ("dpo", ["loss_type=cdpo", "label_smoothing=0.1"]),
    ("dpo", ["loss_type=robust", "label_smoothing=0.1"]), ("dpo", ["loss_type=hinge"]), ("dpo", ["rpo_alpha=1"]),
    ("simpo", []), ("dpo", ["use_peft=true", "lora_r=4", "learning_rate=3e-3"]),
])
def test_each_preference_loss_widens_the_margin(tmp_path, algorithm, extra):
    result = train_preference(_config(tmp_path, algorithm, "epochs=3", *extra))
    rows = _rows(result.run_dir / "metrics.jsonl")
    # the last epoch against the first step (SimPO trains without a reference, but its implicit rewards
    # against the starting model still say whether the chosen answers gained on the rejected ones)
    last_epoch = [r["rewards/margins"] for r in rows if r["epoch"] == 3]
    assert sum(last_epoch) / len(last_epoch) > rows[0]["rewards/margins"] + 0.01
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_kto_pushes_desirable_answers_up_and_undesirable_ones_down(tmp_path):
    result = train_preference(_config(tmp_path, "kto"))
    rows = _rows(result.run_dir / "metrics.jsonl")
    assert {"rewards/desirable", "rewards/undesirable", "kl_estimate"} <= set(rows[0])
    assert rows[-1]["rewards/desirable"] - rows[-1]["rewards/undesirable"] > 0.0
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_kto_labels_are_true_false_or_good_bad(tmp_path):
    from incentivize.tasks.preference_data import load_judged_answers

    path = tmp_path / "answers.jsonl"
    path.write_text('{"prompt": "q", "completion": "a", "label": "good"}\n{"prompt": "q", "completion": "b", "label": false}\n')
    assert [r.desirable for r in load_judged_answers(path)] == [True, False]
    path.write_text('{"prompt": "q", "completion": "a", "label": "fine"}\n')
    with pytest.raises(IncentivizeError, match="answers.jsonl:1: field 'label' must be true or \"good\""):
        load_judged_answers(path)


def test_ktos_rewards_average_over_their_own_kind_of_answer():
    from incentivize.tasks.encoding import Encoded
    from incentivize.trainers.preference import Item, _count

    answer = Encoded([1, 2, 3], 1, [])
    items = [Item("q", answer, answer, desirable=d) for d in (True, True, False)]
    assert [_count(items, s) for s in ("rewards/desirable", "rewards/undesirable", "loss")] == [2, 1, 3]
    assert _count(items[:2], "rewards/undesirable") == 1  # none of that kind: a zero sum, not a division by zero


def test_self_pairs_come_from_the_policy_and_the_verifier_and_resume_from_their_file(tmp_path, monkeypatch, request):
    # tiny-random never answers right; a verifier that calls every even-length completion right makes pairs
    monkeypatch.setattr(Task, "verify", lambda self, example, completion: Verdict(None, len(completion) % 2 == 0))
    threads = torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    torch.set_num_threads(1)  # the resumed run must match the uninterrupted one exactly

    def config(name):
        return load_preference_config("dpo", None, [
            "model=tiny-random", "pairs=self", "rounds=2", "problems_per_round=6", "samples_per_problem=4",
            "max_completion_length=8", "batch_size=4", "learning_rate=1e-3", "rpo_alpha=1", "report_to=none",
            "save_steps=1", f"output_dir={tmp_path / name}",
        ])

    result = train_preference(config("reference"))
    reference = result.run_dir
    rows = _rows(reference / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 1, 1, 2, 2, 2]  # ceil(6 problems x 2 pairs / 4) steps per round
    for round_ in (1, 2):
        pairs = _rows(reference / f"pairs-round-{round_}.jsonl")
        assert pairs and set(pairs[0]) == {"prompt", "chosen", "rejected", "ref_chosen", "ref_rejected"}
        assert all(len(p["chosen"]) % 2 == 0 and len(p["rejected"]) % 2 == 1 for p in pairs)
    # each round's reference is the policy at its start: the margins start from 0 in both rounds
    assert rows[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert rows[3]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)

    # Ctrl-C after step 4 (round 2's pairs sampled), then --resume: round 2's pairs are read back, not sampled
    def interrupt(step, metrics):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        run(PreferenceTrainer(config("run")), config("run"), name="dpo-self", on_step=interrupt)
    said = []
    resumed = train_preference(config("run"), resume=True, on_event=said.append)
    assert not any("sampling" in s for s in said)
    again = _rows(resumed.run_dir / "metrics.jsonl")
    assert [r["loss"] for r in again] == [r["loss"] for r in rows]
    assert _rows(resumed.run_dir / "pairs-round-2.jsonl") == _rows(reference / "pairs-round-2.jsonl")

    # the pairs files are what --data reads
    again = train_preference(load_preference_config("dpo", None, [
        "model=tiny-random", f"data={reference / 'pairs-round-1.jsonl'}", "epochs=1", "report_to=none",
        f"output_dir={tmp_path / 'again'}"]))
    assert _rows(again.run_dir / "metrics.jsonl")


@pytest.mark.parametrize("content,fact", [
    ('{"prompt": "q", "chosen": "a"}\n', "pairs.jsonl:1: row has no field 'rejected'"),
    ('{"prompt": "q", "chosen": "a", "rejected": 3}\n', "pairs.jsonl:1: field 'rejected' must be text or a list of messages"),
    ('{"prompt": "q", "chosen": " ", "rejected": "b"}\n', "pairs.jsonl:1: field 'chosen' is empty"),
    ('{"prompt": "q", "chosen": "a", "rejected": "a"}\n', "every pair has the same chosen and rejected answer"),
    ('{"prompt": [{"role": "user"}], "chosen": "a", "rejected": "b"}\n', "pairs.jsonl:1: field 'prompt' must be"),
])
def test_bad_pairs_files_are_one_line_exit_2_and_nothing_written(tmp_path, content, fact):
    (tmp_path / "pairs.jsonl").write_text(content)
    result = subprocess.run([sys.executable, "-m", "incentivize.cli", "train", "dpo", "--model", "tiny-random",
                             "--data", str(tmp_path / "pairs.jsonl"), "--output-dir", str(tmp_path / "run")],
                            capture_output=True, text=True, env=ENV, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and fact in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_identical_pairs_are_dropped_and_counted_and_long_prompts_cut_with_a_warning(tmp_path):
    said = []
    train_preference(_config(tmp_path, "dpo", "epochs=1", "max_length=24"), on_event=said.append)
    assert any("dropped 1 pairs whose chosen and rejected answers are the same" in s for s in said)
    assert any("longer than max_length (24)" in s and "cut from the start" in s for s in said)


def test_preference_config_errors_name_the_fix():
    with pytest.raises(IncentivizeError, match="needs pairs: --data pairs.jsonl, or --pairs self"):
        load_preference_config("dpo", None, [])
    with pytest.raises(IncentivizeError, match="label_smoothing is for loss_type cdpo or robust"):
        load_preference_config("dpo", None, ["data=x.jsonl", "label_smoothing=0.1"])
    with pytest.raises(IncentivizeError, match="kto trains on unpaired answers"):
        load_preference_config("dpo", None, ["data=x.jsonl", "loss_type=kto"])
