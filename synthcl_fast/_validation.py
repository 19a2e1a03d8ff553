"""Checks of user input with errors that name the argument. Kernels get only what passes here.

Only what is known on the host is checked here (types, shapes, dtypes, devices, Python numbers): reading a
tensor's value would synchronize with the device on every call. Values of tensors are handled where they
live (reference.py, conventions): any negative label is a never-positive one, and a temperature tensor out of
range makes the results NaN. SYNTHCL_FAST_CHECK_VALUES=1 adds host checks of tensor values with errors that
name the argument (one synchronization per call: for debugging).
"""

from __future__ import annotations

import math
import numbers
import os

import torch

from .reference import MIN_TEMPERATURE

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("mean", "sum", "none")
CHECK_VALUES_ENV = "SYNTHCL_FAST_CHECK_VALUES"


def _check_values() -> bool:
    """Host checks of tensor values (SYNTHCL_FAST_CHECK_VALUES=1); never while compiling."""
    return os.environ.get(CHECK_VALUES_ENV) == "1" and not torch.compiler.is_compiling()


def check_features(x, name: str, ndim: int = 2, allow_empty: bool = False) -> torch.Tensor:
    """A floating tensor of `ndim` dimensions (rows, dim) with no zero-sized dimension."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.shape[-1] == 0 or (not allow_empty and x.numel() == 0):
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    return x


def check_like(x: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    """x matches ref in feature dimension, dtype and device."""
    if x.shape[-1] != ref.shape[-1]:
        raise ValueError(f"{name} has feature dimension {x.shape[-1]} but {ref_name} has {ref.shape[-1]}")
    if x.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but {ref_name} has {ref.dtype}")
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}")


def check_labels(labels, name: str, length: int, device: torch.device) -> torch.Tensor:
    """Integer labels of shape (length,) on `device`, returned as int64. A negative label (-1, or any other
    negative value) marks a row that is never a positive."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {labels.dtype}")
    if labels.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},), got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"{name} is on {labels.device} but the features are on {device}")
    return labels.to(torch.int64)


def check_positive_scalar(value, name: str, like: torch.Tensor, minimum: float = 0.0,
                          maximum: float = math.inf) -> torch.Tensor:
    """A finite value in (0, inf) and in [minimum, maximum] (a Python number or a one-element tensor, which
    may require grad) as a 0-d tensor."""
    acc = torch.float64 if like.dtype == torch.float64 else torch.float32
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or not value.dtype.is_floating_point:
            raise ValueError(f"{name} must be a float or a floating tensor with one element, "
                             f"got shape {tuple(value.shape)} and dtype {value.dtype}")
        if value.device != like.device:
            raise ValueError(f"{name} is on {value.device} but the features are on {like.device}")
        value = value.reshape(())
        if _check_values():
            _check_range(float(value.detach()), name, minimum, maximum)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    _check_range(value, name, minimum, maximum)
    return torch.full((), float(value), dtype=acc, device=like.device)


def _check_range(number: float, name: str, minimum: float, maximum: float) -> None:
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name} must be finite and > 0, got {number}")
    if not minimum <= number <= maximum:
        raise ValueError(f"{name} must be in [{minimum:g}, {maximum:g}], got {number}")


def check_temperature(value, like: torch.Tensor) -> torch.Tensor:
    return check_positive_scalar(value, "temperature", like, minimum=MIN_TEMPERATURE)


def check_logit_scale(value, like: torch.Tensor) -> torch.Tensor:
    return check_positive_scalar(value, "logit_scale", like, maximum=1 / MIN_TEMPERATURE)


def check_reduction(reduction) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite float > 0, got {eps!r}")
    return float(eps)


# ------------------------------------------------------------------- variants of the op (synthcl_fast.variants)
DENOMINATORS = ("all", "negatives", "per_positive")


def check_denominator(denominator) -> str:
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
    return denominator


def check_beta(beta) -> float:
    """HCL's hardness: any finite real (0: negatives unweighted)."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta):
        raise ValueError(f"beta must be a finite float, got {beta!r}")
    return float(beta)


def check_tau_plus(tau_plus) -> float:
    """The debiasing prior of Chuang et al.: the probability that a negative shares the anchor's class, in [0, 1)."""
    if isinstance(tau_plus, bool) or not isinstance(tau_plus, numbers.Real) or not 0 <= tau_plus < 1:
        raise ValueError(f"tau_plus must be a float in [0, 1), got {tau_plus!r}")
    return float(tau_plus)


def check_positive_weight(weight, n_rows: int, like: torch.Tensor) -> torch.Tensor | None:
    """None, a float, or a floating tensor of shape () or (n_rows,) (may require grad) -> None or (n_rows,)."""
    if weight is None:
        return None
    acc = torch.float64 if like.dtype == torch.float64 else torch.float32
    if isinstance(weight, torch.Tensor):
        if weight.shape not in ((), (1,), (n_rows,)) or not weight.dtype.is_floating_point:
            raise ValueError(f"positive_weight must be a float or a floating tensor of shape () or ({n_rows},), "
                             f"got shape {tuple(weight.shape)} and dtype {weight.dtype}")
        if weight.device != like.device:
            raise ValueError(f"positive_weight is on {weight.device} but the features are on {like.device}")
        return weight.to(acc).reshape(-1).expand(n_rows)
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
        raise ValueError(f"positive_weight must be a finite float or a tensor, got {weight!r}")
    return torch.full((n_rows,), float(weight), dtype=acc, device=like.device)
