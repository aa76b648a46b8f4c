"""Experiment trackers: what a run logs comes back from each backend's own files.

TensorBoard is a dependency and always tested. wandb (offline), mlflow (a local file store) and trackio
(a local directory) are optional: their tests run only where the package is installed.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from incentivize.errors import IncentivizeError
from incentivize.trackers import REPORT_TO, ReportToList, open_trackers, render_samples, report_to_names

CONFIG = {"learning_rate": 1e-6, "num_generations": 4, "model": {"name": "tiny-random", "path": Path("/m")}}
STEPS: list[dict[str, float | None]] = [
    {"loss": 0.5, "reward_mean": 0.25, "reward/length": -0.1, "time/generate": 1.5, "kl": None},
    {"loss": 0.25, "reward_mean": 0.5, "reward/length": None, "time/generate": 1.25, "kl": 0.01},
    {"loss": 0.125, "reward_mean": 0.75, "reward/length": -0.2, "time/generate": 1, "kl": float("nan")},
]
SAMPLES = [
    {"reward": 1.0, "correct": True, "gold": "42", "extracted": "42", "completion": "6*7 = 42\nThe answer is 42."},
    {"reward": 0.0, "correct": False, "gold": "7", "extracted": "8", "completion": "It is 8."},
]


def _expected(steps: list[dict[str, float | None]], first: int = 1) -> dict[str, dict[int, float]]:
    """name -> step -> value, without the None and NaN values."""
    out: dict[str, dict[int, float]] = {}
    for step, metrics in enumerate(steps, first):
        for name, value in metrics.items():
            if value is not None and not math.isnan(value):
                out.setdefault(name, {})[step] = float(value)
    return out


def _tensorboard(run_dir: Path) -> tuple[dict[str, dict[int, float]], dict[str, list[tuple[int, str]]]]:
    """Scalars (tag -> step -> value) and texts (tag -> [(step, text)]) as TensorBoard reads `run_dir`."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(run_dir), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    scalars = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    texts = {tag.removesuffix("/text_summary"): [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
             for tag in acc.Tags()["tensors"]}
    return scalars, texts


def test_tensorboard_gets_every_metric_the_config_and_samples(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "grpo-1"
    trackers = open_trackers(["tensorboard"], run_dir, CONFIG, run_name="grpo-1")
    for step, metrics in enumerate(STEPS, 1):
        trackers.log_metrics(metrics, step)
        if step == 1:
            scalars, _ = _tensorboard(run_dir)  # flushed: a live tensorboard sees the step before close
            assert scalars["loss"] == {1: 0.5}
    trackers.log_samples(3, SAMPLES)
    trackers.close()

    assert [p.name for p in run_dir.iterdir() if p.name.startswith("events.out.tfevents")]  # in the run dir itself
    scalars, texts = _tensorboard(run_dir)
    expected = _expected(STEPS)
    assert set(scalars) == set(expected) == {"loss", "reward_mean", "reward/length", "time/generate", "kl"}
    for name, values in expected.items():
        assert scalars[name] == pytest.approx(values), name
    assert sorted(scalars["kl"]) == [2] and sorted(scalars["reward/length"]) == [1, 3]  # None and NaN skipped

    [(step, config)] = texts["config"]
    assert step == 0 and "learning_rate: 1.0e-06" in config and "name: tiny-random" in config and "/m" in config
    [(step, samples)] = texts["samples"]
    assert step == 3
    for sample in SAMPLES:
        assert f"gold `{sample['gold']}`" in samples and f"extracted `{sample['extracted']}`" in samples
    assert "    The answer is 42." in samples and "reward 1.000 | correct yes" in samples


def test_tensorboard_resume_drops_the_steps_logged_again(tmp_path: Path) -> None:
    with open_trackers("tensorboard", tmp_path, CONFIG, run_name="r") as trackers:
        for step in range(1, 5):
            trackers.log_metrics({"loss": float(step)}, step)
    with open_trackers("tensorboard", tmp_path, CONFIG, run_name="r", resume_step=3) as trackers:
        for step in (3, 4, 5):
            trackers.log_metrics({"loss": 100.0 + step}, step)

    scalars, texts = _tensorboard(tmp_path)
    assert scalars["loss"] == {1: 1.0, 2: 2.0, 3: 103.0, 4: 104.0, 5: 105.0}
    assert len(texts["config"]) == 1  # logged when the run started, not again on resume


def test_report_to_names() -> None:
    assert REPORT_TO == ("tensorboard", "wandb", "mlflow", "trackio", "none")
    assert report_to_names("tensorboard") == ["tensorboard"]
    assert report_to_names(["tensorboard", "wandb", "tensorboard"]) == ["tensorboard", "wandb"]
    assert report_to_names("mlflow, trackio") == ["mlflow", "trackio"]
    assert report_to_names("none") == report_to_names(["none"]) == report_to_names([]) == []

    class Config(BaseModel):
        report_to: ReportToList = ["tensorboard"]

    assert Config().report_to == ["tensorboard"]
    assert Config.model_validate({"report_to": "wandb"}).report_to == ["wandb"]
    assert Config(report_to=["tensorboard", "mlflow"]).report_to == ["tensorboard", "mlflow"]
    assert Config.model_validate({"report_to": "none"}).report_to == []
    with pytest.raises(ValidationError, match="unknown tracker 'wanb'; did you mean 'wandb'"):
        Config.model_validate({"report_to": ["wanb"]})


def test_none_logs_nothing(tmp_path: Path) -> None:
    trackers = open_trackers("none", tmp_path, CONFIG, run_name="r")
    assert trackers.trackers == []
    trackers.log_metrics({"loss": 1.0}, 1)
    trackers.log_samples(1, SAMPLES)
    trackers.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("report_to", "message"), [
    (["tensorbord"], "report_to: unknown tracker 'tensorbord'; did you mean 'tensorboard'?"),
    ("mlflo", "report_to: unknown tracker 'mlflo'; did you mean 'mlflow'?"),
    (["comet"], "report_to: unknown tracker 'comet' (choices: tensorboard, wandb, mlflow, trackio, none)"),
    (["none", "wandb"], "report_to: 'none' cannot be combined with other trackers (got none, wandb)"),
])
def test_bad_names(tmp_path: Path, report_to: list[str] | str, message: str) -> None:
    with pytest.raises(IncentivizeError) as err:
        open_trackers(report_to, tmp_path, CONFIG, run_name="r")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("package", ["wandb", "mlflow", "trackio"])
def test_a_missing_package_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now raises ImportError
    with pytest.raises(IncentivizeError) as err:
        open_trackers(["tensorboard", package], tmp_path, CONFIG, run_name="r")
    assert str(err.value) == (f"report_to: {package} needs the {package} package: pip install {package} "
                              f"(or drop it from report_to)")


def test_samples_are_few_and_mix_right_and_wrong() -> None:
    samples = [{"reward": 1.0, "correct": True, "gold": "1", "completion": f"right {i}"} for i in range(5)]
    samples += [{"reward": -1, "correct": False, "gold": "1", "extracted": None, "completion": "x" * 5000}]
    text = render_samples(samples)
    assert text.count("**") == 8 and "**5.**" not in text  # four samples
    assert text.index("correct no") < text.index("right 0") < text.index("right 1")
    assert "right 3" not in text and "extracted" not in text and "x" * 2000 + " [...]" in text


# wandb, offline: no network here


def _wandb_records(path: Path) -> list:
    """The records of a finished run's `.wandb` file; wandb's service may still be writing it for a moment."""
    from google.protobuf.message import DecodeError

    for _ in range(100):
        try:
            records = _read_wandb_records(path)
        except DecodeError:  # a record half written
            records = []
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            return records
        time.sleep(0.1)
    raise AssertionError(f"{path} has no exit record")


def _read_wandb_records(path: Path) -> list:
    """The records of a `.wandb` file: a header, then 32 KiB blocks of (crc, length, type) chunks."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, chunks, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room left in this block for a chunk header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
            record.ParseFromString(chunks)
            records.append(record)
            chunks = b""
    return records


def _history(records: list) -> list[dict]:
    """The rows logged, one a step, as {name: value}."""
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in records if record.WhichOneof("record_type") == "history"]


def test_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "cfg",
                        "WANDB_CACHE_DIR": tmp_path / "cache", "WANDB_DATA_DIR": tmp_path / "data"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    run_dir = tmp_path / "run"
    with open_trackers(["wandb"], run_dir, CONFIG, run_name="grpo-1") as trackers:
        for step, metrics in enumerate(STEPS, 1):
            trackers.log_metrics(metrics, step)
        trackers.log_samples(3, SAMPLES)
    with open_trackers(["wandb"], run_dir, CONFIG, run_name="grpo-1", resume_step=4) as trackers:
        trackers.log_metrics({"loss": 9.0}, 4)

    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]
    first, second = sorted(run_dir.glob(f"wandb/offline-run-*-{run_id}*/run-{run_id}.wandb"))  # resumed: same id
    records = _wandb_records(first)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.project == "incentivize" and run.display_name == "grpo-1"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["learning_rate"] == 1e-6 and config["model"]["name"] == "tiny-random"
    rows = _history(records)
    logged: dict[str, dict[int, float]] = {}
    for row in rows:
        for name, value in row.items():
            if name.split("/")[0] not in ("config", "samples") and not name.startswith("_"):
                logged.setdefault(name, {})[row["_step"]] = value
    assert logged == _expected(STEPS)
    assert [row["_step"] for row in rows if "config/_type" in row] == [0]
    assert [row["_step"] for row in rows if "samples/_type" in row] == [3]
    html = next(first.parent.glob("files/media/html/samples_3_*.html")).read_text()
    assert "gold `42`" in html and "The answer is 42." in html
    assert [(row["_step"], row["loss"]) for row in _history(_wandb_records(second))] == [(4, 9.0)]


# mlflow, a file store under tmp_path


def test_mlflow_file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 wants a database, which needs sqlalchemy
    for name in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    run_dir = tmp_path / "run"
    with open_trackers(["mlflow"], run_dir, CONFIG, run_name="grpo-1") as trackers:
        for step, metrics in enumerate(STEPS, 1):
            trackers.log_metrics({**metrics, "odd:name?": 1.0}, step)
        trackers.log_samples(3, SAMPLES)
    with open_trackers(["mlflow"], run_dir, CONFIG, run_name="grpo-1", resume_step=4) as trackers:
        trackers.log_metrics({"loss": 9.0}, 4)

    client = MlflowClient(tracking_uri=uri)
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    run = client.get_run(run_id)
    assert run.info.run_name == "grpo-1" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "incentivize"
    assert run.data.params["learning_rate"] == "1e-06" and run.data.params["model.name"] == "tiny-random"
    expected = _expected(STEPS + [{"loss": 9.0}]) | {"odd_name_": {1: 1.0, 2: 1.0, 3: 1.0}}
    assert set(run.data.metrics) == set(expected)
    for name, values in expected.items():
        assert {m.step: m.value for m in client.get_metric_history(run_id, name)} == pytest.approx(values), name
    files = {f.path for f in client.list_artifacts(run_id, "config")} | {
        f.path for f in client.list_artifacts(run_id, "samples")}
    assert files == {"config/step-000000.md", "samples/step-000003.md"}
    samples = Path(client.download_artifacts(run_id, "samples/step-000003.md", str(tmp_path))).read_text()
    assert "gold `42`" in samples and "The answer is 42." in samples


# trackio, a local directory


TRACKIO_SCRIPT = """
import json, sys
from pathlib import Path
from trackio.sqlite_storage import SQLiteStorage
from incentivize.trackers import open_trackers

steps, samples, config, run_dir, out = json.loads(sys.argv[1])
with open_trackers(["trackio"], Path(run_dir), config, run_name="grpo-1") as trackers:
    for step, metrics in enumerate(steps, 1):
        trackers.log_metrics(metrics, step)
    trackers.log_samples(3, samples)
Path(out).write_text(json.dumps({"logs": SQLiteStorage.get_logs("incentivize", "grpo-1"),
                                 "config": SQLiteStorage.get_run_config("incentivize", "grpo-1")}, default=str))
"""


def test_trackio_local(tmp_path: Path) -> None:
    # trackio reads TRACKIO_DIR when it is imported: a process of its own points it at tmp_path
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio")}
    env.pop("TRACKIO_PROJECT", None)
    out = tmp_path / "logged.json"
    inputs = json.dumps([STEPS, SAMPLES, CONFIG, str(tmp_path / "run"), str(out)], default=str)  # NaN stays NaN
    done = subprocess.run([sys.executable, "-c", TRACKIO_SCRIPT, inputs], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    logged: dict[str, dict[int, float]] = {}
    for row in result["logs"]:
        for name, value in row.items():
            if name in _expected(STEPS):
                logged.setdefault(name, {})[row["step"]] = value
    assert logged == _expected(STEPS)
    [samples] = [(row["step"], row["samples"]["_value"]) for row in result["logs"] if "samples" in row]
    assert samples[0] == 3 and "gold `42`" in samples[1] and "The answer is 42." in samples[1]
    assert result["config"]["learning_rate"] == 1e-6
