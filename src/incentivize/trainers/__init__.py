"""Thin training loops that compose rollout, rewards, algorithms and an optimizer."""
