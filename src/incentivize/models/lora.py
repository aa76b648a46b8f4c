"""LoRA adapters on a causal LM, through peft (Hu et al. 2021, arXiv 2106.09685).

Only the adapters train; the base weights stay frozen, so the model with its adapters disabled
(`model.disable_adapter()`) is the base model: the RL trainer uses it as the reference policy instead
of keeping a second copy.
"""

from __future__ import annotations

from typing import Any

from incentivize.errors import IncentivizeError


def with_lora(model: Any, *, r: int, alpha: int, dropout: float, target_modules: list[str] | str) -> Any:
    """`model` wrapped in rank-`r` LoRA adapters on `target_modules` (module names, or peft's
    "all-linear"); raises IncentivizeError when the names match no module of the model."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                      task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, lora)
    except ValueError as err:
        raise IncentivizeError(f"config lora_target_modules: {err}") from None
