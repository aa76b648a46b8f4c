"""Bad input everywhere a user types or points: one line naming the file, line or field and what to do,
exit status 2, no traceback, and nothing in an existing output directory written, changed or deleted.

The table runs `incentivize.cli.main` in this process (argv, stderr and exit status as a user sees them;
a Python process per case would cost two seconds of imports each); a few cases run the real command in
a subprocess too.
"""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from incentivize.cli import main

# A training run small enough for the cases that need one.
SMALL = ["max_steps=2", "generation_batch_size=4", "num_generations=2", "max_completion_length=4", "eval_limit=2",
         "eval_before=false", "save_steps=1", "save_total_limit=1"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny):
    """Every bad file and directory the cases point at, made once."""
    root = tmp_path_factory.mktemp("inputs")
    model, tokenizer = tiny
    good = root / "tiny"
    model.save_pretrained(good)
    tokenizer.save_pretrained(good)

    (root / "empty-dir").mkdir()
    (root / "notes.txt").write_text("not a model\n")
    (root / "broken-config").mkdir()
    (root / "broken-config" / "config.json").write_text('{"model_type": "llama",\n')
    (root / "no-model-type").mkdir()
    (root / "no-model-type" / "config.json").write_text('{"hidden_size": 8}\n')
    (root / "fake.gguf").write_text("not gguf\n")
    no_tokenizer = root / "no-tokenizer"
    shutil.copytree(good, no_tokenizer)
    for path in no_tokenizer.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            path.unlink()
    torn = root / "torn-weights"
    shutil.copytree(good, torn)
    (torn / "model.safetensors").write_bytes(b"\x00" * 64)
    no_template = root / "no-template"
    shutil.copytree(good, no_template)
    (no_template / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((no_template / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (no_template / "tokenizer_config.json").write_text(json.dumps(config))

    row = '{"prompt": "What is 2 + 2?", "answer": "4"}\n'
    (root / "empty.jsonl").write_text("")
    (root / "blank.jsonl").write_text("\n  \n")
    (root / "bad-json.jsonl").write_text(row + row + '{"prompt": "What is 1 + 1?", answer: 2}\n' + row)
    (root / "no-answer.jsonl").write_text(row + '{"prompt": "What is 1 + 1?", "label": 2}\n')
    (root / "not-object.jsonl").write_text(row + "[1, 2]\n")
    (root / "latin1.jsonl").write_bytes(row.encode() + '{"prompt": "caf\xe9", "answer": "1"}\n'.encode("latin-1"))

    (root / "typo.yaml").write_text("# my run\nbeta: 0.04\nlerning_rate: 1e-5\n")
    (root / "list-number.yaml").write_text("beta: 0.04\nmax_steps: [10, 20]\n")
    (root / "groups.yaml").write_text("generation_batch_size: 10\nnum_generations: 4\n")
    (root / "invalid.yaml").write_text("beta: 0.04\nmax_steps: [10\nseed: 1\n")
    (root / "sequence.yaml").write_text("- beta: 0.04\n- seed: 1\n")
    (root / "scalar.yaml").write_text("grpo\n")
    (root / "binary.yaml").write_bytes(b"beta: 0.04\nseed: \xff\xfe\n")
    (root / "other-algorithm.yaml").write_text("algorithm: ppo\n")
    return root


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, inputs):
    """A finished two-step run with checkpoints, trained through the CLI in a subprocess from the model
    without a chat template (so that its output also shows the warning)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    sets = [item for value in SMALL for item in ("--set", value)]
    result = _subprocess("train", "--model", inputs / "no-template", *sets, "--output-dir", run)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "no chat template" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:"), result.stderr
    return run


def _subprocess(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "incentivize.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def _snapshot(root: Path) -> dict[str, object]:
    """Every path under `root` with its content (small files) or size and modification time (large ones)."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        small = path.is_file() and stat.st_size < 100_000
        out[str(path.relative_to(root))] = path.read_bytes() if small else (path.is_dir(), stat.st_size, stat.st_mtime_ns)
    return out


def _resume_copy(finished_run, tmp_path, edit):
    run = tmp_path / "resume"
    shutil.copytree(finished_run, run)
    config = run / "config.yaml"
    if edit == "differs":
        config.write_text(config.read_text().replace("num_generations: 2", "num_generations: 4"))
    elif edit == "missing":
        config.unlink()
    elif edit == "corrupt":
        config.write_text(config.read_text()[:200] + "\n  bad: [unclosed\n")
    elif edit == "unknown-key":
        config.write_text(config.read_text() + "lerning_rate: 0.1\n")
    elif edit == "unfinished":
        shutil.rmtree(run / "final")
    return run


# (argv, facts the one error line must hold); {in} is the inputs directory, {out} an existing output
# directory with a file in it, {run} a copy of a finished run (see _resume_copy) made for the case.
TRAIN = ["train", "--model", "tiny-random", "--output-dir", "{out}"]
EVAL = ["eval", "--model", "tiny-random", "--limit", "2", "--samples", "0", "--output", "{out}"]
CASES = {
    # config keys, in --set and in YAML
    "set-unknown-key": ([*TRAIN, "--set", "lerning_rate=1e-5"],
                        ["--set lerning_rate=1e-5", "unknown config key 'lerning_rate'", "did you mean 'learning_rate'"]),
    "yaml-unknown-key": ([*TRAIN, "--config", "{in}/typo.yaml"],
                         ["typo.yaml:3", "unknown config key 'lerning_rate'", "did you mean 'learning_rate'"]),
    "set-not-key-value": ([*TRAIN, "--set", "beta"], ["--set 'beta'", "expected key=value"]),
    # wrong types and out-of-range values
    "set-wrong-type": ([*TRAIN, "--set", "max_steps=abc"], ["--set max_steps=abc", "max_steps", "valid integer", "'abc'"]),
    "yaml-list-for-number": ([*TRAIN, "--config", "{in}/list-number.yaml"],
                             ["list-number.yaml:2", "max_steps", "valid integer", "[10, 20]"]),
    "set-out-of-range": ([*TRAIN, "--set", "top_p=1.5"], ["--set top_p=1.5", "top_p", "less than or equal to 1"]),
    "set-zero-steps": ([*TRAIN, "--set", "max_steps=0"], ["max_steps", "greater than or equal to 1", "(got 0)"]),
    "set-infinite": ([*TRAIN, "--set", "learning_rate=.inf"], ["learning_rate", "finite number"]),
    "set-unknown-is-mode": ([*TRAIN, "--set", "rollout_correction=token"],
                            ["--set rollout_correction=token", "rollout_correction", "'token_truncate'"]),
    "set-is-cap-below-1": ([*TRAIN, "--set", "rollout_correction_cap=0.5"],
                           ["rollout_correction_cap", "greater than or equal to 1", "(got 0.5)"]),
    "set-gspo-token-sum": (["train", "gspo", "--output-dir", "{out}", "--set", "loss_type=dapo"],
                           ["policy_loss gspo", "set loss_type=grpo"]),
    "set-other-algorithm": ([*TRAIN, "--set", "algorithm=ppo"], ["algorithm=ppo", "trains 'grpo'", "incentivize train ppo"]),
    "yaml-other-algorithm": ([*TRAIN, "--config", "{in}/other-algorithm.yaml"], ["other-algorithm.yaml", "trains 'grpo'"]),
    "unknown-algorithm": (["train", "grpoo", "--output-dir", "{out}"], ["unknown algorithm 'grpoo'", "did you mean 'grpo'"]),
    # a group size that does not divide the batch
    "set-group-size": ([*TRAIN, "--set", "num_generations=3"],
                       ["generation_batch_size (32) must be a multiple of num_generations (3)", "change one of them"]),
    "yaml-group-size": ([*TRAIN, "--config", "{in}/groups.yaml"],
                        ["groups.yaml", "generation_batch_size (10) must be a multiple of num_generations (4)"]),
    # config files that are not YAML, not a mapping, not there
    "yaml-invalid": ([*TRAIN, "--config", "{in}/invalid.yaml"], ["invalid.yaml:3", "not valid YAML"]),
    "yaml-sequence": ([*TRAIN, "--config", "{in}/sequence.yaml"], ["sequence.yaml", "expected a mapping", "got a YAML list"]),
    "yaml-scalar": ([*TRAIN, "--config", "{in}/scalar.yaml"], ["scalar.yaml", "expected a mapping", "got a YAML str"]),
    "yaml-binary": ([*TRAIN, "--config", "{in}/binary.yaml"], ["binary.yaml:2", "not UTF-8"]),
    "yaml-missing": ([*TRAIN, "--config", "{in}/missing.yaml"], ["config file", "missing.yaml does not exist"]),
    "yaml-directory": ([*TRAIN, "--config", "{in}"], ["is a directory, not a YAML file"]),
    # model paths that are not a model
    "model-empty-dir": (["train", "--model", "{in}/empty-dir", "--output-dir", "{out}"],
                        ["empty-dir has no config.json", "point --model at"]),
    "model-text-file": ([*EVAL, "--model", "{in}/notes.txt"], ["notes.txt is a file but not a .gguf file"]),
    "model-missing": ([*EVAL, "--model", "{in}/no/such/model"], ["unknown model", "no/such/model", "not a file or directory"]),
    "model-broken-config": (["train", "--model", "{in}/broken-config", "--output-dir", "{out}"],
                            ["broken-config/config.json is not a usable model config", "not a valid JSON"]),
    "model-no-model-type": ([*EVAL, "--model", "{in}/no-model-type"], ["no-model-type/config.json", "model_type"]),
    "model-no-tokenizer": ([*EVAL, "--model", "{in}/no-tokenizer"], ["could not load a tokenizer from", "tokenizer.json"]),
    "model-torn-weights": ([*EVAL, "--model", "{in}/torn-weights"], ["could not load a causal LM from", "torn-weights"]),
    "model-fake-gguf": ([*EVAL, "--model", "{in}/fake.gguf"], ["could not load GGUF file", "fake.gguf"]),
    # data files: empty, malformed on line N, a row without its field
    "data-empty": ([*EVAL, "--task", "jsonl", "--data", "{in}/empty.jsonl"], ["empty.jsonl has no rows", "one JSON object"]),
    "data-blank": ([*EVAL, "--task", "jsonl", "--data", "{in}/blank.jsonl"], ["blank.jsonl has no rows"]),
    "data-bad-json": ([*EVAL, "--task", "jsonl", "--data", "{in}/bad-json.jsonl"], ["bad-json.jsonl:3: not valid JSON"]),
    "data-missing-field": ([*EVAL, "--task", "jsonl", "--data", "{in}/no-answer.jsonl"],
                           ["no-answer.jsonl:2: row has no field 'answer'", "it has: label, prompt", "--answer-field"]),
    "data-not-object": ([*EVAL, "--task", "jsonl", "--data", "{in}/not-object.jsonl"],
                        ["not-object.jsonl:2: expected a JSON object"]),
    "data-not-utf8": ([*EVAL, "--task", "jsonl", "--data", "{in}/latin1.jsonl"], ["latin1.jsonl:2: not UTF-8"]),
    "data-missing": ([*EVAL, "--task", "jsonl", "--data", "{in}/nothing.jsonl"], ["nothing.jsonl does not exist"]),
    "train-data-bad-json": ([*TRAIN, "--task", "jsonl", "--set", "task_options.data={in}/bad-json.jsonl"],
                            ["bad-json.jsonl:3: not valid JSON"]),
    "train-data-missing-field": ([*TRAIN, "--task", "jsonl", "--set", "task_options.data={in}/no-answer.jsonl"],
                                 ["no-answer.jsonl:2: row has no field 'answer'", "task_options.answer_field"]),
    "train-task-option-typo": ([*TRAIN, "--task", "jsonl", "--set", "task_options.dta=x.jsonl"],
                               ["does not take option(s) dta", "did you mean 'data'"]),
    # resuming a run whose config.yaml changed, is missing or corrupt, or that is finished
    "resume-config-differs": (["train", "--resume", "{run:differs}"],
                              ["config.yaml differs from the config of", "num_generations: 2 -> 4", "put the old values"]),
    "resume-config-missing": (["train", "--resume", "{run:missing}"], ["is not a run directory", "config.yaml does not exist"]),
    "resume-config-corrupt": (["train", "--resume", "{run:corrupt}"], ["config.yaml:", "not valid YAML"]),
    "resume-config-unknown-key": (["train", "--resume", "{run:unknown-key}"],
                                  ["config.yaml:", "unknown config key 'lerning_rate'"]),
    "resume-finished": (["train", "--resume", "{run:}"], ["is finished", "raise max_steps"]),
    "resume-with-set": (["train", "--resume", "{run:unfinished}", "--set", "beta=0.1"],
                        ["--resume continues", "with its own config", "drop --config, --set"]),
    "resume-nowhere": (["train", "--resume", "{in}/no-such-run"], ["no-such-run is not a run directory"]),
    # output directories
    "output-dir-holds-a-run": (["train", "--model", "tiny-random", "--output-dir", "{run:}"],
                               ["already holds a run", "choose another --output-dir"]),
    "output-dir-is-a-file": (["train", "--model", "tiny-random", "--output-dir", "{in}/notes.txt"],
                             ["notes.txt is a file, not a directory"]),
    "eval-output-is-a-file": ([*EVAL, "--output", "{in}/notes.txt/results"], ["notes.txt is a file, not a directory"]),
    # options the parser rejects
    "option-wrong-type": ([*EVAL, "--limit", "many"], ["--limit", "valid integer", "incentivize eval --help"]),
    "option-out-of-range": ([*EVAL, "--limit", "0"], ["--limit", "greater than or equal to 1"]),
    "option-unknown": ([*TRAIN, "--lerning-rate", "1"], ["No such option: --lerning-rate"]),
    "command-unknown": (["trian"], ["No such command 'trian'"]),
    "rich-markup-in-value": ([*TRAIN, "--set", "max_steps=[/bold]"], ["max_steps", "[/bold]"]),
}


@pytest.fixture
def keep_rng():
    """Commands seed the global RNGs; leave them as they were for the rest of the session."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(state)


def _expand(args, inputs, out, run):
    expanded = []
    for arg in args:
        if arg.startswith("{run:"):
            arg = str(run)
        expanded.append(arg.replace("{in}", str(inputs)).replace("{out}", str(out)))
    return expanded


def _error_line(stderr):
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert lines[-1] == errors[0], stderr  # the last thing said
    return errors[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_clear_line_exit_2_and_nothing_written(case, inputs, finished_run, tmp_path, monkeypatch,
                                                                capsys, keep_rng):
    args, facts = CASES[case]
    out = tmp_path / "existing-output"
    out.mkdir()
    (out / "notes.md").write_text("the user's own file\n")
    run = None
    edit = next((a[len("{run:"):-1] for a in args if a.startswith("{run:")), None)
    if edit is not None:
        run = _resume_copy(finished_run, tmp_path, edit)
    watched = [out, inputs] + ([run] if run else [])
    before = [_snapshot(path) for path in watched]
    monkeypatch.chdir(tmp_path)  # a run directory by default would go under ./runs
    monkeypatch.setattr(sys, "argv", ["incentivize", *_expand(args, inputs, out, run)])

    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()

    assert exited.value.code == 2, captured.err
    assert "Traceback" not in captured.err + captured.out
    line = _error_line(captured.err)
    for fact in facts:
        assert fact.replace("{in}", str(inputs)) in line, line
    assert [_snapshot(path) for path in watched] == before, "an existing directory was changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["existing-output", *(["resume"] if run else [])])


@pytest.mark.parametrize("args,fact", [
    (["train", "--set", "lerning_rate=1e-5"], "did you mean 'learning_rate'"),
    (["train", "--model", "{in}/empty-dir", "--output-dir", "{out}"], "has no config.json"),
    (["eval", "--model", "tiny-random", "--task", "jsonl", "--data", "{in}/bad-json.jsonl", "--output", "{out}"],
     "bad-json.jsonl:3: not valid JSON"),
])
def test_the_real_command_says_one_line_and_exits_2(args, fact, inputs, tmp_path):
    out = tmp_path / "existing-output"
    out.mkdir()
    (out / "notes.md").write_text("the user's own file\n")
    result = _subprocess(*_expand(args, inputs, out, None), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert fact in _error_line(result.stderr)
    assert [p.name for p in out.iterdir()] == ["notes.md"] and not (tmp_path / "runs").exists()


def test_a_tokenizer_without_a_chat_template_is_one_warning_and_plain_prompts(inputs, finished_run, tmp_path):
    """Not an error: base models have no template, and plain prompts are how R1-Zero-style runs start.
    Training (the `finished_run` fixture) warns once; so does evaluation, whose prompts are plain text."""
    result = _subprocess("eval", "--model", inputs / "no-template", "--limit", 1, "--samples", 0,
                         "--max-new-tokens", 2, "--output", tmp_path / "eval")
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "no chat template" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:") and "plain text" in warnings[0]
    prompt = json.loads((tmp_path / "eval" / "samples.jsonl").read_text().splitlines()[0])["prompt"]
    assert "<|im_start|>" not in prompt
