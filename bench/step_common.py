"""Set-up shared by the step groups (test_step.py, test_step_generator.py)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from bench_common import DEVICE, ON_GPU, impl_skip
from cases import smoke_skip

from fastmix.harness.models import MnistCNN, ResNet18
from fastmix.mixunlearn.mixblock import MixBlock

B = 32
ALPHA, TAU_GEN, TAU_MIX, TAU_REAL, OMEGA = 0.75, 1.0, 10.0, 10.0, 1.0
LR, GEN_LR = 5e-5, 1e-3

# name: (model class, image shape (C, H, W), shape of its feature layer's output (C, h, w))
MODELS = {
    "mnist-cnn": (MnistCNN, (1, 28, 28), (32, 7, 7)),
    "resnet18": (ResNet18, (3, 32, 32), (256, 8, 8)),
}


@dataclass
class StepSetup:
    backend: str | None
    model: torch.nn.Module
    mixblock: MixBlock
    size: tuple[int, int]
    image: tuple[int, int, int]
    make_inputs: object


def setup_step(impl: str, model_name: str, layout: str) -> StepSetup:
    """The unlearner (a fresh model of ``model_name``), a MixBlock and an input maker:
    forget and retain images, their cached features from the frozen model, labels."""
    backend = impl_skip(impl)
    if model_name == "resnet18" and not ON_GPU:
        pytest.skip("ResNet-18 steps take seconds each on this CPU; the step groups time it on a GPU only")
    cls, (C, H, W), feat = MODELS[model_name]
    smoke_skip(impl, (B, C, H, W), [(B, 1, 28, 28)], layout)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    model = cls().to(DEVICE).to(memory_format=fmt).train()
    torch.manual_seed(1)
    mixblock = MixBlock(feat[0]).to(DEVICE).to(memory_format=fmt)

    def make_inputs():
        x_f = torch.randn(B, C, H, W, device=DEVICE).contiguous(memory_format=fmt)
        x_r = torch.randn(B, C, H, W, device=DEVICE).contiguous(memory_format=fmt)
        h_f = torch.randn(B, *feat, device=DEVICE).relu_().contiguous(memory_format=fmt)
        h_r = torch.randn(B, *feat, device=DEVICE).relu_().contiguous(memory_format=fmt)
        y_f = torch.randint(0, 10, (B,), device=DEVICE)
        y_r = torch.randint(0, 10, (B,), device=DEVICE)
        return x_f, x_r, h_f, h_r, y_f, y_r

    return StepSetup(backend, model, mixblock, (H, W), (C, H, W), make_inputs)


def state_for(s: StepSetup, unlearner_opt=None, mixblock_opt=None):
    """The trainer's step state for this set-up, as its loop builds it, for calling
    ``fastmix.mixunlearn.steps`` one step at a time."""
    import fastmix
    from fastmix.mixunlearn.config import MixUnlearnConfig
    from fastmix.mixunlearn.engine import Amp
    from fastmix.mixunlearn.state import StepState

    config = MixUnlearnConfig(alpha=ALPHA, tau_gen=TAU_GEN, tau_mix=TAU_MIX, tau_real=TAU_REAL, omega=OMEGA, lr=LR,
                              gen_lr=GEN_LR, batch_size=B).validate()
    return StepState(
        config=config, unlearner=s.model, unlearner_forward=s.model, mixblock=s.mixblock, mixblock_forward=s.mixblock,
        loss_fn=fastmix.MixUnlearnLoss(TAU_GEN, TAU_MIX, TAU_REAL, OMEGA, backend=s.backend),
        unlearner_opt=unlearner_opt, mixblock_opt=mixblock_opt, amp=Amp("off", torch.device(DEVICE)),
        rng=torch.Generator(device=DEVICE).manual_seed(0), image_size=s.size, backend=s.backend,
    )


def batch_of(x_f, x_r, h_f, h_r, y_f, y_r):
    from fastmix.mixunlearn.state import Batch

    return Batch(x_f=x_f, x_r=x_r, q_f=y_f, q_r=y_r, h_f=h_f, h_r=h_r)
