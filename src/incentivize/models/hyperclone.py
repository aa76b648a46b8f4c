"""HyperCloning (Samragh et al. 2024, "Scaling Smart: Accelerating Large Language Model Pre-training with Small
Model Initialization", arXiv 2409.12903): a wider model that computes the same function as a smaller one.

Every hidden vector of the wide model is `width_factor` copies of the small model's, h' = [h; h; ...]. A linear
layer whose input and output both widen becomes n x n blocks of W / n (each output copy sums the n input copies,
so it gets W h); the embedding copies its columns; the LM head reads n copies, so its blocks are W / n; RMSNorm
weights are copied (the RMS of n copies of h is the RMS of h). Attention widens by its number of heads, not their
size: query, key and value heads are copied as whole heads (with grouped-query attention the i-th query head of a
copy still reads the i-th key-value group of the same copy), each copy attends exactly as the original head, and
RoPE and the 1/sqrt(head_dim) scale are unchanged. The same holds for SwiGLU, whose gate and up projections widen
like the hidden size.

`noise` > 0 is the paper's noisy variant: each block of a layer whose input widened gets Gaussian noise (std `noise`
times the std of W / n) such that the noises over the n input blocks of a row sum to zero, so that the output
copies are no longer identical (training can make them differ) while the function stays the same.

The embedding and the LM head are untied in the wide model (SmolLM2 ties them): the embedding must copy its rows
unscaled and the head must average its inputs, which one shared matrix cannot do. Supported: the Llama
architecture (`LlamaForCausalLM`: SmolLM2, Llama, and Mistral-style models without attention biases).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from incentivize.errors import IncentivizeError

SUPPORTED = ("llama", "mistral")


def widen_linear(weight: torch.Tensor, out_factor: int, in_factor: int, noise: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """(out_factor * out, in_factor * in): blocks W / in_factor, plus noise that sums to zero over each row's input
    blocks. Applied to `in_factor` copies of x it gives `out_factor` copies of W x.

    >>> w = torch.tensor([[1.0, 2.0]])
    >>> widen_linear(w, 2, 2).tolist()
    [[0.5, 1.0, 0.5, 1.0], [0.5, 1.0, 0.5, 1.0]]
    >>> x = torch.tensor([3.0, 4.0])
    >>> (widen_linear(w, 2, 2, noise=1.0, generator=torch.Generator().manual_seed(0)) @ x.repeat(2)).tolist()
    [11.0, 11.0]
    """
    wide = weight.repeat(out_factor, in_factor) / in_factor
    if noise <= 0 or in_factor == 1:
        return wide
    rows, columns = weight.shape
    scale = noise * float((weight / in_factor).float().std())
    for block in range(out_factor):
        draws = torch.randn((in_factor - 1, rows, columns), generator=generator, dtype=torch.float32) * scale
        parts = [*draws, -draws.sum(dim=0)]  # they cancel on identical inputs
        for k, part in enumerate(parts):
            wide[block * rows:(block + 1) * rows, k * columns:(k + 1) * columns] += part.to(wide.dtype)
    return wide


def hyperclone(model: Any, width_factor: int = 2, noise: float = 0.0, seed: int = 0) -> Any:
    """A model `width_factor` times as wide as `model` (hidden size, MLP size and number of heads), computing the
    same logits (up to float rounding); `noise` as in the module's docstring."""
    config = model.config
    if getattr(config, "model_type", None) not in SUPPORTED:
        raise IncentivizeError(f"HyperCloning supports the {' and '.join(SUPPORTED)} architectures (e.g. SmolLM2, "
                               f"LlamaForCausalLM); this model is {getattr(config, 'model_type', type(model).__name__)!r}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise IncentivizeError("HyperCloning supports Llama models without attention or MLP biases")
    if width_factor < 1:
        raise IncentivizeError(f"width_factor must be at least 1, got {width_factor}")
    if noise < 0:
        raise IncentivizeError(f"noise must be >= 0, got {noise}")
    n = width_factor
    wide_config = copy.deepcopy(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    wide_config.hidden_size = config.hidden_size * n
    wide_config.intermediate_size = config.intermediate_size * n
    wide_config.num_attention_heads = config.num_attention_heads * n
    wide_config.num_key_value_heads = (config.num_key_value_heads or config.num_attention_heads) * n
    wide_config.head_dim = head_dim
    wide_config.tie_word_embeddings = False
    dtype = next(model.parameters()).dtype
    wide = AutoModelForCausalLM.from_config(wide_config, dtype=dtype)
    generator = torch.Generator().manual_seed(seed)
    source = model.state_dict()
    if "lm_head.weight" not in source:  # tied: the head is the embedding
        source["lm_head.weight"] = source["model.embed_tokens.weight"]
    target = {}
    for name, weight in source.items():
        if name == "model.embed_tokens.weight":
            target[name] = weight.repeat(1, n)
        elif name == "lm_head.weight":
            target[name] = widen_linear(weight, 1, n, noise, generator)
        elif weight.dim() == 1:  # RMSNorm weights
            target[name] = weight.repeat(n)
        elif weight.dim() == 2:
            target[name] = widen_linear(weight, n, n, noise, generator)
        else:
            raise IncentivizeError(f"HyperCloning does not know how to widen {name} {tuple(weight.shape)}")
    missing, unexpected = wide.load_state_dict(target, strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise IncentivizeError(f"HyperCloning left weights unset ({missing[:3]}) or unused ({unexpected[:3]})")
    return wide.eval()
