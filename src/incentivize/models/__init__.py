"""Models: `load(spec) -> (model, tokenizer)` for local directories, GGUF files and built-in names."""

from incentivize.models.loading import BUILTIN_MODELS, cache_dir, load

__all__ = ["BUILTIN_MODELS", "cache_dir", "load"]
