"""The `incentivize` command line. Each command parses its options and calls one library function."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from incentivize.errors import IncentivizeError
from incentivize.inference.selection import SELECT_HELP, SelectSpec
from incentivize.progress import ProgressReporter

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Post-train language models toward reasoning. Don't teach. Incentivize.",
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)


@app.callback()
def _root() -> None:
    """Post-train language models toward reasoning. Don't teach. Incentivize."""


@app.command("version")
def version_command() -> None:
    """Print the version."""
    from incentivize import __version__

    print(__version__)


def main() -> None:
    """Entry point: user errors, ours and the option parser's, become one line on stderr and exit
    status 2, never a traceback."""
    # click's base error, from the click this typer uses (recent typers carry their own copy)
    click_error: Any = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    try:
        code = app(standalone_mode=False, prog_name="incentivize")
    except IncentivizeError as err:
        _fail(str(err))
    except click_error as err:  # a bad option, value or command (typer would draw a box of several lines)
        message, context = err.format_message(), getattr(err, "ctx", None)
        if not message:  # `incentivize` alone: the help was shown
            sys.exit(err.exit_code)
        _fail(message + (f" (see {context.command_path} --help)" if context is not None else ""), err.exit_code)
    except typer.Abort:
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted")
        sys.exit(130)
    if isinstance(code, int):  # typer.Exit(n) raised in a command
        sys.exit(code)


def _fail(message: str, status: int = 2) -> NoReturn:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    sys.exit(status)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@app.command("eval")
def eval_command(
    model: Annotated[str, typer.Option(help="model directory, .gguf file, or built-in name (smollm2-135m, tiny-random)")] = "smollm2-135m",
    task: Annotated[str, typer.Option(help="arithmetic, gsm8k, jsonl or code")] = "arithmetic",
    data: Annotated[Optional[str], typer.Option(help="data file (gsm8k, jsonl) or a datasets name")] = None,
    split: Annotated[str, typer.Option(help="split of a built-in task")] = "test",
    limit: Annotated[int, typer.Option(min=1, help="number of problems")] = 200,
    samples: Annotated[Optional[int], typer.Option(min=0, help="sampled completions per problem for pass@k / maj@k "
                                                   "(0: greedy only; default 8, with --self-correct 0)")] = None,
    temperature: Annotated[float, typer.Option(help="temperature of the sampled pass")] = 0.7,
    top_p: Annotated[float, typer.Option()] = 1.0,
    top_k: Annotated[int, typer.Option(help="0 disables top-k")] = 0,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="generation budget (default: the task's)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="sequences decoded together")] = 64,
    seed: Annotated[int, typer.Option()] = 0,
    output: Annotated[Optional[Path], typer.Option(help="directory for results.json and samples.jsonl")] = None,
    reward: Annotated[Optional[list[str]], typer.Option(help="extra reward function path/to/file.py:name (repeatable)")] = None,
    prompt_field: Annotated[Optional[str], typer.Option(help="jsonl task: field holding the prompt")] = None,
    answer_field: Annotated[Optional[str], typer.Option(help="jsonl task: field holding the answer")] = None,
    num_ops: Annotated[Optional[int], typer.Option(help="arithmetic: operations per problem")] = None,
    digits: Annotated[Optional[int], typer.Option(help="arithmetic: digits per number")] = None,
    word_problems: Annotated[Optional[bool], typer.Option("--word-problems", help="arithmetic: tell problems as stories")] = None,
    select: Annotated[Optional[str], typer.Option(help=SELECT_HELP)] = None,
    self_correct: Annotated[bool, typer.Option("--self-correct", help="two attempts per problem, the second after "
                                               "an instruction to correct the first (SCoRe's metrics)")] = False,
    correction_instruction: Annotated[Optional[str], typer.Option(help="--self-correct: the second turn's "
                                                                  "instruction (default: SCoRe's)")] = None,
    traces: Annotated[Optional[Path], typer.Option(help="--self-correct: write the wrong-then-right attempts here "
                                                        "as prompt-completion JSONL (SFT on corrections)")] = None,
) -> None:
    """Greedy accuracy, pass@k, maj@k, lengths and parse rate of a model on a task; with --select,
    the accuracy of voting and of best-of-N by trained verifiers as N grows; with --self-correct, how
    a second attempt changes the first."""
    from incentivize.atomic import require_directory_path
    from incentivize.eval.runner import EvalSettings, evaluate
    from incentivize.inference.selection import parse_select, sweep_markdown
    from incentivize.models import load
    from incentivize.rewards import load_reward_function
    from incentivize.tasks import chat_template_warning, load_task

    _quiet_transformers()
    if self_correct and (select is not None or reward):
        raise IncentivizeError("--self-correct measures two attempts with the task's verifier; drop --select and "
                               "--reward, or evaluate without --self-correct")
    if (correction_instruction is not None or traces is not None) and not self_correct:
        raise IncentivizeError("--correction-instruction and --traces belong to --self-correct; add --self-correct")
    if correction_instruction is not None and not correction_instruction.strip():
        raise IncentivizeError("--correction-instruction is empty; give the instruction text, or drop it for SCoRe's")
    samples = samples if samples is not None else (0 if self_correct else 8)
    reward_functions = [load_reward_function(spec) for spec in reward or []]
    select_specs = parse_select(select) if select is not None else []
    if select_specs and samples < 1:
        raise IncentivizeError("--select chooses among sampled completions: give --samples N (N >= 1), e.g. --samples 8")
    the_task = load_task(
        task, data=data, prompt_field=prompt_field, answer_field=answer_field,
        num_ops=num_ops, digits=digits, word_problems=word_problems,
    )
    examples = the_task.examples(split, limit)
    settings = _settings(EvalSettings, samples=samples, temperature=temperature, top_p=top_p, top_k=top_k,
                         max_new_tokens=max_new_tokens or the_task.max_new_tokens, batch_size=batch_size, seed=seed)
    output = output or Path("results") / f"eval-{task}-{time.strftime('%Y%m%d-%H%M%S')}"
    require_directory_path(output, "--output")  # found now, not after the whole evaluation
    if traces is not None and traces.is_dir():
        raise IncentivizeError(f"--traces: {traces} is a directory; give the path of a JSONL file to write")

    started = time.perf_counter()
    verifiers, selectors = _load_verifiers(select_specs)
    with console.status(f"loading {model}"):
        the_model, tokenizer = load(model)
    console.print(f"loaded {model} in {time.perf_counter() - started:.1f}s; {len(examples)} {task} problems")
    if warning := chat_template_warning(tokenizer, model):
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if self_correct:
        _self_correct(the_model, tokenizer, the_task, examples, settings, correction_instruction, output, traces,
                      {"model": model, "task": task, "data": data, "split": split, "limit": limit}, started)
        return
    work = len(examples) * (1 + samples + samples * len(verifiers))
    with ProgressReporter("generating and scoring" if verifiers else "generating", work, console) as progress:
        report = evaluate(the_model, tokenizer, the_task, examples, settings, reward_functions=reward_functions,
                          verifiers=verifiers, selectors=selectors, progress=progress.advance)
    elapsed = time.perf_counter() - started
    report.metrics["seconds"] = round(elapsed, 1)
    report.write(output, {"model": model, "task": task, "data": data, "split": split, "limit": limit,
                          **settings.model_dump(), **({"select": select} if select is not None else {})})
    _print_metrics(report.metrics, f"{model} on {task} ({len(examples)} problems)")
    if report.sweep is not None:
        print(f"\naccuracy with N samples per problem ({len(examples)} problems; N < {samples}: mean over subsets)\n")
        print(sweep_markdown(report.sweep) + "\n")
        console.print(f"wrote {output}/results.json, samples.jsonl, sweep.json and sweep.svg")
    else:
        console.print(f"wrote {output}/results.json and {output}/samples.jsonl")
    _check_reward_errors(report.reward_errors, len(report.records))


def _self_correct(model: Any, tokenizer: Any, task: Any, examples: list[Any], settings: Any, instruction: str | None,
                  output: Path, traces: Path | None, described: dict[str, Any], started: float) -> None:
    """`eval --self-correct`: both attempts of every problem, SCoRe's metrics printed and written."""
    from incentivize.eval.self_correct import self_correct
    from incentivize.tasks.environments import CORRECTION_INSTRUCTION

    instruction = instruction or CORRECTION_INSTRUCTION
    work = 2 * len(examples) * max(1, settings.samples)
    with ProgressReporter("first and second attempts", work, console) as progress:
        report = self_correct(model, tokenizer, task, examples, settings, instruction=instruction,
                              progress=progress.advance)
    report.metrics["seconds"] = round(time.perf_counter() - started, 1)
    report.write(output, {**described, **settings.model_dump(), "self_correct": True, "instruction": instruction})
    _print_metrics(report.metrics, f"{described['model']} on {described['task']}, two attempts "
                                   f"({len(examples)} problems)")
    console.print(f"wrote {output}/results.json and {output}/samples.jsonl (both attempts per line)")
    if traces is not None:
        report.write_traces(traces)
        console.print(f"wrote {len(report.traces)} wrong-then-right correction traces to {traces}")


@app.command("report")
def report_command(
    runs: Annotated[list[Path], typer.Argument(metavar="RUN", help="run directories (several: their curves overlaid)",
                                                    show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="HTML file to write (default: <run>/report.html "
                                                   "for one run, ./report.html for several)")] = None,
) -> None:
    """A self-contained HTML report of one or more runs: held-out accuracy before and after, every
    logged metric against the step, the N-sweep of a verifier recipe, and a browser of the samples."""
    from incentivize.report import write_report

    started = time.perf_counter()
    path = write_report(runs, output, on_warning=lambda text: console.print(f"[yellow]warning:[/] {escape(text)}",
                                                                            highlight=False))
    console.print(f"wrote {path} in {time.perf_counter() - started:.1f}s", highlight=False)


@app.command("grow")
def grow_command(
    output: Annotated[Path, typer.Option(help="directory to write the wider model to (must not exist)")],
    model: Annotated[str, typer.Option(help="model directory, .gguf file, or built-in name")] = "smollm2-135m",
    width_factor: Annotated[int, typer.Option(min=1, help="how many times wider: hidden size, MLP size, heads")] = 2,
    noise: Annotated[float, typer.Option(min=0.0, help="the noisy variant: std of the cancelling noise, relative to "
                                                      "each layer's weights (0: symmetric)")] = 0.0,
    seed: Annotated[int, typer.Option(help="seed of the noise")] = 0,
) -> None:
    """HyperCloning (Samragh et al. 2024): write a model WIDTH_FACTOR times as wide as MODEL that computes the same
    function, as a Hugging Face directory (`transformers` loads it), to continue training from."""
    from incentivize.checkpoint import save_model
    from incentivize.models import load
    from incentivize.models.hyperclone import hyperclone

    if output.exists():
        raise IncentivizeError(f"--output {output} already exists; give a new directory")
    started = time.perf_counter()
    small, tokenizer = load(model)
    wide = hyperclone(small, width_factor, noise, seed)
    save_model(output, wide, tokenizer)
    count = sum(p.numel() for p in wide.parameters())
    console.print(f"wrote {output}: {count / 1e6:.0f}M parameters, hidden size {wide.config.hidden_size}, "
                  f"{wide.config.num_attention_heads} heads ({time.perf_counter() - started:.1f}s)", highlight=False)


@app.command("train")
def train_command(
    algorithm: Annotated[str, typer.Argument(help="grpo, dr_grpo, dapo, rloo, reinforce_pp, reinforce_pp_baseline, ppo, "
                                                  "latro (LaTRO: rationales rewarded by the gold answer's likelihood); "
                                                  "orm, prm, rm (reward models); sft; dpo, simpo, kto (preferences); "
                                                  "verifier (Cobbe et al.'s recipe); rlaif-vs-sft; score (SCoRe)")] = "grpo",
    config: Annotated[Optional[Path], typer.Option(help="YAML file of config keys")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override one key: --set beta=0.04 (repeatable)")] = None,
    model: Annotated[Optional[str], typer.Option(help="shortcut for --set model=...")] = None,
    task: Annotated[Optional[str], typer.Option(help="shortcut for --set task=...")] = None,
    output_dir: Annotated[Optional[str], typer.Option(help="run directory (default runs/<algorithm>-<task>-<time>)")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="continue this run directory from its newest checkpoint")] = None,
    data: Annotated[Optional[str], typer.Option(help="shortcut for --set data=... (rm, dpo, simpo: pairs JSONL; kto: "
                                                     "labelled answers; prm: PRM800K JSONL); RL: the task's file "
                                                     "(--set task_options.data=...)")] = None,
    prompt_field: Annotated[Optional[str], typer.Option(help="RL on --task jsonl: the field holding the question "
                                                             "(--set task_options.prompt_field=...)")] = None,
    answer_field: Annotated[Optional[str], typer.Option(help="RL on --task jsonl: the field holding the gold answer "
                                                             "(--set task_options.answer_field=...)")] = None,
    pairs: Annotated[Optional[str], typer.Option(help="dpo, simpo: 'self' samples pairs from the policy and the "
                                                      "task's verifier each round (shortcut for --set pairs=self)")] = None,
    sft_teacher: Annotated[Optional[str], typer.Option(help="rlaif-vs-sft: the model whose answers SFT learns from, "
                                                            "or oracle (shortcut for --set sft_teacher=...)")] = None,
    critic: Annotated[Optional[str], typer.Option(help="rlaif-vs-sft: the AI judge labelling the RLAIF pairs, or "
                                                       "oracle (shortcut for --set critic=...)")] = None,
    reward: Annotated[Optional[list[str]], typer.Option(
        help="RL: one more reward (repeatable): path/to/file.py:function, a trained reward model orm:DIR, prm:DIR, rm:DIR, or an AI judge judge:MODEL"
    )] = None,
) -> None:
    """RL training (grpo, dr_grpo, dapo, rloo, reinforce_pp, reinforce_pp_baseline, ppo, latro), SFT, a reward model
    (orm, prm, rm), preferences (dpo, simpo, kto) or a recipe (verifier, rlaif-vs-sft); --resume continues any of them. With no arguments: GRPO on
    SmolLM2-135M-Instruct on arithmetic, on CPU."""
    from incentivize.config import (
        PREFERENCE_PRESETS, RlaifVsSftConfig, ScoreConfig, SFTConfig, VerifierRecipeConfig, load_config, load_preference_config, load_reward_config,
        load_run_config, load_settings,
    )

    rl = algorithm not in (*REWARD_MODEL_KINDS, *PREFERENCE_PRESETS, "sft", "verifier", "rlaif-vs-sft", "score")
    if (prompt_field is not None or answer_field is not None) and not rl:
        raise IncentivizeError(f"--prompt-field and --answer-field are for RL on --task jsonl; train {algorithm} takes "
                               "neither (set task_options in its config)")
    shortcuts = [f"{k}={v}" for k, v in (("model", model), ("task", task), ("output_dir", output_dir),
                                          ("task_options.data" if rl else "data", data), ("pairs", pairs),
                                          ("sft_teacher", sft_teacher), ("critic", critic),
                                          ("task_options.prompt_field", prompt_field),
                                          ("task_options.answer_field", answer_field)) if v]
    if resume is not None:
        if config is not None or shortcuts or set_ or reward:
            raise IncentivizeError(
                f"--resume continues {resume} with its own config ({resume / 'config.yaml'}); drop --config, --set, "
                "--model, --task and --output-dir, or start a new run"
            )
        _run_training(load_run_config(resume), resume=True)
        return
    if reward and not rl:
        raise IncentivizeError(f"--reward is for RL training; train {algorithm} takes none")
    if (sft_teacher is not None or critic is not None) and algorithm != "rlaif-vs-sft":
        raise IncentivizeError(f"--sft-teacher and --critic are for train rlaif-vs-sft; train {algorithm} takes neither")
    if pairs is not None and algorithm not in PREFERENCE_PRESETS:
        raise IncentivizeError(f"--pairs is for train dpo|simpo; train {algorithm} takes none")
    if data is not None and not rl and algorithm not in (*REWARD_MODEL_KINDS, *PREFERENCE_PRESETS):
        raise IncentivizeError(f"--data is for RL and train orm|prm|rm|dpo|simpo|kto; for {algorithm} give the task's "
                               "data with --set task_options.data=FILE")
    overrides = shortcuts + list(set_ or [])
    settings: Any
    if rl:
        settings = load_config(algorithm, config, overrides, rewards=reward)
    elif algorithm == "sft":
        settings = load_settings(SFTConfig, config, overrides)
    elif algorithm == "verifier":
        settings = load_settings(VerifierRecipeConfig, config, overrides)
    elif algorithm == "rlaif-vs-sft":
        settings = load_settings(RlaifVsSftConfig, config, overrides)
    elif algorithm == "score":
        settings = load_settings(ScoreConfig, config, overrides)
    elif algorithm in PREFERENCE_PRESETS:
        settings = load_preference_config(algorithm, config, overrides)
    else:
        settings = load_reward_config(algorithm, config, overrides)
    _run_training(settings, resume=False)


REWARD_MODEL_KINDS = ("orm", "prm", "rm")


def _run_training(settings: Any, *, resume: bool) -> None:
    """Train `settings` (any trainer's config) with progress bars, then print what it achieved."""
    from incentivize.config import PreferenceConfig, RewardModelConfig, RlaifVsSftConfig, RLConfig, ScoreConfig, SFTConfig
    from incentivize.trainers.interrupt import TrainingInterrupted

    run: Callable[..., Any]
    if isinstance(settings, RLConfig):
        from incentivize.trainers.rl import train

        console.print(
            f"{settings.algorithm}: {settings.model} on {settings.task}, {settings.max_steps} steps of "
            f"{settings.prompts_per_step} prompts x {settings.num_generations} completions", highlight=False,
        )
        run, title, made = train, f"held-out greedy accuracy ({settings.eval_limit} problems)", "final model"
    elif isinstance(settings, SFTConfig):
        from incentivize.trainers.sft import train_sft

        run, title, made = train_sft, f"held-out ({settings.eval_limit} problems)", "fine-tuned model"
    elif isinstance(settings, PreferenceConfig):
        from incentivize.trainers.preference import train_preference

        source = "pairs sampled by the policy, each round" if settings.pairs == "self" else settings.data
        console.print(f"{settings.algorithm} ({settings.loss_type}, beta {settings.beta}) on {settings.model}, data: "
                      f"{source}", highlight=False)
        run, title, made = train_preference, "validation pairs and held-out problems", "model"
    elif isinstance(settings, RewardModelConfig):
        from incentivize.trainers.reward_model import train_reward_model

        source = settings.data or f"{settings.samples_per_problem} samples x {settings.num_problems} {settings.task} problems"
        console.print(f"{settings.kind}: reward model on {settings.model}, data: {source}", highlight=False)
        run, title, made = train_reward_model, "validation", "reward model"
    elif isinstance(settings, RlaifVsSftConfig):
        from incentivize.recipes.rlaif_vs_sft import run_rlaif_vs_sft

        run, title, made = run_rlaif_vs_sft, "held-out greedy accuracy of each arm", "comparison.md"
    elif isinstance(settings, ScoreConfig):
        from incentivize.recipes.score import run_score

        run, title, made = run_score, "held-out self-correction of each model", "comparison.md"
    else:
        from incentivize.recipes.verifier import run_verifier_recipe

        run, title, made = run_verifier_recipe, "", "results"
    try:
        result = _run_in_stages(run, settings, resume=resume)
    except TrainingInterrupted as err:  # Ctrl-C: one line saying where the checkpoint is and how to continue
        console.print(str(err), highlight=False, markup=False)
        raise typer.Exit(130) from None
    if (result.run_dir / "comparison.md").exists():
        console.print((result.run_dir / "comparison.md").read_text(encoding="utf-8"), highlight=False, markup=False)
    elif result.after:
        _print_before_after(result.before, result.after, title)
    if result.summary.get("sweep"):
        from incentivize.inference.selection import sweep_markdown

        console.print(sweep_markdown(result.summary["sweep"]), highlight=False, markup=False)
    final = result.run_dir / "final" if (result.run_dir / "final").exists() else result.run_dir
    console.print(f"{result.seconds / 60:.1f} min; {made} in {final}", highlight=False)


def _load_verifiers(specs: list[SelectSpec]) -> tuple[dict[str, Any], list[Any]]:
    """Each verifier directory named in --select, loaded once and named; and the selectors."""
    if not specs:
        return {}, []
    from incentivize.inference.selection import build_selectors

    from incentivize.rewards.judge import JudgeVerifier, load_judge
    from incentivize.rewards.reward_model import load_verifier

    judges = {spec.path for spec in specs if spec.kind == "judge"}
    loaded: dict[str, Any] = {}
    for path in dict.fromkeys(spec.path for spec in specs if spec.path is not None):
        with console.status(f"loading {'judge' if path in judges else 'verifier'} {path}"):
            try:
                loaded[path] = JudgeVerifier(load_judge(path, f"judge:{path}")) if path in judges else load_verifier(path)
            except IncentivizeError as err:
                raise IncentivizeError(f"--select: {err}") from None
    selectors, names = build_selectors(specs, {path: verifier.kind for path, verifier in loaded.items()})
    return {names[path]: verifier for path, verifier in loaded.items()}, selectors


def _run_in_stages(run: Callable[..., Any], settings: Any, *, resume: bool = False) -> Any:
    """`run(settings, on_event=..., on_progress=..., resume=...)` with its milestones printed and one progress
    bar per stage (`on_progress(stage, done, total, status="")`)."""
    _quiet_transformers()
    bars: dict[str, ProgressReporter] = {}
    names = {"sample": "sampling", "train": "training"}

    def on_progress(stage: str, done: int, total: int, status: str = "") -> None:
        bar = bars.get(stage)
        if bar is None or done <= bar.done or bar.total != max(total, 1):  # a new stage, or the next run's
            close()
            bar = bars[stage] = ProgressReporter(names.get(stage, stage), total, console).__enter__()
        bar.advance(done - bar.done, status)

    def close() -> None:
        for bar in bars.values():
            bar.__exit__()
        bars.clear()

    try:
        return run(settings, on_event=lambda text: console.print(text, highlight=False), on_progress=on_progress,
                   resume=resume)
    finally:
        close()


def _print_before_after(before: dict[str, Any] | None, after: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    for column in ("", "before", "after"):
        table.add_column(column, justify="right")
    for name, value in after.items():
        if isinstance(value, float):
            old = (before or {}).get(name)
            table.add_row(name, "-" if old is None else _number(old), _number(value))
    Console().print(table)


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _settings(cls: Any, **values: Any) -> Any:
    from pydantic import ValidationError

    try:
        return cls(**values)
    except ValidationError as err:
        first = err.errors()[0]
        raise IncentivizeError(f"option --{'-'.join(map(str, first['loc'])).replace('_', '-')}: {first['msg']}") from None


def _print_metrics(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console().print(table)


def _check_reward_errors(errors: dict[str, list[str]], total: int) -> None:
    """Some failures are reported and the run succeeds; a function that failed on every sample is an error."""
    for name, texts in errors.items():
        if not texts:
            continue
        message = f"reward function {name} failed on {len(texts)} of {total} samples (first: {texts[0]})"
        if len(texts) == total:
            raise IncentivizeError(message + "; its results were still written, fix the function and rerun")
        console.print(f"[yellow]warning:[/] {message}; those samples have no reward")


if __name__ == "__main__":
    main()
