"""Inference-time compute: choosing one answer among N sampled completions (voting, best-of-N by a
verifier, verifier-weighted voting, top-k voting) and the accuracy-vs-N sweep. Pure Python."""

from incentivize.inference.selection import *  # noqa: F403 - the package's API is the module's
from incentivize.inference.selection import __all__ as __all__
