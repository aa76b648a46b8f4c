"""Rewards: answer extraction, answer equivalence, built-in and user reward functions."""

from incentivize.rewards.extract import extract_answer, has_final_answer_marker, normalize_number
from incentivize.rewards.functions import completion_text, correctness_reward, format_reward
from incentivize.rewards.user import RewardCall, call_reward_function, load_reward_function, reward_name
from incentivize.rewards.verify import answers_match

__all__ = [
    "RewardCall",
    "answers_match",
    "call_reward_function",
    "completion_text",
    "correctness_reward",
    "extract_answer",
    "format_reward",
    "has_final_answer_marker",
    "load_reward_function",
    "normalize_number",
    "reward_name",
]
