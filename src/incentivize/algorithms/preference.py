"""Preference-optimisation losses (the DPO family): one registry of paired losses, plus KTO for unpaired data.

Every paired loss is
`loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta, *, chosen_lengths=None,
rejected_lengths=None, **params) -> (B,)`, the per-pair loss; the caller reduces it (a mean over pairs).
Log-probs are (B,) sums over the completion's tokens with the prompt masked (TRL `dpo_trainer.py`);
lengths are (B,) completion token counts. `params` are the family's `label_smoothing` (cdpo, robust) and
`gamma` (simpo): every loss accepts both, so a caller can pass one set to whichever loss is named, and
ignores the one it does not use (as it ignores lengths it does not need; the caller warns when a value is
set for a loss that ignores it). Any other name raises a TypeError, so a typo is not silently dropped.
Notation: `D_w = lp_w - ref_w`, `D_l = lp_l - ref_l`, `h = D_w - D_l`, `sig` the logistic function.

- `sigmoid`: DPO (Rafailov et al., arXiv 2305.18290, eq. 7): `-log sig(beta h)`.
- `ipo`: IPO (Azar et al., arXiv 2310.12036): `(h_avg - 1/(2 beta))^2` with beta playing tau.
  Deviation, as TRL: per-token log-ratios, `h_avg = D_w/|y_w| - D_l/|y_l|` (TRL says this was confirmed
  with the authors; the paper's h is the summed one). Needs both lengths.
- `cdpo`: conservative DPO (Mitchell, 2023 note, no arXiv id), label smoothing eps = `label_smoothing`
  in [0, 0.5], default 0: `(1-eps)(-log sig(beta h)) + eps(-log sig(-beta h))`. A name of its own:
  TRL <= 0.28 ran it as `sigmoid` + `label_smoothing`, TRL >= 0.29 silently ignores that for `sigmoid`.
- `robust`: provably robust DPO (Chowdhury et al., arXiv 2403.00409), eps = `label_smoothing` in
  [0, 0.5), default 0: `[(1-eps)(-log sig(beta h)) - eps(-log sig(-beta h))] / (1 - 2 eps)`, an unbiased
  estimate of the clean loss under label-flip rate eps. It can be negative.
- `hinge`: `relu(1 - beta h)`, TRL's "hinge" = RSO's hinge-norm (Liu et al., arXiv 2309.06657):
  reference-normalised, margin 1/beta. Not SLiC-HF's (arXiv 2305.10425) reference-free hinge.
- `simpo`: SimPO (Meng et al., arXiv 2405.14734), reference-free:
  `-log sig(beta lp_w/|y_w| - beta lp_l/|y_l| - gamma)`, `gamma` (default 0) the absolute margin as in
  TRL's CPO `simpo_gamma`; the official repo's `gamma_beta_ratio` is gamma / beta. The reference
  arguments are ignored and may be None (for `simpo` only; any other loss raises ValueError on None).
  Pure SimPO has no NLL term (TRL's CPO adds one by default, `cpo_alpha=1`).

Unpaired and helper functions (not in the registry, their inputs differ):
- `kto_loss`: KTO (Ethayarajh et al., arXiv 2402.01306), r = lp - ref; desirable
  `lam_D (1 - sig(beta (r - z0)))`, undesirable `lam_U (1 - sig(beta (z0 - r)))`.
- `kto_reference_point`: z0 = max(0, mean(lp - ref)) on mismatched pairs, detached (TRL's estimate).
- `nll_loss`: the NLL term of Iterative RPO (Pang et al., arXiv 2404.19733): loss = `sigmoid` +
  alpha * nll (alpha 1). Length-normalised per sequence, `-lp_w / |y_w|`; TRL's "sft" term is a token
  mean over all chosen tokens of the batch instead (the same when lengths are equal), and the paper's
  exact normaliser is unverified.
- `implicit_rewards`: `beta (lp - ref)` for chosen and rejected, detached, for the metrics TRL logs
  (rewards/chosen, rewards/rejected, margins = chosen - rejected, accuracies = chosen > rejected).

Choices: inputs are promoted to at least float32 before the math (bf16 log-probs keep their gradient
through the cast). A length below 1 counts as 1, so an empty completion (lp = 0) averages to 0, not NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from incentivize.algorithms.registry import Registry

PreferenceLoss = Callable[..., torch.Tensor]
PREFERENCE_LOSSES: Registry[PreferenceLoss] = Registry("preference loss")

FAMILY_PARAMS = ("label_smoothing", "gamma")  # the `**params` any paired loss accepts
Lengths = torch.Tensor | None


# --- shared pieces ------------------------------------------------------------------------------


def _float(values: torch.Tensor) -> torch.Tensor:
    return values.to(torch.promote_types(values.dtype, torch.float32))


def _check_shapes(**tensors: torch.Tensor | None) -> None:
    """Every tensor given is (B,) with the same B."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items() if t is not None}
    if any(len(shape) != 1 for shape in shapes.values()) or len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"preference inputs must all be (B,) sequence sums or counts; got {listed}")


def _log_ratios(
    what: str,
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) D_w and D_l; the reference log-probs are required. `what` names the caller in errors."""
    if ref_chosen_logps is None or ref_rejected_logps is None:
        name = "ref_chosen_logps" if ref_chosen_logps is None else "ref_rejected_logps"
        raise ValueError(f"{what} needs reference log-probs but {name} is None "
                         "(only the 'simpo' loss is reference-free)")
    _check_shapes(chosen_logps=chosen_logps, rejected_logps=rejected_logps, ref_chosen_logps=ref_chosen_logps,
                  ref_rejected_logps=ref_rejected_logps)
    return (_float(chosen_logps) - _float(ref_chosen_logps), _float(rejected_logps) - _float(ref_rejected_logps))


def _per_token(what: str, values: torch.Tensor, lengths: Lengths, name: str) -> torch.Tensor:
    """(B,) values / lengths, lengths clamped at 1; `name` is the argument named when it is missing."""
    if lengths is None:
        raise ValueError(f"{what} averages over tokens and needs {name} "
                         "((B,) completion token counts); it was None")
    _check_shapes(values=values, **{name: lengths})
    return values / lengths.to(values.dtype).clamp(min=1.0)


def _check_params(loss: str, params: dict[str, float]) -> None:
    """Refuse parameter names no loss of the family takes (a typo); the family's others are ignored."""
    unknown = sorted(set(params) - set(FAMILY_PARAMS))
    if unknown:
        raise TypeError(f"the {loss!r} preference loss got unknown parameter(s) {', '.join(unknown)} "
                        f"(the family's parameters: {', '.join(FAMILY_PARAMS)})")


def _check_smoothing(loss: str, eps: float, *, below_half: bool) -> None:
    if not (0.0 <= eps < 0.5 if below_half else 0.0 <= eps <= 0.5):
        bound = "0 <= label_smoothing < 0.5" if below_half else "0 <= label_smoothing <= 0.5"
        raise ValueError(f"the {loss!r} preference loss needs {bound} (the label-flip rate), got {eps}")


# --- paired losses ------------------------------------------------------------------------------


@PREFERENCE_LOSSES.register("sigmoid")
def sigmoid(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    beta: float,
    *,
    chosen_lengths: Lengths = None,
    rejected_lengths: Lengths = None,
    **params: float,
) -> torch.Tensor:
    """(B,) DPO loss -log sigmoid(beta h); lengths unused.

    >>> sigmoid(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]), 0.1)
    tensor([0.5981])
    """
    _check_params("sigmoid", params)
    chosen, rejected = _log_ratios("'sigmoid' loss", chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * (chosen - rejected))


@PREFERENCE_LOSSES.register("ipo")
def ipo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    beta: float,
    *,
    chosen_lengths: Lengths = None,
    rejected_lengths: Lengths = None,
    **params: float,
) -> torch.Tensor:
    """(B,) IPO loss (D_w/|y_w| - D_l/|y_l| - 1/(2 beta))^2, beta = tau; needs both lengths."""
    _check_params("ipo", params)
    chosen, rejected = _log_ratios("'ipo' loss", chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen = _per_token("'ipo' loss", chosen, chosen_lengths, "chosen_lengths")
    rejected = _per_token("'ipo' loss", rejected, rejected_lengths, "rejected_lengths")
    return (chosen - rejected - 1.0 / (2.0 * beta)) ** 2


@PREFERENCE_LOSSES.register("cdpo")
def cdpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    beta: float,
    *,
    chosen_lengths: Lengths = None,
    rejected_lengths: Lengths = None,
    label_smoothing: float = 0.0,
    **params: float,
) -> torch.Tensor:
    """(B,) conservative DPO: DPO on labels flipped with probability `label_smoothing` (in [0, 0.5])."""
    _check_params("cdpo", params)
    _check_smoothing("cdpo", label_smoothing, below_half=False)
    chosen, rejected = _log_ratios("'cdpo' loss", chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    logits = beta * (chosen - rejected)
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


@PREFERENCE_LOSSES.register("robust")
def robust(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    beta: float,
    *,
    chosen_lengths: Lengths = None,
    rejected_lengths: Lengths = None,
    label_smoothing: float = 0.0,
    **params: float,
) -> torch.Tensor:
    """(B,) robust DPO, unbiased under label-flip rate `label_smoothing` (in [0, 0.5)); can be negative."""
    _check_params("robust", params)
    _check_smoothing("robust", label_smoothing, below_half=True)
    chosen, rejected = _log_ratios("'robust' loss", chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    logits = beta * (chosen - rejected)
    kept, flipped = -F.logsigmoid(logits), -F.logsigmoid(-logits)
    return ((1.0 - label_smoothing) * kept - label_smoothing * flipped) / (1.0 - 2.0 * label_smoothing)


@PREFERENCE_LOSSES.register("hinge")
def hinge(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    beta: float,
    *,
    chosen_lengths: Lengths = None,
    rejected_lengths: Lengths = None,
    **params: float,
) -> torch.Tensor:
    """(B,) RSO hinge-norm relu(1 - beta h): zero, with no gradient, once h exceeds 1/beta."""
    _check_params("hinge", params)
    chosen, rejected = _log_ratios("'hinge' loss", chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return torch.relu(1.0 - beta * (chosen - rejected))


@PREFERENCE_LOSSES.register("simpo")
def simpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    beta: float,
    *,
    chosen_lengths: Lengths = None,
    rejected_lengths: Lengths = None,
    gamma: float = 0.0,
    **params: float,
) -> torch.Tensor:
    """(B,) SimPO loss -log sigmoid(beta lp_w/|y_w| - beta lp_l/|y_l| - gamma); the references are ignored.

    >>> simpo(torch.tensor([-10.0]), torch.tensor([-12.0]), None, None, 2.5, gamma=1.375,
    ...       chosen_lengths=torch.tensor([5]), rejected_lengths=torch.tensor([4]))
    tensor([0.2812])
    """
    _check_params("simpo", params)
    _check_shapes(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    chosen = _per_token("'simpo' loss", _float(chosen_logps), chosen_lengths, "chosen_lengths")
    rejected = _per_token("'simpo' loss", _float(rejected_logps), rejected_lengths, "rejected_lengths")
    return -F.logsigmoid(beta * (chosen - rejected) - gamma)


# --- unpaired data (KTO) ------------------------------------------------------------------------


def kto_reference_point(mismatched_logps: torch.Tensor, mismatched_ref_logps: torch.Tensor) -> torch.Tensor:
    """KTO's z0: max(0, mean(lp - ref)) over (B,) mismatched pairs, a detached scalar.

    The caller builds the mismatched pairs as TRL does: prompt i with the completion of example i - 1
    (cyclic within the batch), log-probs summed over that completion's tokens. With several ranks,
    average the unclamped means across ranks and clamp that (TRL clamps after its all-gather).

    >>> kto_reference_point(torch.tensor([-5.0, -7.0]), torch.tensor([-6.0, -6.0]))
    tensor(0.)
    """
    _check_shapes(mismatched_logps=mismatched_logps, mismatched_ref_logps=mismatched_ref_logps)
    if mismatched_logps.numel() == 0:
        raise ValueError("the KTO reference point needs at least one mismatched pair; the batch is empty")
    log_ratios = _float(mismatched_logps) - _float(mismatched_ref_logps)
    return log_ratios.mean().clamp(min=0.0).detach()


def kto_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    *,
    kl_estimate: torch.Tensor | float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """(B,) KTO loss; `desirable` (B,) bool marks the desirable examples, `kl_estimate` is z0 (detached here).

    KTO's paper suggests weights with desirable_weight * n_D / (undesirable_weight * n_U) in [1, 4/3].

    >>> kto_loss(torch.tensor([-10.0, -12.0]), torch.tensor([-11.0, -11.0]), torch.tensor([True, False]), 0.1,
    ...          kl_estimate=torch.tensor(0.3))
    tensor([0.4825, 0.4675])
    """
    _check_shapes(logps=logps, ref_logps=ref_logps, desirable=desirable)
    if desirable.dtype != torch.bool:
        raise ValueError(f"desirable must be a bool tensor, got {desirable.dtype}")
    log_ratios = _float(logps) - _float(ref_logps)
    z0 = torch.as_tensor(kl_estimate, dtype=log_ratios.dtype, device=log_ratios.device).detach()
    if z0.dim() != 0:
        raise ValueError(f"kl_estimate must be a scalar, got shape {tuple(z0.shape)}")
    desirable_loss = desirable_weight * (1.0 - torch.sigmoid(beta * (log_ratios - z0)))
    undesirable_loss = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - log_ratios)))
    return torch.where(desirable, desirable_loss, undesirable_loss)


# --- helpers ------------------------------------------------------------------------------------


def nll_loss(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """(B,) length-normalised NLL of the chosen completion, -lp_w / |y_w| (Iterative RPO's extra term).

    >>> nll_loss(torch.tensor([-10.0]), torch.tensor([5]))
    tensor([2.])
    """
    return -_per_token("nll_loss", _float(chosen_logps), chosen_lengths, "chosen_lengths")


def implicit_rewards(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) chosen and (B,) rejected implicit rewards beta (lp - ref), detached, for metrics.

    >>> implicit_rewards(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]),
    ...                  torch.tensor([-11.0]), 0.1)
    (tensor([0.1000]), tensor([-0.1000]))
    """
    chosen, rejected = _log_ratios("implicit_rewards", chosen_logps, rejected_logps, ref_chosen_logps,
                                   ref_rejected_logps)
    return (beta * chosen).detach(), (beta * rejected).detach()
