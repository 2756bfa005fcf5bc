"""How MixUnlearn's steps run (not what they compute): the helpers behind the engine
options of :class:`fastmix.mixunlearn.config.EngineOptions`: mixed precision, the
subnormal flush, the teacher cache's sizing."""
from __future__ import annotations

import contextlib
import os

import torch
from torch import nn


def is_convolutional(model: nn.Module, sample_dim: int) -> bool:
    """A model with 2-d convolutions fed 4-d images: the ones channels_last speeds up."""
    return sample_dim == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules())


@torch.no_grad()
def flush_subnormals_(*modules: nn.Module) -> None:
    """Set the floating-point parameters' subnormal values (below ``finfo.tiny``) to zero.

    Why: training with weight decay leaves the weights of dead units decaying through
    the subnormal range, and x86 CPUs handle each subnormal operand in microcode (the
    cost is measured in BENCHMARKS.md, "CPU: a Fashion-MNIST class-level epoch"). A value below
    1.2e-38 adds nothing an fp32 sum of the model's activations can show, so zeroing it
    changes the results by rounding at most. Only fastmix's own copies (the unlearner,
    the frozen f_D, the MixBlock) are flushed, never the caller's model. Not
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
