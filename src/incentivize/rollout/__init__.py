"""The generation engine: token ids in, completion ids, sampling log-probabilities and masks out."""

from incentivize.rollout.engine import Rollouts, SamplingParams, generate

__all__ = ["Rollouts", "SamplingParams", "generate"]
