"""Label-Agnostic Forgetting (LAF): unlearning without any label.

Paper: Shen et al., "Label-Agnostic Forgetting: A Supervision-Free Unlearning in Deep
Models" (ICLR 2024). Reference code: ShaofeiShen768/LAF ``VUnlearning.py`` and
``hyperparameter.md``. The model is an extractor ``e`` (everything before the last
linear layer) and a classifier (that layer). Two stages:

1. Two VAEs on the original's representations, one of all training data D (= D_r and
   D_f), one of D_f: loss ``sum ||dec(z) - e||^2 / B + kld_weight * KL(q(z|e) || N(0, I)) / B``.
2. Each iteration, on a D_f batch paired with a D_r batch (the pairs end with D_f, as
   ``zip`` does there): *extractor unlearning*, one Adam step (``laf_ue_lr``) on
   ``nmse(VAE_D, e'(x_r)) - nmse(VAE_f, e'(x_f))`` with
   ``nmse = sum_i exp(m_i / (m_i + 1))``, ``m_i`` a sample's squared reconstruction
   error: D_r stays what the data look like, D_f stops looking like D_f; then
   *representation alignment*, one Adam step (``laf_ra_lr``) on
   ``sum_i log(exp(c_r,i) / sum_j exp(c_f,j / T))`` with ``c = 1 - cos(e'(x), e(x))``:
   the representations of D_r are pulled to the original's, those of D_f pushed off them.

Choices: the representation is the input of the model's last ``nn.Linear`` (the
reference's CNN returns the output of its first fully connected layer, its classifier
being the two after it); the VAEs have the reference's layers (``dim -> 128 -> 32 ->
latent`` and back) but a linear output, not a sigmoid, as our representations are not
confined to (0, 1); z is sampled with the seeded generator; the unlearner trains in
eval mode (as the reference leaves it, so BatchNorm statistics stay); the final
fine-tuning of the classifier with D_r's labels (``classifier_unlearning``, LAF+R in the
paper) is left out, as it needs labels. Defaults for a CNN (hyperparameter.md,
Train.py): latent 8, 20 unlearning epochs, lr 5e-5 (extractor unlearning) and 1e-4
(alignment), T 20 (class-level forgetting, and the ResNets' data-level; 5 for data-level
with a CNN, which the CNN data sets' DEFAULTS give), VAEs 10 epochs of Adam 1e-3 with kld
weight 0.025; batch 32.
Label-agnostic: no label is read.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from fastmix.progress import progress_bar
from fastmix.settings import COUNT, NONNEG, POSITIVE, Grid, LogRange, setting

from . import MethodContext, MethodResult, register
from .common import done, fit, generator, read_settings, shuffled, steps_per_epoch, student


@dataclass
class LAFSettings:
    laf_latent: int = setting(8, "LAF: latent size of the VAEs", COUNT, flag="--laf-latent")
    laf_vae_epochs: int = setting(10, "LAF: epochs of each VAE", COUNT, flag="--laf-vae-epochs")
    laf_vae_lr: float = setting(1e-3, "LAF: Adam learning rate of the VAEs", POSITIVE, flag="--laf-vae-lr")
    laf_kld_weight: float = setting(0.025, "LAF: weight of the VAEs' KL term", NONNEG, flag="--laf-kld-weight")
    laf_epochs: int = setting(20, "LAF: unlearning epochs (passes over D_f)", COUNT, flag="--laf-epochs")
    laf_ue_lr: float = setting(5e-5, "LAF: Adam learning rate of extractor unlearning", POSITIVE,
                               flag="--laf-ue-lr")
    laf_ra_lr: float = setting(1e-4, "LAF: Adam learning rate of representation alignment", POSITIVE,
                               flag="--laf-ra-lr")
    laf_T: float = setting(20.0, "LAF: alignment temperature (data-level with a CNN: 5)", POSITIVE,
                           flag="--laf-T")
    laf_batch_size: int = setting(32, "LAF: batch size", COUNT, flag="--laf-batch-size")


SETTINGS = LAFSettings
# Around hyperparameter.md's lrs (5e-5, 1e-4), epochs (20) and T (20 class-level, 5 data-level).
SEARCH_SPACE = {"laf_ue_lr": LogRange(1e-5, 1e-3), "laf_ra_lr": LogRange(1e-5, 1e-3), "laf_epochs": Grid((5, 10, 20)),
                "laf_T": Grid((5.0, 10.0, 20.0))}


class RepresentationVAE(nn.Module):
    """The reference's VAE of a representation: ``dim -> 128 -> 32 -> latent`` and back."""

    def __init__(self, dim: int, latent: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(dim, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU())
        self.mu, self.log_var = nn.Linear(32, latent), nn.Linear(32, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, 32), nn.ReLU(), nn.Linear(32, 128), nn.ReLU(),
                                     nn.Linear(128, dim))

    def forward(self, e: torch.Tensor, gen: torch.Generator):
        """``(reconstruction, mu, sigma)``; z is sampled with ``gen``."""
        h = self.encoder(e)
        mu, sigma = self.mu(h), (0.5 * self.log_var(h)).exp()
        noise = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
        return self.decoder(mu + sigma * noise), mu, sigma


def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"method 'laf' splits the model at its last nn.Linear; {type(model).__name__} has none")
    return linears[-1]


class Extractor:
    """``model``'s representation: the input of its last linear layer, caught by a hook."""

    def __init__(self, model: nn.Module):
        self.model, self.seen = model, None
        last_linear(model).register_forward_pre_hook(self._catch)

    def _catch(self, _module, args):
        self.seen = args[0].flatten(1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.model(x)
        return self.seen


def vae_loss(vae: RepresentationVAE, e: torch.Tensor, gen: torch.Generator, kld_weight: float) -> torch.Tensor:
    out, mu, sigma = vae(e, gen)
    kld = -0.5 * torch.sum(torch.log(sigma.square() + 1e-8) + 1 - mu.square() - sigma.square())
    return (F.mse_loss(out, e, reduction="sum") + kld_weight * kld) / e.shape[0]


def nmse(vae: RepresentationVAE, e: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    m = (vae(e, gen)[0] - e).square().sum(1)
    return torch.exp(m / (m + 1)).sum()


@register("laf", settings=LAFSettings, search_space=SEARCH_SPACE)
def run_laf(ctx: MethodContext) -> MethodResult:
    """Label-Agnostic Forgetting (Shen et al. 2024)."""
    s = read_settings(LAFSettings, ctx.options)
    last_linear(ctx.original)
    start = time.perf_counter()
    model, gen = student(ctx).eval(), generator(ctx)
    teacher = Extractor(student(ctx).eval().requires_grad_(False))
    extract = Extractor(model)
    bs, n_f, n_r = s.laf_batch_size, ctx.x_forget.shape[0], ctx.x_retain.shape[0]
    with torch.no_grad():
        e_f = torch.cat([teacher(ctx.x_forget[i : i + 1024]) for i in range(0, n_f, 1024)])
        e_r = torch.cat([teacher(ctx.x_retain[i : i + 1024]) for i in range(0, n_r, 1024)])
    vaes = []
    for name, reps in (("D", torch.cat([e_r, e_f])), ("D_f", e_f)):
        with torch.random.fork_rng(devices=[e_f.device] if e_f.device.type == "cuda" else []):
            torch.manual_seed(ctx.seed)
            vae = RepresentationVAE(reps.shape[1], s.laf_latent).to(e_f.device)
        fit(torch.optim.Adam(vae.parameters(), lr=s.laf_vae_lr),
            lambda _, idx, vae=vae, reps=reps: vae_loss(vae, reps[idx], gen, s.laf_kld_weight),
            lambda _, n=reps.shape[0]: shuffled(gen, n, bs), epochs=s.laf_vae_epochs,
            total=s.laf_vae_epochs * steps_per_epoch(reps.shape[0], bs), desc=f"laf VAE({name})", quiet=ctx.quiet)
        vaes.append(vae.eval().requires_grad_(False))
    vae_d, vae_f = vaes

    unlearn = torch.optim.Adam(model.parameters(), lr=s.laf_ue_lr)
    align = torch.optim.Adam(model.parameters(), lr=s.laf_ra_lr)
    steps = min(steps_per_epoch(n_f, bs), steps_per_epoch(n_r, bs))
    with progress_bar(total=s.laf_epochs * steps, desc="laf", quiet=ctx.quiet) as bar:
        for _ in range(s.laf_epochs):
            for f, r in zip(shuffled(gen, n_f, bs), shuffled(gen, n_r, bs)):
                # Extractor unlearning: D_r stays like D, D_f stops looking like D_f.
                loss = nmse(vae_d, extract(ctx.x_retain[r]), gen) - nmse(vae_f, extract(ctx.x_forget[f]), gen)
                step(unlearn, loss)
                # Alignment: D_r's representations to the original's, D_f's away from them.
                c_r = 1 - F.cosine_similarity(extract(ctx.x_retain[r]), e_r[r])
                c_f = 1 - F.cosine_similarity(extract(ctx.x_forget[f]), e_f[f])
                step(align, c_r.sum() - c_r.shape[0] * torch.logsumexp(c_f / s.laf_T, 0))
                bar.update(1)
    return done(ctx, model, start)


def step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
