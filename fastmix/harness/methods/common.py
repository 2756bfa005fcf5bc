"""What the baseline methods share: reading their settings, refusing a setting they
cannot run in, seeded batches, one training loop, the result with its seconds."""
from __future__ import annotations

import copy
import time
from typing import Callable, Iterable

import torch
from torch import nn

from fastmix.harness import training
from fastmix.progress import progress_bar
from fastmix.settings import setting_fields, validate

from . import MethodContext, MethodResult, check_labels


def read_settings(cls, options: dict):
    """An instance of the settings dataclass ``cls`` from the flat ``options``: a key
    named like a field sets it; a missing key (or None, a flag not given) keeps the
    default. Every value is checked."""
    given = {f.name: options[f.name] for f in setting_fields(cls) if options.get(f.name) is not None}
    return validate(cls(**given))


def needs_labels(method: str, ctx: MethodContext) -> None:
    """Refuse the label-agnostic setting, before any work, for a method registered as needing
    the true labels (``register(..., needs_labels=...)``) with these options."""
    if ctx.labels not in ("aware", "agnostic"):
        raise ValueError(f"labels must be 'aware' or 'agnostic', got {ctx.labels!r}")
    check_labels(method, ctx.labels, ctx.options)


def student(ctx: MethodContext) -> nn.Module:
    """A trainable copy of the original model (``ctx.original`` is never modified), laid
    out as fastmix trains every model (:func:`fastmix.harness.training.trainer_layout`):
    every method's seconds (the RTE column) are measured on the same terms."""
    model = copy.deepcopy(ctx.original)
    training.trainer_layout(model, ctx.x_forget.dim())
    return model.train().requires_grad_(True)


def frozen_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval().requires_grad_(False)


def sgd(model: nn.Module, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4) -> torch.optim.SGD:
    """The optimiser of the reference codes (Unlearn-Sparse, Unlearn-Saliency, SCRUB's
    distillation; SCRUB's NegGrad+ runs without momentum and weight decay)."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


def generator(ctx: MethodContext) -> torch.Generator:
    return torch.Generator(device=ctx.x_forget.device).manual_seed(ctx.seed)


def shuffled(gen: torch.Generator, n: int, batch_size: int) -> tuple[torch.Tensor, ...]:
    """One epoch of index batches; the last may be short."""
    return torch.randperm(n, generator=gen, device=gen.device).split(batch_size)


def cycled(gen: torch.Generator, n: int, batch_size: int, count: int) -> list[torch.Tensor]:
    """``count`` batches of ``batch_size`` indices into ``n`` samples, each pass a fresh
    permutation (the pairing partner of a longer set, like ``itertools.cycle``)."""
    need = count * batch_size
    order = torch.cat([torch.randperm(n, generator=gen, device=gen.device) for _ in range((need + n - 1) // n)])
    return list(order[:need].split(batch_size))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def fit(opt: torch.optim.Optimizer, loss_of: Callable, batches_of: Callable[[int], Iterable], *, epochs: int,
        total: int, desc: str, quiet: bool, after_step: Callable[[], None] | None = None) -> None:
    """The loop every trained baseline uses: for each epoch, for each batch of
    ``batches_of(epoch)``, one optimiser step on ``loss_of(epoch, batch)``, then
    ``after_step()``. ``total`` (all the steps) only sizes the progress bar. Nothing is
    read back to the host."""
    with progress_bar(total=total, desc=desc, quiet=quiet) as bar:
        for epoch in range(epochs):
            for batch in batches_of(epoch):
                loss = loss_of(epoch, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if after_step is not None:
                    after_step()
                bar.update(1)


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
    model.train(was_training)
    return out


def original_logits(ctx: MethodContext, which: str) -> torch.Tensor:
    """The original model's logits on D_f (``which="forget"``) or D_r (``"retain"``), one
    row per sample, computed once per run (eval mode, batches of 1024, no autograd).

    For the distillation-style baselines: the original is frozen and the data are not
    augmented, so its logits on a sample are the same in every epoch; indexing these
    rows gives what a forward pass of the frozen copy on each batch gave (a model whose
    outputs for a sample depend on the other samples of its batch would differ, but
    in eval mode BatchNorm uses its running statistics)."""
    if which not in ("forget", "retain"):
        raise ValueError(f"which must be 'forget' or 'retain', got {which!r}")
    return logits_of(ctx.original, ctx.x_forget if which == "forget" else ctx.x_retain)


def num_classes(ctx: MethodContext) -> int:
    return int(logits_of(ctx.original, ctx.x_forget[:1]).shape[1])


def done(ctx: MethodContext, model: nn.Module, start: float, extras: dict | None = None) -> MethodResult:
    """The result: the model frozen in eval mode and in the default layout, the seconds
    since ``start`` (after the device has finished)."""
    if ctx.x_forget.device.type == "cuda":
        torch.cuda.synchronize(ctx.x_forget.device)
    model.to(memory_format=torch.contiguous_format)
    return MethodResult(model.eval().requires_grad_(False), time.perf_counter() - start, extras or {})
