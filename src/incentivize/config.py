"""One typed config for RL training, read from YAML and `--set key=value` overrides.

Field names follow TRL where TRL has the concept (`num_generations`, `beta`, `epsilon`,
`epsilon_high`, `loss_type`, `scale_rewards`, `max_completion_length`, `num_iterations`,
`learning_rate`, `max_grad_norm`, `warmup_steps`, `lr_scheduler_type`). Each algorithm name is a
preset of these fields (`PRESETS`); the YAML file and then the overrides are applied on top, so
`incentivize train rloo --set beta=0` means "RLOO, without the KL penalty".
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from incentivize.errors import IncentivizeError, describe
from incentivize.trackers import ReportToList

Settings = TypeVar("Settings", bound=BaseModel)
LinearKernelName = Literal["auto", "onednn", "torch"]  # the linear layers' kernel (incentivize.models.speed)
Algorithm = Literal["grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "ppo", "latro", "gspo",
                    "cispo"]


class LifecycleSettings(BaseModel):
    """The keys every run shares, read by the run lifecycle (`trainers/run.py`): where the run goes, its
    seed, checkpoints, evaluation, failure limits and trackers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    # Keys that may change between the start of a run and its resumption (edited in its config.yaml).
    RESUMABLE: ClassVar[frozenset[str]] = frozenset({
        "output_dir", "max_steps", "eval_steps", "eval_limit", "eval_before", "save_steps", "save_total_limit",
        "report_to",
    })

    output_dir: str | None = None
    seed: int = 0
    eval_steps: int = Field(default=0, ge=0, description="held-out evaluation every N steps (0: only before and after)")
    eval_before: bool = True
    save_steps: int = Field(default=0, ge=0, description="checkpoint every N steps (0: only the final model)")
    save_total_limit: int = Field(default=2, ge=1, description="complete checkpoints kept (the newest)")
    max_nonfinite_steps: int = Field(
        default=3, ge=1, description="stop after this many steps in a row with a NaN or infinite loss or gradient"
    )
    max_zero_signal_steps: int = Field(
        default=10, ge=0,
        description="stop after this many steps in a row with nothing to learn, e.g. no group's rewards differ (0: never)",
    )
    report_to: ReportToList = Field(
        default=["tensorboard"],
        description="trackers that receive every metric: tensorboard, wandb, mlflow, trackio, or none",
    )


class LoraSettings(BaseModel):
    """LoRA through peft: with `use_peft`, only adapters train and the reference is the base model with the
    adapters disabled (no second copy of the model)."""

    use_peft: bool = False
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    lora_target_modules: list[str] | str = "all-linear"


class JudgeSettings(BaseModel):
    """How an AI judge (`incentivize.rewards.judge`) is prompted: `--reward judge:MODEL` in RL, `labeller: judge`
    for preference pairs and reward-model labels. A rubric's placeholders are filled by `str.format`."""

    judge: str | None = Field(default=None, description="the judge LM for labeller: judge (a model name, directory or .gguf)")
    judge_grade_rubric: str | None = Field(default=None, description="{question} {answer}; default: a Yes/No rubric")
    judge_compare_rubric: str | None = Field(default=None, description="{question} {answer_a} {answer_b}; default: A/B")
    judge_grade_labels: tuple[str, str] = Field(default=("Yes", "No"), description="single tokens: correct, wrong")
    judge_compare_labels: tuple[str, str] = Field(default=("A", "B"), description="single tokens: a better, b better")

    @field_validator("judge_grade_rubric", "judge_compare_rubric")
    @classmethod
    def _rubric(cls, rubric: str | None, info: Any) -> str | None:
        from incentivize.rewards.judge import rubric_problem

        problem = None if rubric is None else rubric_problem(rubric, info.field_name.split("_")[1])
        if problem:
            raise ValueError(f"the rubric {problem}")
        return rubric

    def judge_options(self) -> dict[str, Any]:
        """The keyword arguments of `incentivize.rewards.judge.Judge` these settings give."""
        options: dict[str, Any] = {"grade_labels": self.judge_grade_labels, "compare_labels": self.judge_compare_labels}
        if self.judge_grade_rubric is not None:
            options["grade_rubric"] = self.judge_grade_rubric
        if self.judge_compare_rubric is not None:
            options["compare_rubric"] = self.judge_compare_rubric
        return options


class RLConfig(JudgeSettings, LoraSettings, LifecycleSettings):
    """Everything an RL run needs. Units: lengths in tokens, steps in optimizer steps of one rollout batch."""

    # where the samples are drawn changes nothing about them (each prompt has its own seed)
    RESUMABLE = LifecycleSettings.RESUMABLE | {"num_rollout_workers", "num_learners", "ray_address"}
    # other names a key may be given by (in a YAML file or --set), as the methods' papers call it
    ALIASES: ClassVar[dict[str, str]] = {"num_rationales": "num_generations", "max_rationale_tokens": "max_completion_length"}

    # what to train, on what
    algorithm: Algorithm = "grpo"
    model: str = Field(default="smollm2-135m", description="model directory, .gguf file or built-in name")
    task: str = "arithmetic"
    task_options: dict[str, Any] = Field(default_factory=dict, description="options of the task, e.g. num_ops, data")
    process_neutral: Literal["positive", "negative", "neither"] | None = Field(
        default=None, description="grpo_process: how the PRM's neutral (prose) steps count; default: as it was trained")
    process_outcome_weight: float = Field(default=0.0, ge=0.0, description="grpo_process: the verifier's verdict "
                                          "(1 right, 0 wrong) times this, as one more step at the completion's end")
    monitor: Literal["oracle", "none"] = Field(default="oracle", description="with a learned or judged reward "
                                              "(orm/prm/rm/judge:), log its correlation and false-positive rate "
                                              "against the task's verifier each step")
    hacking_patience: int = Field(default=0, ge=0, description="steps per window of the hacking alarm (the proxy "
                                  "rising while the verifier's accuracy falls); 0: off")
    on_hacking: Literal["warn", "stop"] = Field(default="warn", description="what the hacking alarm does")
    rewards: list[str] = Field(default_factory=list, description="extra rewards: path/to/file.py:name, orm:DIR, "
                               "prm:DIR, rm:DIR or judge:MODEL")
    reward_weights: list[float] | None = Field(default=None, description="weights of [correctness, *rewards]")
    format_reward: float = Field(default=0.0, description="weight of the built-in format reward")
    reward_timeout_s: float = Field(default=10.0, gt=0.0, description="time limit of one call of a reward function")
    on_reward_error: Literal["skip", "raise"] = Field(
        default="skip", description="a reward function that fails or times out on a sample: skip (no reward) or raise"
    )

    # multi-turn episodes (incentivize.rollout.episodes, incentivize.tasks.environments)
    environment: Literal["none", "self_correction", "python_tool"] = Field(
        default="none", description="each sample an episode of turns with this environment: self_correction "
        "(SCoRe's second attempt) or python_tool (a sandboxed Python interpreter); none: one completion")
    max_turns: int = Field(default=2, ge=1, description="model turns per episode, with an environment")
    episode_reward: Literal["last", "sum", "shaped", "per_turn"] = Field(
        default="last", description="an episode's reward from its turns' rewards: the last turn's, their sum, "
        "SCoRe's stage II r1 + r2 + shaping_alpha * (r2 - r1), or per_turn: each turn's tokens credited with the "
        "normalised rewards of that turn and the later ones (advantage grpo_process, turns as steps)")
    shaping_alpha: float = Field(default=10.0, ge=0.0, description="episode_reward shaped: the bonus for turning a "
                                 "wrong first attempt into a right second one (SCoRe: 10)")
    first_turn_beta: float | None = Field(default=None, ge=0.0, description="the KL coefficient on the first model "
                                          "turn's tokens (SCoRe's stage I: 10 x beta); default: beta")
    train_first_turn: bool = Field(default=True, description="policy gradient on the first turn's tokens too (SCoRe's "
                                   "stage I: false, the first attempt held near the base model by the KL alone)")

    # LaTRO (incentivize.algorithms.latro): rationales rewarded by the policy's own likelihood of the gold answer
    self_reward: Literal["none", "sum", "mean"] = Field(
        default="none", description="LaTRO: each completion is a rationale, sampled up to answer_marker; the gold "
        "answer is appended and the rationale's reward is the policy's log-likelihood of it, summed or averaged over "
        "the answer's tokens (no verifier); none: the task's verifier and rewards")
    answer_marker: str = Field(default="Answer:", min_length=1, description="LaTRO: the text that ends a rationale; "
                               "the gold answer follows it (the tasks' answer line is `Answer: <answer>`)")
    answer_loss_weight: float = Field(default=1.0, ge=0.0, description="LaTRO: weight of -log pi(gold answer | "
                                      "question, rationale) in the loss (the paper's formula: 1; its code: 0)")
    truncated_penalty: float = Field(default=2.0, ge=0.0, description="LaTRO: a rationale cut at "
                                     "max_completion_length before the marker gets this times the mean self-reward")

    # sampling
    num_generations: int = Field(default=8, ge=1, description="completions per prompt (the group size G; LaTRO's K, "
                                 "also named num_rationales)")
    generation_batch_size: int = Field(default=32, ge=1, description="completions per step; a multiple of num_generations")
    max_completion_length: int = Field(default=64, ge=1, description="tokens per completion (LaTRO: per rationale, also "
                                       "named max_rationale_tokens)")
    temperature: float = Field(default=0.7, gt=0.0, description="sampling temperature; log-probs use the same")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)

    # optimisation
    max_steps: int = Field(default=28, ge=1)
    learning_rate: float = Field(default=1e-5, gt=0.0)
    lr_scheduler_type: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    num_iterations: int = Field(default=1, ge=1, description="updates per rollout batch (mu)")
    micro_batch_size: int = Field(default=4, ge=1, description="completions per forward/backward (memory, not math)")
    share_prompt: bool = Field(default=True, description="compute a group's shared prompt once in the learner")
    recompute_mlp: bool = Field(
        default=False, description="recompute each layer's MLP in the backward pass: less activation memory, a little more time"
    )
    linear_kernel: LinearKernelName = Field(
        default="auto", description="matrix products of the trained model's linear layers: onednn, torch, or auto "
        "(oneDNN on x86 where it runs; INCENTIVIZE_ONEDNN=0 turns it off)",
    )
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999

    # estimator and loss
    advantage: str = Field(default="grpo", description="advantage estimator (algorithms.advantages)")
    scale_rewards: Literal["group", "batch", "none"] = "group"
    loss_type: str = Field(default="grpo", description="grpo | dapo | bnpo | dr_grpo (how the token losses are averaged)")
    epsilon: float = Field(default=0.2, gt=0.0, description="PPO clip, lower side")
    epsilon_high: float | None = Field(default=None, description="PPO clip, upper side (DAPO clip-higher); default epsilon")
    dual_clip: float | None = Field(default=None, gt=1.0)
    ratio_level: Literal["token", "sequence"] = "token"
    policy_loss: Literal["ppo", "gspo", "cispo"] = Field(
        default="ppo", description="ppo: the clipped surrogate; gspo: the length-normalised sequence ratio, clipped per "
        "sequence; cispo: REINFORCE weighted by the clipped, stop-gradient importance ratio (algorithms.policy_loss)")
    beta: float = Field(default=0.04, ge=0.0, description="KL coefficient; 0 loads no reference model")
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    kl_in: Literal["loss", "reward"] = "loss"
    unbiased_kl: bool = Field(default=False, description="the KL term of the loss as r * k3, r = pi/pi_old with its "
                              "gradient: an unbiased estimate of KL(pi || pi_ref) and its gradient (kl_estimator k3)")
    entropy_coef: float = Field(default=0.0, ge=0.0, description="weight c of the entropy bonus -c * mean token "
                                "entropy in the loss; the starting value with entropy_target")
    entropy_target: float | None = Field(default=None, ge=0.0, description="adaptive entropy bonus (Skywork-OR1): "
                                         "c rises by entropy_coef_delta while the step's entropy is at or below this "
                                         "many nats, falls above it and is not applied; None: c stays entropy_coef")
    entropy_coef_delta: float = Field(default=0.005, ge=0.0)
    entropy_coef_min: float = Field(default=0.0, ge=0.0)
    entropy_coef_max: float = Field(default=1.0, ge=0.0)
    gamma: float = Field(default=1.0, ge=0.0, le=1.0)
    lam: float = Field(default=0.95, ge=0.0, le=1.0)

    # precision, and the correction for sampling from another precision (algorithms.rollout_correction)
    rollout_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="precision of the copy of the policy the engine samples from (bfloat16: about "
        "2x the tokens per second on a CPU with AVX512-BF16); float32: the trained weights themselves")
    learner_dtype: Literal["float32", "bfloat16"] = Field(
        default="float32", description="bfloat16: the learner's forward and backward under autocast, weights and "
        "optimizer in float32")
    allow_fp16: bool = Field(default=False, description="allow rollout_dtype float16 on a model trained in bfloat16")
    rollout_correction: Literal["auto", "none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = (
        Field(default="auto", description="weight each token by pi_old / pi_rollout, capped (truncate) or dropped "
              "outside [cap_low, cap] (mask), per token or per sequence; auto: token_truncate when rollout_dtype or "
              "learner_dtype is not float32, none when both are"))
    rollout_correction_cap: float = Field(default=2.0, ge=1.0, description="the cap C of the importance weight")
    rollout_correction_cap_low: float | None = Field(default=None, ge=0.0, le=1.0, description="the lower bound; "
                                                     "default 1/cap for the mask modes and none for truncate")
    max_rollout_mismatch: float = Field(default=0.5, gt=0.0, description="stop the run when the mean |log pi_old - "
                                        "log pi_rollout| per token stays above this for mismatch_patience steps")
    mismatch_patience: int = Field(default=3, ge=1)

    # DAPO
    dynamic_sampling: bool = Field(default=False, description="drop groups whose rewards are all equal and resample")
    max_resample_rounds: int = Field(default=4, ge=1, description="generation rounds per step before giving up")
    overlong_buffer: int = Field(default=0, ge=0, description="soft overlong punishment length L_cache (0: off)")
    overlong_penalty: float = Field(default=1.0, ge=0.0)

    # PPO critic
    critic_model: str | None = Field(default=None, description="critic backbone; default a copy of the policy")
    critic_learning_rate: float = Field(default=1e-5, gt=0.0)
    critic_warmup_steps: int = Field(default=0, ge=0, description="steps that train only the critic, actor frozen")
    cliprange_value: float = Field(default=0.2, gt=0.0)

    # scale-out (incentivize.distributed)
    num_rollout_workers: int = Field(
        default=0, ge=0, description="Ray actors that sample and score the groups (0: this process; no Ray)"
    )
    num_learners: int = Field(
        default=1, ge=1, description="processes that share each step's batch, data-parallel (1: this process; no Ray)"
    )
    ray_address: str | None = Field(
        default=None, description="the Ray cluster of the workers ('auto', host:port); default a local Ray for the run"
    )

    # evaluation, logging, checkpoints
    eval_limit: int = Field(default=100, ge=1, description="held-out problems per evaluation")
    @model_validator(mode="after")
    def _consistent(self) -> RLConfig:
        if self.self_reward != "none":
            if self.num_generations < 2:
                raise ValueError("LaTRO's baseline is the mean reward of the other rationales of a question: "
                                 "num_rationales (num_generations) must be at least 2")
            if (self.environment != "none" or self.num_rollout_workers or self.rewards or self.format_reward
                    or self.advantage not in ("rloo", "grpo", "dr_grpo")):
                raise ValueError("self_reward rewards a rationale by the likelihood of the gold answer alone: drop "
                                 "environment, num_rollout_workers, rewards and format_reward, and use advantage rloo")
        if self.generation_batch_size % self.num_generations:
            raise ValueError(
                f"generation_batch_size ({self.generation_batch_size}) must be a multiple of num_generations "
                f"({self.num_generations}), the group size: change one of them so that whole groups fill the batch"
            )
        per_turn = self.environment != "none" and self.episode_reward == "per_turn"
        if per_turn != (self.environment != "none" and self.advantage == "grpo_process"):
            raise ValueError("episode_reward per_turn credits each turn as a step of advantage grpo_process: set both")
        if self.advantage == "grpo_process" and not per_turn and not any(spec.startswith("prm:") for spec in self.rewards):
            raise ValueError(
                "advantage 'grpo_process' needs step rewards from a process reward model: add --reward prm:DIR "
                "(a model written by `incentivize train prm`)"
            )
        if self.advantage in ("rloo", "grpo", "dr_grpo", "reinforce_pp_baseline", "grpo_process") and self.num_generations < 2:
            raise ValueError(f"advantage {self.advantage!r} compares samples of a group: num_generations must be >= 2")
        if self.prompts_per_step % self.num_learners:
            raise ValueError(
                f"num_learners ({self.num_learners}) must divide the groups of a step (generation_batch_size / "
                f"num_generations = {self.prompts_per_step}): each learner trains on whole groups"
            )
        if self.environment != "none":
            if self.num_rollout_workers or self.rewards or self.format_reward:
                raise ValueError(f"environment {self.environment!r}: its turns are rewarded by the environment in "
                                 "this process; drop num_rollout_workers, rewards and format_reward")
            if self.first_turn_beta is not None and (self.beta <= 0 or self.kl_in != "loss"):
                raise ValueError("first_turn_beta weighs the KL term of the loss per turn: set beta > 0 (the reference "
                                 "model) and kl_in=loss")
            if self.episode_reward == "shaped" and (self.environment != "self_correction" or self.max_turns != 2):
                raise ValueError("episode_reward 'shaped' is SCoRe's two attempts: set environment=self_correction "
                                 "and max_turns=2")
        elif self.first_turn_beta is not None or not self.train_first_turn:
            raise ValueError("first_turn_beta and train_first_turn are about the turns of an episode: set environment")
        if self.policy_loss == "gspo" and self.loss_type not in ("grpo", "seq_mean_token_mean"):
            raise ValueError("policy_loss gspo averages each sequence's tokens before the sequences (loss_type grpo); "
                             f"loss_type {self.loss_type!r} would weight a sequence by its length: set loss_type=grpo")
        if self.unbiased_kl and (self.beta <= 0 or self.kl_in != "loss" or self.kl_estimator != "k3"):
            raise ValueError("unbiased_kl corrects the k3 KL term of the loss: set beta > 0, kl_in=loss, kl_estimator=k3")
        if self.entropy_coef_min > self.entropy_coef_max:
            raise ValueError(f"entropy_coef_min ({self.entropy_coef_min}) is above entropy_coef_max "
                             f"({self.entropy_coef_max})")
        if self.reward_weights is not None and len(self.reward_weights) != 1 + len(self.rewards):
            raise ValueError(
                f"reward_weights has {len(self.reward_weights)} entries; it needs 1 + len(rewards) = {1 + len(self.rewards)}"
            )
        return self

    @property
    def prompts_per_step(self) -> int:
        return self.generation_batch_size // self.num_generations

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high

    @property
    def correction_mode(self) -> str:
        """The rollout correction in force: `rollout_correction`, with auto resolved."""
        if self.rollout_correction != "auto":
            return self.rollout_correction
        return "none" if not self.mixed_precision else "token_truncate"

    @property
    def mixed_precision(self) -> bool:
        """Whether the engine and the learner compute log-probs in different precisions: then the learner takes
        pi_old from its own first forward pass of the step, not from the engine."""
        return self.rollout_dtype != "float32" or self.learner_dtype != "float32"


# Each algorithm as the fields it sets; ALGORITHMS.md sections 1-4 give the sources. GRPO takes
# TRL's current default beta = 0 (no reference model, a quarter less compute per step); the paper's
# 0.04 is one `--set beta=0.04` away, as in configs/grpo_arithmetic.yaml.
#
# The field defaults above are the embedded default run (`incentivize train`): full fine-tuning of
# SmolLM2-135M-Instruct at lr 1e-5, 4 prompts x 8 completions at temperature 0.7, 28 steps. Measured
# on the 2-core CPU: held-out greedy accuracy 24% -> 43% (100 problems) in 10.4 minutes.
PRESETS: dict[str, dict[str, Any]] = {
    "grpo": {"advantage": "grpo", "loss_type": "grpo", "beta": 0.0, "kl_in": "loss", "kl_estimator": "k3"},
    "dr_grpo": {"advantage": "dr_grpo", "loss_type": "dr_grpo", "beta": 0.0, "scale_rewards": "none"},
    "dapo": {
        "advantage": "grpo", "loss_type": "dapo", "beta": 0.0, "epsilon_high": 0.28,
        "dynamic_sampling": True, "overlong_buffer": 16,
    },
    "rloo": {"advantage": "rloo", "loss_type": "grpo", "beta": 0.05, "kl_in": "reward", "kl_estimator": "k1",
             "ratio_level": "sequence"},
    "reinforce_pp": {"advantage": "reinforce_pp", "loss_type": "dapo", "beta": 0.01, "kl_in": "reward",
                     "kl_estimator": "k1", "num_generations": 1},
    "reinforce_pp_baseline": {"advantage": "reinforce_pp_baseline", "loss_type": "dapo", "beta": 0.01,
                              "kl_in": "reward", "kl_estimator": "k1"},
    "latro": {"advantage": "rloo", "loss_type": "grpo", "beta": 0.05, "kl_in": "reward", "kl_estimator": "k1",
              "ratio_level": "sequence", "self_reward": "sum", "temperature": 1.0},
    # GSPO: TRL's paper preset (importance_sampling_level sequence, loss_type grpo, beta 0, epsilon 3e-4/4e-4);
    # the ratio differs from 1 only from the second update of a batch on (TRL: steps_per_generation 4)
    "gspo": {"advantage": "grpo", "loss_type": "grpo", "beta": 0.0, "policy_loss": "gspo", "epsilon": 3e-4,
             "epsilon_high": 4e-4, "num_iterations": 2},
    # CISPO: no lower bound on the weight, capped at 1 + 4 = 5 (ScaleRL, slime's advice); token-level sum over the
    # batch's tokens (the paper's 1 / sum |o_i|)
    "cispo": {"advantage": "grpo", "loss_type": "dapo", "beta": 0.0, "policy_loss": "cispo", "epsilon": 1.0,
              "epsilon_high": 4.0, "num_iterations": 2},
    "ppo": {"advantage": "gae", "loss_type": "dapo", "beta": 0.05, "kl_in": "reward", "kl_estimator": "k1",
            "num_generations": 1, "critic_warmup_steps": 2},
}


def load_config(algorithm: str, path: str | Path | None = None, overrides: list[str] | None = None,
                rewards: list[str] | None = None) -> RLConfig:
    """The preset of `algorithm`, then the YAML file at `path`, then `key=value` overrides; `rewards`
    (the CLI's `--reward`) are added to the config's reward functions."""
    if algorithm not in PRESETS:
        raise IncentivizeError(_unknown("algorithm", algorithm, PRESETS))
    values: dict[str, Any] = {"algorithm": algorithm, **PRESETS[algorithm]}
    sources = [f"preset {algorithm}"]
    origins: dict[str, Path | str] = {}  # where each key was set, for error messages
    if path is not None:
        sources.append(str(path))
        from_file = _read_yaml(Path(path))
        values.update(from_file)
        origins.update(dict.fromkeys(map(str, from_file), Path(path)))
        if values.get("algorithm", algorithm) != algorithm:
            raise IncentivizeError(
                f"{path}: algorithm is {values['algorithm']!r} but the command trains {algorithm!r}; "
                "drop the key or run the matching command"
            )
        values["algorithm"] = algorithm
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_dotted(values, key, value)
        origins[key.partition(".")[0]] = f"--set {item}"
    if overrides:
        sources.append("--set")
        if values["algorithm"] != algorithm:
            raise IncentivizeError(
                f"--set algorithm={values['algorithm']} but the command trains {algorithm!r}; "
                f"run `incentivize train {values['algorithm']}` instead"
            )
    if rewards:
        values["rewards"] = [*values.get("rewards", []), *rewards]
        origins.setdefault("rewards", "--reward")
    return _validate(values, f"config ({' + '.join(sources)})", origins)  # type: ignore[no-any-return]


def load_reward_config(kind: str, path: str | Path | None = None, overrides: list[str] | None = None) -> RewardModelConfig:
    """`incentivize train orm|prm|rm`: defaults, then the YAML file at `path`, then `key=value` overrides."""
    return load_settings(RewardModelConfig, path, overrides, {"kind": kind})


def load_settings(schema: type[Settings], path: str | Path | None = None, overrides: list[str] | None = None,
                  fixed: dict[str, Any] | None = None, preset: dict[str, Any] | None = None) -> Settings:
    """A config of type `schema`: its defaults, the `preset` keys, then the YAML file at `path`, then
    `key=value` overrides; the `fixed` keys (set by the command, e.g. `kind`) may be repeated but not changed."""
    fixed = fixed or {}
    values: dict[str, Any] = {**(preset or {}), **fixed}
    origins: dict[str, Path | str] = {}
    if path is not None:
        from_file = _read_yaml(Path(path))
        values.update(from_file)
        origins.update(dict.fromkeys(map(str, from_file), Path(path)))
    for item in overrides or []:
        key, value = _parse_override(item, schema)
        _set_dotted(values, key, value)
        origins[key.partition(".")[0]] = f"--set {item}"
    for key, wanted in fixed.items():
        if values[key] != wanted:
            raise IncentivizeError(f"{_where(key, 'config', origins)}: {key} is {values[key]!r} but the command trains "
                                   f"{wanted!r}; drop the key or run `incentivize train {values[key]}`")
    sources = " + ".join(["defaults", *([str(path)] if path else []), *(["--set"] if overrides else [])])
    return _validate(values, f"config ({sources})", origins, schema)  # type: ignore[no-any-return]


def load_run_config(run_dir: str | Path) -> LifecycleSettings:
    """The resolved config a run directory was started with (its `config.yaml`), pointed at that directory:
    an `RLConfig`, `RewardModelConfig` (it has `kind`), `SFTConfig` or `VerifierRecipeConfig` (by `algorithm`)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise IncentivizeError(f"{run_dir} is not a run directory: {path} does not exist")
    values = _read_yaml(path)
    values["output_dir"] = str(run_dir)
    schema: type[LifecycleSettings] = RLConfig
    if "kind" in values:
        schema = RewardModelConfig
    elif values.get("algorithm") == "sft":
        schema = SFTConfig
    elif values.get("algorithm") == "verifier":
        schema = VerifierRecipeConfig
    elif values.get("algorithm") == "rlaif-vs-sft":
        schema = RlaifVsSftConfig
    elif values.get("algorithm") == "score":
        schema = ScoreConfig
    elif values.get("algorithm") in PREFERENCE_PRESETS:
        schema = PreferenceConfig
    return _validate(values, str(path), dict.fromkeys(map(str, values), path), schema)  # type: ignore[no-any-return]


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        what = "is a directory, not a YAML file" if path.is_dir() else "does not exist"
        raise IncentivizeError(f"config file {path} {what}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise IncentivizeError(f"{path}:{line}: not UTF-8 text; a config file is YAML text") from None
    except OSError as err:
        raise IncentivizeError(f"cannot read config file {path}: {describe(err)}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise IncentivizeError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise IncentivizeError(
            f"{path}: expected a mapping of config keys (`key: value` lines), got a YAML {type(data).__name__}"
        )
    return data


def _parse_override(item: str, schema: type[BaseModel] | None = None) -> tuple[str, Any]:
    """`key=value`, the value read as YAML (`3`, `1e-5`, `true`, `null`, `[a, b]`) unless the field is text."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise IncentivizeError(f"--set {item!r}: expected key=value, e.g. --set beta=0.04")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    field = (schema or RLConfig).model_fields.get(key)
    return key, value if field is None else _as_field_value(field.annotation, raw.strip(), value)


def _as_field_value(annotation: Any, text: str, parsed: Any) -> Any:
    """A field of text takes the text as typed (`--set model=2024` names a directory, not a number,
    `--set model=#1` is no YAML comment); `null` still clears an optional one, and a field that also
    takes a list still reads a YAML list."""
    options = set(get_args(annotation))
    if annotation is str or (options == {str, type(None)} and text not in ("null", "Null", "NULL", "~")):
        return text
    if str in options and isinstance(parsed, (bool, int, float)):
        return text
    return parsed


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """`task_options.num_ops=3` sets one entry of a dict field."""
    head, _, rest = key.partition(".")
    if not rest:
        values[head] = value
        return
    target = values.setdefault(head, {})
    if not isinstance(target, dict):
        raise IncentivizeError(f"--set {key}: {head} is not a mapping")
    target[rest] = value


def _validate(values: dict[str, Any], source: str, origins: dict[str, Path | str], schema: Any = None) -> Any:
    """An RLConfig, or an error that names where the bad key was set (`file.yaml:LINE`, `--set k=v`)."""
    schema = schema or RLConfig
    for alias, name in getattr(schema, "ALIASES", {}).items():
        if alias in values:
            if name in values:
                raise IncentivizeError(f"{_where(alias, source, origins)}: {alias} is another name of {name}, "
                                       "which is set too; give one of them")
            values[name] = values.pop(alias)
            origins[name] = origins.get(alias, source)
    unknown = [str(k) for k in values if k not in schema.model_fields]
    if unknown:
        where = _where(unknown[0], source, origins)
        raise IncentivizeError(f"{where}: {_unknown('config key', unknown[0], schema.model_fields)}")
    try:
        return schema(**values)
    except ValidationError as err:
        first = err.errors()[0]
        if not first["loc"]:  # a check across fields (`_consistent`): its message names them
            raise IncentivizeError(f"{source}: {first['msg'].removeprefix('Value error, ')}") from None
        field = ".".join(str(p) for p in first["loc"])
        given = f" (got {first['input']!r})" if not isinstance(first.get("input"), dict) else ""
        where = _where(str(first["loc"][0]), source, origins)
        raise IncentivizeError(f"{where}: {field}: {first['msg'].removeprefix('Value error, ')}{given}") from None


def _where(key: str, source: str, origins: dict[str, Path | str]) -> str:
    """`file.yaml:LINE` or `--set key=value` for a key set there, else `source`."""
    origin = origins.get(key)
    if isinstance(origin, Path):
        line = _key_line(origin, key)
        return f"{origin}:{line}" if line else str(origin)
    return origin or source


def _key_line(path: Path, key: str) -> int | None:
    """The line of top-level `key` in the YAML file at `path`."""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    if isinstance(node, yaml.MappingNode):
        for name, _ in node.value:
            if isinstance(name, yaml.ScalarNode) and name.value == key:
                return int(name.start_mark.line) + 1
    return None


def _unknown(kind: str, name: str, choices: Any) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f" (choices: {', '.join(sorted(choices))})"
    return f"unknown {kind} {name!r}{hint}"


class RunSettings(LifecycleSettings):
    """The keys every supervised command shares: the model it starts from and the task."""

    model: str = Field(default="smollm2-135m", description="the LM to start from (directory, .gguf or built-in name)")
    task: str = "arithmetic"
    task_options: dict[str, Any] = Field(default_factory=dict)


class SupervisedSettings(RunSettings):
    """The optimisation keys of the supervised trainers (`trainers/loop.py`)."""

    learning_rate: float = Field(default=1e-5, gt=0.0)
    batch_size: int = Field(default=16, ge=1, description="sequences (pairs for rm) per optimizer step")
    micro_batch_size: int = Field(default=8, ge=1, description="sequences per forward/backward (memory, not math)")
    max_length: int = Field(default=512, ge=8, description="tokens of prompt + completion kept")
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    linear_kernel: LinearKernelName = Field(default="auto", description="as in RL: onednn, torch or auto")


class RewardModelConfig(JudgeSettings, SupervisedSettings):
    """`incentivize train orm|prm|rm`: a reward model on the LM `model`, from sampled and checked
    solutions (orm, prm on a task that labels steps), PRM800K-style step labels (prm with `data`) or
    preference pairs (rm, `data` required). Defaults follow Cobbe et al. (T 0.7, lr 1e-5, 1 epoch,
    token-level targets) scaled down to a CPU."""

    RESUMABLE = SupervisedSettings.RESUMABLE | {"epochs"}

    kind: Literal["orm", "prm", "rm"] = "orm"
    generator: str | None = Field(default=None, description="LM that samples the training solutions; default `model`")
    data: str | None = Field(default=None, description="orm, prm: an earlier run's solutions.jsonl (no sampling); prm: or PRM800K-style JSONL; rm: pairs JSONL (prompt, chosen, rejected)")

    # the training solutions (orm, and prm without data)
    num_problems: int = Field(default=128, ge=1, description="training problems to sample solutions for")
    samples_per_problem: int = Field(default=8, ge=1, description="solutions sampled per problem (Cobbe et al.: 100)")
    temperature: float = Field(default=0.7, gt=0.0)
    max_completion_length: int = Field(default=96, ge=1)
    generation_batch_size: int = Field(default=64, ge=1, description="sequences sampled together")
    labeller: Literal["verifier", "judge"] = Field(default="verifier", description="orm: who labels the sampled "
                                                   "solutions right or wrong: the task's verifier or the AI judge `judge`")

    # targets and scoring
    target: Literal["token", "final"] = Field(default="token", description="orm: targets on every completion token or the last")
    outcome_loss: Literal["bce", "mse"] = "bce"
    lm_loss_weight: float = Field(default=0.0, ge=0.0, description="weight of the LM loss on the solutions (Cobbe et al.: 1)")
    neutral: Literal["positive", "negative"] = Field(default="positive", description="prm: a neutral step counts as")
    aggregation: Literal["prod", "min", "last"] = Field(default="prod", description="prm: steps to a solution score")

    # optimisation
    epochs: int = Field(default=1, ge=1)
    validation_share: float = Field(default=0.1, ge=0.0, lt=1.0, description="share of problems held out for validation")

    @model_validator(mode="after")
    def _judge(self) -> RewardModelConfig:
        if self.labeller == "judge" and (self.kind != "orm" or self.data is not None or self.judge is None):
            raise ValueError("labeller judge labels the solutions an orm run samples: set kind orm, judge=MODEL and "
                             "no data")
        return self


class SFTConfig(SupervisedSettings):
    """`incentivize train sft`: supervised fine-tuning on a task's reference solutions (the prompt is
    not a target). Cobbe et al. train the verifier's generator this way for 2 epochs."""

    RESUMABLE = SupervisedSettings.RESUMABLE | {"epochs"}

    algorithm: Literal["sft"] = "sft"
    data: str | None = Field(default=None, description="prompt-completion JSONL to fine-tune on (e.g. a teacher's "
                             "answers); default: the task's reference solutions")
    num_examples: int | None = Field(default=1024, ge=1, description="training problems used (None: all)")
    epochs: int = Field(default=2, ge=1)
    eval_limit: int = Field(default=100, ge=1, description="held-out problems for greedy accuracy before and after")


class VerifierRecipeConfig(RunSettings):
    """`incentivize train verifier`: Cobbe et al.'s recipe end to end on a task with reference
    solutions: SFT the generator, sample solutions per training problem and train an outcome
    verifier on them (initialised from the generator, jointly with the LM loss) and, where the task labels steps,
    a process verifier on the same solutions, then sample `eval_samples` per held-out problem and rerank. Defaults are the paper's scaled to a CPU. Each stage
    is a run of its own in a subdirectory; `save_steps` is theirs."""

    algorithm: Literal["verifier"] = "verifier"
    sft_epochs: int = Field(default=2, ge=0, description="generator fine-tuning epochs (0: use the model as is)")
    sft_examples: int = Field(default=512, ge=1)
    sft_learning_rate: float = Field(default=1e-5, gt=0.0)
    num_problems: int = Field(default=128, ge=1, description="training problems the verifier's data is sampled on")
    samples_per_problem: int = Field(default=8, ge=1, description="Cobbe et al.: 100")
    temperature: float = Field(default=0.7, gt=0.0)
    max_completion_length: int = Field(default=96, ge=1)
    verifier_epochs: int = Field(default=1, ge=1)
    verifier_learning_rate: float = Field(default=1e-5, gt=0.0)
    lm_loss_weight: float = Field(default=1.0, ge=0.0)
    target: Literal["token", "final"] = "token"
    process_verifier: bool = Field(default=True, description="also train a PRM (initialised from the generator) on "
                                   "the same solutions, step-labelled by the task, and rerank with it too")
    eval_samples: int = Field(default=16, ge=1, description="completions per held-out problem to rerank")
    eval_limit: int = Field(default=100, ge=1)


class RlaifVsSftConfig(JudgeSettings, RunSettings):
    """`incentivize train rlaif-vs-sft`: the comparison of "A Critical Evaluation of AI Feedback for Aligning
    LLMs" on one student `model`: (a) SFT on teacher `sft_teacher`'s answers; (b) (a), then DPO on pairs of its own
    samples labelled by the AI critic `critic`; (c) (a), then the same DPO with the task's verifier as an oracle
    critic. `oracle` as the teacher is the task's reference solutions; as the critic, its verifier. Each arm is a
    run of its own in a subdirectory; the held-out greedy accuracies go to `comparison.md` and `summary.json`."""

    algorithm: Literal["rlaif-vs-sft"] = "rlaif-vs-sft"
    sft_teacher: str = Field(default="oracle", description="the model whose greedy answers (a) fine-tunes on; oracle: "
                             "the task's reference solutions")
    critic: str = Field(default="smollm2-135m", description="the AI judge labelling (b)'s pairs; oracle: the verifier")
    sft_examples: int = Field(default=256, ge=1, description="training problems the teacher answers")
    sft_epochs: int = Field(default=2, ge=1)
    sft_learning_rate: float = Field(default=1e-5, gt=0.0)
    rounds: int = Field(default=2, ge=1, description="DPO rounds of self-sampled pairs, (b) and (c) alike")
    problems_per_round: int = Field(default=32, ge=1)
    samples_per_problem: int = Field(default=8, ge=2)
    dpo_learning_rate: float = Field(default=5e-6, gt=0.0)
    beta: float = Field(default=0.1, gt=0.0)
    judge_confidence: float = Field(default=0.6, ge=0.5, lt=1.0)
    max_completion_length: int = Field(default=64, ge=1)
    eval_limit: int = Field(default=100, ge=1)


class ScoreConfig(RunSettings):
    """`incentivize train score`: SCoRe (Kumar et al. 2024, ALGORITHMS.md section 9) on `model`, two RL runs on
    self-correction episodes (two attempts, the second after the correction instruction). Stage I: reward on the
    second attempt only, no policy gradient on the first, whose tokens are held near the starting model by the KL
    at `first_turn_beta`; stage II, from stage I's model: both attempts trained, reward r1 + r2 + shaping_alpha *
    (r2 - r1), KL `beta` on both. `stage1_steps: 0` is multi-turn RL without stage I (the paper's ablation)."""

    algorithm: Literal["score"] = "score"
    stage1_steps: int = Field(default=14, ge=0)
    stage2_steps: int = Field(default=14, ge=1)
    beta: float = Field(default=0.01, gt=0.0, description="KL coefficient (SCoRe's beta_1)")
    first_turn_beta: float = Field(default=0.1, ge=0.0, description="stage I's KL on the first attempt (beta_2)")
    shaping_alpha: float = Field(default=10.0, ge=0.0)
    learning_rate: float = Field(default=1e-5, gt=0.0)
    num_generations: int = Field(default=8, ge=2)
    generation_batch_size: int = Field(default=32, ge=2)
    max_completion_length: int = Field(default=64, ge=1)
    temperature: float = Field(default=0.7, gt=0.0)
    eval_limit: int = Field(default=100, ge=1)


# `incentivize train dpo|simpo|kto`: each name a preset of PreferenceConfig's keys (ALGORITHMS.md section 17).
PREFERENCE_PRESETS: dict[str, dict[str, Any]] = {
    "dpo": {"loss_type": "sigmoid", "beta": 0.1},
    "simpo": {"loss_type": "simpo", "beta": 2.5, "gamma": 1.375},
    "kto": {"loss_type": "kto", "beta": 0.1},
}


class PreferenceConfig(JudgeSettings, LoraSettings, SupervisedSettings):
    """`incentivize train dpo|simpo|kto`: preference optimization on pairs from `data` (TRL's format) or,
    with `pairs: self`, on pairs the policy samples itself each round, a correct completion against an
    incorrect one by the task's verifier (Iterative RPO: `rpo_alpha` 1 adds its NLL term)."""

    RESUMABLE = SupervisedSettings.RESUMABLE | {"epochs"}

    algorithm: Literal["dpo", "simpo", "kto"] = "dpo"
    loss_type: str = Field(default="sigmoid", description="sigmoid, ipo, cdpo, robust, hinge, simpo (pairs); kto (unpaired)")
    beta: float = Field(default=0.1, gt=0.0)
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5, description="cdpo, robust: the label-flip rate")
    gamma: float = Field(default=1.375, ge=0.0, description="simpo: the target margin")
    rpo_alpha: float = Field(default=0.0, ge=0.0, description="weight of the NLL of the chosen answer (RPO)")
    desirable_weight: float = Field(default=1.0, gt=0.0, description="kto")
    undesirable_weight: float = Field(default=1.0, gt=0.0, description="kto")
    data: str | None = Field(default=None, description="pairs JSONL (prompt, chosen, rejected); kto: prompt, completion, label")
    pairs: Literal["file", "self"] = Field(default="file", description="file: from data; self: sampled and verified")
    learning_rate: float = Field(default=1e-6, gt=0.0)
    batch_size: int = Field(default=8, ge=1, description="pairs (kto: answers) per optimizer step")
    micro_batch_size: int = Field(default=4, ge=1, description="pairs per forward/backward (memory, not math)")
    epochs: int = Field(default=1, ge=1, description="passes over the pairs (pairs: self: over each round's)")
    validation_share: float = Field(default=0.1, ge=0.0, lt=1.0, description="pairs held out (by prompt) for validation")
    eval_limit: int = Field(default=0, ge=0, description="held-out task problems for greedy accuracy (0: none)")

    # on-policy pairs (pairs: self)
    rounds: int = Field(default=1, ge=1, description="sample, pair and train; the trained policy is the next reference")
    problems_per_round: int = Field(default=64, ge=1)
    samples_per_problem: int = Field(default=8, ge=2, description="completions per problem to pair right with wrong")
    pairs_per_problem: int = Field(default=2, ge=1)
    labeller: Literal["verifier", "judge"] = Field(default="verifier", description="who picks the chosen answer of "
                                                   "a self-sampled pair: the task's verifier, or the AI judge `judge`")
    judge_confidence: float = Field(default=0.6, ge=0.5, lt=1.0, description="labeller judge: a pair is kept when the "
                                    "judge prefers one answer with at least this probability")
    temperature: float = Field(default=1.0, gt=0.0)
    max_completion_length: int = Field(default=64, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> PreferenceConfig:
        if self.pairs == "file" and self.data is None:
            raise ValueError("preference training needs pairs: --data pairs.jsonl, or --pairs self to sample them")
        if self.label_smoothing and self.loss_type not in ("cdpo", "robust"):
            raise ValueError(f"label_smoothing is for loss_type cdpo or robust; {self.loss_type!r} would ignore it")
        if self.labeller == "judge" and (self.pairs != "self" or self.judge is None):
            raise ValueError("labeller judge labels pairs the policy samples: set pairs=self and judge=MODEL")
        if self.pairs == "self" and self.loss_type == "kto":
            raise ValueError("--pairs self makes pairs; kto trains on unpaired answers from --data")
        if (self.loss_type == "kto") != (self.algorithm == "kto"):
            raise ValueError(f"loss_type {self.loss_type!r} does not go with `train {self.algorithm}`: kto trains on "
                             "unpaired answers, the others on pairs")
        return self


def load_preference_config(algorithm: str, path: str | Path | None = None,
                           overrides: list[str] | None = None) -> PreferenceConfig:
    """`incentivize train dpo|simpo|kto`: the preset, then the YAML file at `path`, then `key=value` overrides."""
    if algorithm not in PREFERENCE_PRESETS:
        raise IncentivizeError(_unknown("preference algorithm", algorithm, PREFERENCE_PRESETS))
    return load_settings(PreferenceConfig, path, overrides, {"algorithm": algorithm}, PREFERENCE_PRESETS[algorithm])
