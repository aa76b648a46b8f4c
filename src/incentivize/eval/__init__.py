"""Evaluation: sampling a model on a task and scoring it (pass@k, maj@k)."""
