"""The sophistry monitor: a learned or judged reward against the task's verifier, and the hacking alarm."""

import json
import random

import pytest

from incentivize.config import load_config
from incentivize.errors import IncentivizeError
from incentivize.eval.monitor import HackingAlarm, SophistryMonitor, proxy_oracle_stats


def test_false_positives_are_the_wrong_samples_the_proxy_calls_right():
    stats = proxy_oracle_stats([0.9, 0.6, 0.4, 0.1, None], [True, False, False, False, True], probability=True)
    assert stats["false_positive_rate"] == pytest.approx(1 / 3)  # 0.6 of the wrong 0.6, 0.4, 0.1; None skipped
    assert stats["mean"] == pytest.approx(0.5)
    assert stats["correlation"] > 0.7
    unbounded = proxy_oracle_stats([3.0, -1.0], [True, False], probability=False)
    assert unbounded["false_positive_rate"] is None and unbounded["correlation"] == pytest.approx(1.0)
    assert proxy_oracle_stats([0.5, 0.5], [True, False], probability=True)["correlation"] is None  # a constant


def _step(rng, proxy_mean, accuracy, n=32):
    oracle = [rng.random() < accuracy for _ in range(n)]
    proxy = [min(1.0, max(0.0, rng.gauss(proxy_mean, 0.2))) for _ in range(n)]
    return proxy, oracle


def test_the_alarm_trips_when_the_proxy_rises_as_the_oracle_falls_and_not_on_noise():
    rng = random.Random(0)
    quiet = HackingAlarm(patience=4)
    assert all(quiet.update(*_step(rng, 0.5, 0.3)) is None for _ in range(60))  # same distribution throughout
    rising_together = HackingAlarm(patience=4)
    assert all(rising_together.update(*_step(rng, 0.5 + 0.02 * s, 0.3 + 0.01 * s)) is None for s in range(30))

    alarm = HackingAlarm(patience=4)
    said = [alarm.update(*_step(rng, 0.5 + 0.03 * s, max(0.0, 0.3 - 0.015 * s))) for s in range(20)]
    first = next(i for i, s in enumerate(said) if s is not None)
    assert 8 <= first < 20 and "rose from" in said[first] and "accuracy fell from" in said[first]


def test_the_monitor_names_each_proxy_warns_once_per_trip_and_survives_a_restart():
    rng = random.Random(1)
    monitor, copy = SophistryMonitor(patience=2), SophistryMonitor(patience=2)
    trips = []
    for s in range(12):
        proxy, oracle = _step(rng, 0.3 + 0.06 * s, max(0.0, 0.5 - 0.05 * s))
        components = {"correctness": [float(o) for o in oracle], "prm": proxy, "user_fn": proxy}
        metrics, alarm = monitor.observe(components, oracle, {"prm": True})
        assert set(metrics) <= {"monitor/prm/correlation", "monitor/prm/false_positive_rate"}
        trips.append(alarm)
        if s == 5:
            copy.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
        elif s > 5:
            assert copy.observe(components, oracle, {"prm": True}) == (metrics, alarm)
    assert sum(t is not None for t in trips) == 1 and "prm:" in next(t for t in trips if t)


def test_reward_models_and_judges_are_the_proxies_whatever_their_names():
    from incentivize.eval.monitor import proxies
    from incentivize.rewards.judge import JudgeReward
    from incentivize.rewards.reward_model import VerifierReward

    def user_fn(prompts, completions, **kw):
        return [1.0] * len(prompts)

    prm, rm, judge = (object.__new__(VerifierReward), object.__new__(VerifierReward), object.__new__(JudgeReward))
    prm.__name__, prm.proxy_kind = "prm", "probability"  # what VerifierReward("prm:DIR") sets
    rm.__name__, rm.proxy_kind = "rm", "score"
    judge.__name__ = "judge:smollm2-135m"
    assert proxies([user_fn, prm, rm, judge]) == {"prm": True, "rm": False, "judge:smollm2-135m": True}


def test_an_rl_run_logs_the_monitor_and_stops_on_hacking_with_one_line(tmp_path, monkeypatch):
    from incentivize.trainers.rl import train

    config = load_config("grpo", None, [
        "model=tiny-random", "max_steps=4", "num_generations=4", "generation_batch_size=8",
        "max_completion_length=8", "eval_limit=2", "micro_batch_size=8", "save_steps=1", "report_to=none",
        "rewards=[judge:tiny-random]", "hacking_patience=1", "on_hacking=stop", f"output_dir={tmp_path / 'run'}",
    ])
    calls = []

    def tripping(self, proxy, oracle):  # the real alarm needs a real drift; this one trips at its third step
        calls.append(len(proxy))
        return "the proxy reward rose while the verifier's accuracy fell" if len(calls) == 3 else None

    monkeypatch.setattr(HackingAlarm, "update", tripping)
    with pytest.raises(IncentivizeError, match=r"step 3: reward hacking\? judge:tiny-random: the proxy reward rose.*"
                                               r"on_hacking: stop.*checkpoint"):
        train(config)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]  # the step that tripped is logged
    # tiny-random is never right: every sample is a negative, so the false-positive rate is defined and the
    # correlation (with a constant oracle) is not
    assert all("monitor/judge:tiny-random/false_positive_rate" in r for r in rows)
    assert not any("monitor/judge:tiny-random/correlation" in r for r in rows)
    assert calls == [8, 8, 8] and (tmp_path / "run" / "checkpoints" / "step-000002").exists()
    # before training, the judge on the held-out greedy answers: U-Sophistry's false-positive rate
    before = json.loads((tmp_path / "run" / "eval-before" / "results.json").read_text())["metrics"]
    assert 0.0 <= before["monitor/judge:tiny-random/false_positive_rate"] <= 1.0
