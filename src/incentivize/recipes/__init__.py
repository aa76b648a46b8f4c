"""Multi-stage methods built on the trainers."""
