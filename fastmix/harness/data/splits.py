"""The forgetting splits of SPEC section 8 (shared with Label-Agnostic Forgetting)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ForgetSplit:
    """Indices into the training set: ``forget`` (D_f) and ``retain`` (D_r), both sorted."""

    setting: str  # "class" or "data"
    forget: torch.Tensor
    retain: torch.Tensor
    forget_classes: tuple[int, ...]


def parse_classes(text: str) -> tuple[int, ...]:
    """``"0"``, ``"5-9"``, ``"1,3,5-7"`` -> sorted class indices."""
    out: set[int] = set()
    try:
        for part in str(text).split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                out.update(range(lo, hi + 1))
            else:
                out.add(int(part))
    except ValueError:
        raise ValueError(f"classes must look like '0', '5-9' or '1,3,5-7', got {text!r}") from None
    return tuple(sorted(out))


def _check_classes(classes, num_classes: int) -> tuple[int, ...]:
    classes = tuple(int(c) for c in classes)
    if not classes or any(not 0 <= c < num_classes for c in classes):
        raise ValueError(f"forget classes must be in 0..{num_classes - 1}, got {classes}")
    return classes


def class_split(labels: torch.Tensor, classes, num_classes: int) -> ForgetSplit:
    """Class-level: D_f is every training sample of ``classes``."""
    classes = _check_classes(classes, num_classes)
    mask = torch.isin(labels, torch.tensor(classes, dtype=labels.dtype))
    if not mask.any():
        raise ValueError(f"no training sample has a label in {classes}")
    if mask.all():
        raise ValueError(f"forgetting classes {classes} forgets every training sample and leaves D_r empty: there "
                         "would be no retrained model to compare with; forget fewer classes")
    return ForgetSplit("class", mask.nonzero().squeeze(1), (~mask).nonzero().squeeze(1), classes)


def data_split(labels: torch.Tensor, fraction: float, classes, num_classes: int, seed: int) -> ForgetSplit:
    """Data-level: D_f is a seeded random ``fraction`` of the samples labelled ``classes``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"forget fraction must be in (0, 1), got {fraction}")
    classes = _check_classes(classes, num_classes)
    candidates = torch.isin(labels, torch.tensor(classes, dtype=labels.dtype)).nonzero().squeeze(1)
    n = int(round(fraction * candidates.numel()))
    if n == 0:
        raise ValueError(f"a fraction {fraction} of the {candidates.numel()} samples of classes {classes} is empty")
    g = torch.Generator().manual_seed(seed)
    forget = candidates[torch.randperm(candidates.numel(), generator=g)[:n]].sort().values
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[forget] = True
    return ForgetSplit("data", forget, (~mask).nonzero().squeeze(1), classes)


def make_split(labels, num_classes, setting, *, forget_class=0, forget_classes="5-9", forget_fraction=0.4, seed=0):
    """The split the CLI asks for: ``setting`` is ``"class"`` or ``"data"``."""
    if setting == "class":
        try:
            classes = parse_classes(forget_class) if isinstance(forget_class, str) else (forget_class,)
            return class_split(labels, classes, num_classes)
        except ValueError as e:
            raise ValueError(f"--forget-class {forget_class}: {e}") from None
    if setting == "data":
        try:
            classes = parse_classes(forget_classes) if isinstance(forget_classes, str) else tuple(forget_classes)
            return data_split(labels, forget_fraction, classes, num_classes, seed)
        except ValueError as e:
            raise ValueError(f"--forget-classes {forget_classes} --forget-fraction {forget_fraction}: {e}") from None
    raise ValueError(f"setting must be 'class' or 'data', got {setting!r}")
