"""incentivize: post-train language models toward reasoning. Don't teach. Incentivize."""

__version__ = "0.1.0"
