"""How MixUnlearn's steps run (not what they compute): the options of
``MixUnlearn(step=..., cache=..., amp=..., ...)``, mixed precision, and the teacher
cache's sizing."""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from .augment import AUGMENTATIONS

STEPS = ("fast", "reference")
AMPS = ("off", "bf16", "fp16")


@dataclass
class EngineOptions:
    step: str = "fast"
    cache: bool = True
    cache_limit_mb: float | None = None
    augment: str | None = None
    amp: str = "off"
    channels_last: bool | None = None
    cuda_graphs: bool | None = None
    flush_subnormals: bool | None = None

    def validate(self, device: torch.device, config) -> "EngineOptions":
        if self.step not in STEPS:
            raise ValueError(f"step must be one of {STEPS}, got {self.step!r}")
        if self.amp not in AMPS:
            raise ValueError(f"amp must be one of {AMPS}, got {self.amp!r}")
        if self.augment == "none":
            self.augment = None
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be None or one of {AUGMENTATIONS}, got {self.augment!r}")
        if self.cache_limit_mb is not None and not (
            isinstance(self.cache_limit_mb, (int, float)) and self.cache_limit_mb >= 0 and math.isfinite(self.cache_limit_mb)
        ):
            raise ValueError(f"cache_limit_mb must be a finite number >= 0 (MiB), got {self.cache_limit_mb!r}")
        if self.cuda_graphs and self.amp == "fp16":
            raise ValueError("amp='fp16' needs a GradScaler, whose inf check reads the host every step and cannot be "
                             "captured: use --amp bf16 with --cuda-graphs, or --no-cuda-graphs")
        if self.cuda_graphs and device.type != "cuda":
            raise ValueError(
                f"cuda_graphs=True (--cuda-graphs) needs a CUDA device, but the device is {device}; "
                "leave it unset or pass --no-cuda-graphs"
            )
        if self.step == "reference":
            for name, off in (("amp", self.amp == "off"), ("augment", self.augment is None),
                              ("channels_last", not self.channels_last), ("cuda_graphs", not self.cuda_graphs),
                              ("flush_subnormals", not self.flush_subnormals)):
                if not off:
                    raise ValueError(f"step='reference' (--reference-step) is the plain eager step; it takes no {name} option")
            if config.reduction != "sum":
                raise ValueError(f"step='reference' computes the paper's sum reduction only, got reduction={config.reduction!r}")
        return self

    def use_cuda_graphs(self, device: torch.device) -> bool:
        """Only when asked for: the captured path has not yet run on a GPU (issue 5)."""
        return bool(self.cuda_graphs) and device.type == "cuda"

    def use_channels_last(self, model: nn.Module, sample_dim: int) -> bool:
        """Explicit choice, else on for convolutional models (4-d images) in the fast step.

        On CUDA and on the CPU alike: oneDNN's channels_last convolutions and pooling beat
        NCHW on the CPU too (SPEC 8's CNN: a forward and backward at batch 96 took 16 ms
        against 24 ms on one core; ResNet-18 and the digits CNN gain less but gain)."""
        if self.channels_last is not None:
            return bool(self.channels_last) and sample_dim == 4
        return self.step == "fast" and is_convolutional(model, sample_dim)

    def use_flush_subnormals(self, device: torch.device) -> bool:
        """Explicit choice, else on for the fast step on the CPU (see :func:`flush_subnormals_`)."""
        if self.flush_subnormals is not None:
            return bool(self.flush_subnormals)
        return self.step == "fast" and device.type == "cpu"

    def use_fused_adam(self, device: torch.device) -> bool:
        """Adam's one-kernel-per-tensor CPU implementation for the fast step (0.4 ms
        against 2.5 ms per step for SPEC 8's CNN on one core). CUDA keeps torch's default
        (foreach), which the CUDA-graph path captures with ``capturable=True``."""
        return self.step == "fast" and device.type == "cpu"


def is_convolutional(model: nn.Module, sample_dim: int) -> bool:
    """A model with 2-d convolutions fed 4-d images: the ones channels_last speeds up."""
    return sample_dim == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules())


@torch.no_grad()
def flush_subnormals_(*modules: nn.Module) -> None:
    """Set the floating-point parameters' subnormal values (below ``finfo.tiny``) to zero.

    Why: training with weight decay leaves the weights of dead units decaying through
    the subnormal range (a trained SPEC 8 CNN had 6,600 of them), and x86 CPUs handle
    each subnormal operand in microcode. On this project's CPU its first linear layer
    ran 11.7 ms at batch 96, 1.1 ms once they were zeroed; a fast step took 1.5x as
    long. A value below 1.2e-38 adds nothing an fp32 sum of the model's activations can
    show, so zeroing it changes the results by rounding at most. Only fastmix's own copies (the unlearner, the
    frozen f_D, the MixBlock) are flushed, never the caller's model. Not
    ``torch.set_flush_denormal``: that flag is per thread, and the intra-op threads
    already started keep their own.
    """
    for module in modules:
        for p in module.parameters():
            if p.is_floating_point():
                p.masked_fill_(p.abs() < torch.finfo(p.dtype).tiny, 0)


class Amp:
    """Autocast of the unlearner's forward (losses stay fp32: callers take ``.float()``
    of the logits) and, for fp16, GradScalers (their inf check reads the host).

    ``graphs=True`` turns autocast's weight-cast cache off, as PyTorch asks for CUDA-graph
    capture: a cast cached outside a graph would be replayed stale after the weights move."""

    def __init__(self, mode: str, device: torch.device, graphs: bool = False):
        self.mode = mode
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
        self.cache = not graphs
        self.scalers = {}

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=self.cache)

    def _scaler(self, opt):
        if id(opt) not in self.scalers:
            self.scalers[id(opt)] = torch.amp.GradScaler(self.device.type)
        return self.scalers[id(opt)]

    def scale(self, loss, opt):
        return self._scaler(opt).scale(loss) if self.mode == "fp16" else loss

    def step(self, opt) -> None:
        if self.mode == "fp16":
            scaler = self._scaler(opt)
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device``: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_cache_fits(nbytes: int, limit_mb: float | None, device: torch.device) -> float:
    """The cache's limit in MiB (given, or half the free memory); refuse a cache over it."""
    limit = limit_mb if limit_mb is not None else available_bytes(device) / 2 / 2**20
    need = nbytes / 2**20
    if need > limit:
        raise ValueError(
            f"the teacher cache needs {need:.4g} MiB on {device}, over its limit of {limit:.4g} MiB "
            f"({'cache_limit_mb' if limit_mb is not None else 'half the free memory'}); raise the limit with "
            "cache_limit_mb= (--cache-limit-mb MB), or compute f_D's outputs every step with cache=False (--no-cache)"
        )
    return limit
