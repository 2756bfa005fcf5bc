"""MixUnlearn: the adversarial mixup unlearning loop of SPEC section 6."""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from .features import FrozenTeacher
from .loss import MixUnlearnLoss
from .mixblock import MixBlock
from .ops.contrastive import real_loss
from .ops.mixup import mixup
from .progress import progress_bar
from .sampling import sample_lambda


@dataclass
class MixUnlearnConfig:
    """Hyperparameters of MixUnlearn (SPEC 7) and the ablation switches (SPEC 6).

    Choices where the paper is silent: both the unlearner and the MixBlock use Adam
    (the MixBlock with ``gen_lr``, 1e-3); ``reduction="sum"`` as in the paper.
    ``mask="beta"`` is the plain Beta-mixup ablation (``M = lambda``, no MixBlock),
    ``use_mix=False`` drops ``L_mix``, ``omega=0`` drops ``L_real`` and
    ``sharpen_T=1`` turns sharpening off in the label-agnostic setting.
    """

    alpha: float = 0.75
    tau_gen: float = 1.0
    tau_mix: float = 10.0
    tau_real: float = 10.0
    omega: float = 1.0
    sharpen_T: float = 0.3
    gen_interval: int = 4
    lr: float = 5e-5
    gen_lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 20
    batch_size: int = 32
    labels: str = "aware"  # "aware": integer labels; "agnostic": sharpened outputs of the original model
    mask: str = "mixblock"  # or "beta"
    use_mix: bool = True
    reduction: str = "sum"

    def validate(self) -> "MixUnlearnConfig":
        if self.labels not in ("aware", "agnostic"):
            raise ValueError(f"labels must be 'aware' or 'agnostic', got {self.labels!r}")
        if self.mask not in ("mixblock", "beta"):
            raise ValueError(f"mask must be 'mixblock' or 'beta', got {self.mask!r}")
        for name in ("gen_interval", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("alpha", "tau_gen", "tau_mix", "tau_real", "sharpen_T", "lr", "gen_lr"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and positive, got {value!r}")
        if not (self.omega >= 0 and math.isfinite(self.omega)):
            raise ValueError(f"omega must be finite and >= 0, got {self.omega!r}")
        if not self.use_mix and self.omega == 0:
            raise ValueError("without L_mix (use_mix=False) omega must be > 0, or nothing is optimised")
        return self


CONFIG_FIELDS = tuple(f.name for f in fields(MixUnlearnConfig))


def _as_tensors(data, name: str, need_labels: bool):
    """``x``, ``(x, y)`` or a map-style Dataset of ``(x, y)`` -> ``(x, y or None)``."""
    if isinstance(data, torch.Tensor):
        x, y = data, None
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        items = [data[i] for i in range(len(data))]
        if not items:
            raise ValueError(f"{name} is empty")
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.as_tensor([int(it[1]) for it in items])
    else:
        raise TypeError(f"{name} must be a tensor x, a pair (x, y) of tensors or a Dataset of (x, y), got {type(data).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must hold a non-empty batch of samples (N, ...), got shape {tuple(x.shape)}")
    if y is not None:
        y = torch.as_tensor(y).long()
        if y.shape != (x.shape[0],):
            raise ValueError(f"{name}: labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if need_labels and y is None:
        raise ValueError(f"{name} needs labels (x, y) in the label-aware setting; use labels='agnostic' without them")
    return x, y


class MixUnlearn:
    """Unlearn a trained classifier with MixUnlearn (ICLR 2025)::

        mu = fastmix.MixUnlearn(model, feature_layer="layer3", labels="agnostic")
        unlearned = mu.unlearn(forget_data, retain_data)

    ``model`` is any classifier returning logits; it is not modified (the unlearner
    starts as a copy). ``feature_layer`` names the module whose output feeds the
    MixBlock (a 4-d map, or transformer tokens that reshape to a square grid); it
    defaults to the model's ``feature_layer`` attribute. Data are ``(x, y)`` tensor
    pairs (``x`` alone in the label-agnostic setting) or Datasets of ``(x, y)``.
    Keyword arguments are the fields of :class:`MixUnlearnConfig`.

    The frozen original model's logits and features are computed once per sample
    (there is no augmentation, so they never change) when they fit in
    ``feature_cache_mb``, else per batch. All sampling (batches, lambdas, pairings)
    uses a generator on the device seeded from ``seed``, and nothing in a step reads
    a value back to the host: the same seed gives the same model on the CPU.

    After :meth:`unlearn`: ``seconds`` (wall time, including the precomputation),
    ``history`` (``{"unlearner": [...], "generator": [...]}`` losses) and
    ``mixblock`` (the trained generator, or None for the Beta ablation).
    """

    def __init__(
        self,
        model: nn.Module,
        feature_layer: str | None = None,
        *,
        seed: int = 0,
        device: torch.device | str | None = None,
        quiet: bool = True,
        backend: str | None = None,
        feature_cache_mb: float = 1024.0,
        **config,
    ):
        unknown = set(config) - set(CONFIG_FIELDS)
        if unknown:
            raise TypeError(f"unknown MixUnlearn options {sorted(unknown)}; known: {list(CONFIG_FIELDS)}")
        self.config = MixUnlearnConfig(**config).validate()
        self.model = model
        self.feature_layer = feature_layer or getattr(model, "feature_layer", None)
        if self.config.mask == "mixblock" and not self.feature_layer:
            raise ValueError("feature_layer is required: name the module whose output feeds the MixBlock")
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.seed = int(seed)
        self.quiet = quiet
        self.backend = backend
        self.feature_cache_mb = feature_cache_mb
        self.seconds = float("nan")
        self.history: dict[str, list[float]] = {"unlearner": [], "generator": []}
        self.mixblock: MixBlock | None = None
        self._preview = None

    # --- setup -----------------------------------------------------------------------------

    def _teacher_outputs(self, teacher: FrozenTeacher, x: torch.Tensor, chunk: int = 1024):
        logits, feats = [], []
        for i in range(0, x.shape[0], chunk):
            lo, fe = teacher(x[i : i + chunk])
            logits.append(lo)
            feats.append(fe)
        return torch.cat(logits), torch.cat(feats)

    # --- the loop --------------------------------------------------------------------------

    def unlearn(self, forget_data, retain_data) -> nn.Module:
        """Run ``epochs`` passes over the forget set and return the unlearned model."""
        cfg = self.config
        aware = cfg.labels == "aware"
        x_f, y_f = _as_tensors(forget_data, "forget_data", aware)
        x_r, y_r = _as_tensors(retain_data, "retain_data", aware)
        if x_f.shape[1:] != x_r.shape[1:]:
            raise ValueError(f"forget and retain samples differ in shape: {tuple(x_f.shape[1:])} vs {tuple(x_r.shape[1:])}")
        if cfg.mask == "mixblock" and x_f.dim() != 4:
            raise ValueError(f"the MixBlock mixes (N, C, H, W) images, got samples of shape {tuple(x_f.shape[1:])}")
        dev = self.device
        start = time.perf_counter()
        x_f, x_r = x_f.to(dev), x_r.to(dev)
        y_f = y_f.to(dev) if y_f is not None else None
        y_r = y_r.to(dev) if y_r is not None else None

        use_mixblock = cfg.mask == "mixblock"
        frozen = copy.deepcopy(self.model).to(dev).eval().requires_grad_(False)
        teacher = FrozenTeacher(frozen, self.feature_layer) if use_mixblock else None
        student = copy.deepcopy(self.model).to(dev).train().requires_grad_(True)
        loss_fn = MixUnlearnLoss(
            cfg.tau_gen, cfg.tau_mix, cfg.tau_real, cfg.omega if cfg.use_mix else 0.0,
            cfg.sharpen_T, cfg.reduction, backend=self.backend,
        )
        n_f, n_r, B = x_f.shape[0], x_r.shape[0], cfg.batch_size

        # f_D's logits (for label-agnostic targets) and features, once per sample when they fit.
        with torch.no_grad():
            cached = False
            if teacher is not None:
                feat_shape = tuple(teacher(x_f[:1])[1].shape[1:])
                cache_bytes = (n_f + n_r) * 4 * math.prod(feat_shape)
                cached = cache_bytes <= self.feature_cache_mb * 2**20
            if cached:
                logits_f, feats_f = self._teacher_outputs(teacher, x_f)
                logits_r, feats_r = self._teacher_outputs(teacher, x_r)
            elif not aware:
                logits_f = torch.cat([frozen(x_f[i : i + 1024]) for i in range(0, n_f, 1024)])
                logits_r = torch.cat([frozen(x_r[i : i + 1024]) for i in range(0, n_r, 1024)])
            q_f = y_f if aware else loss_fn.targets(logits_f)
            q_r = y_r if aware else loss_fn.targets(logits_r)

        def features(which: str, idx: torch.Tensor) -> torch.Tensor:
            if cached:
                return (feats_f if which == "f" else feats_r).index_select(0, idx)
            return teacher((x_f if which == "f" else x_r).index_select(0, idx))[1]

        gen = torch.Generator(device=dev).manual_seed(self.seed)
        if use_mixblock:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.mixblock = MixBlock(feat_shape[0]).to(dev)
            opt_g = torch.optim.Adam(self.mixblock.parameters(), lr=cfg.gen_lr)
            gen_params = list(self.mixblock.parameters())
        opt_u = torch.optim.Adam(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        size = tuple(x_f.shape[2:4]) if x_f.dim() == 4 else None

        steps = (n_f + B - 1) // B
        reps = (steps * B + n_r - 1) // n_r  # retain permutations needed to fill one epoch's batches
        losses_u, losses_g = [], []
        t = 0
        with progress_bar(cfg.epochs * steps, "mixunlearn", self.quiet) as bar:
            for _ in range(cfg.epochs):
                order_f = torch.randperm(n_f, generator=gen, device=dev)
                order_r = torch.cat([torch.randperm(n_r, generator=gen, device=dev) for _ in range(reps)])
                for s in range(steps):
                    fidx = order_f[s * B : (s + 1) * B]
                    ridx = order_r[s * B : (s + 1) * B]
                    b = min(B, n_f - s * B)  # the last forget batch may be short
                    xf, xr = x_f.index_select(0, fidx), x_r.index_select(0, ridx)
                    qf, qr = q_f.index_select(0, fidx), q_r.index_select(0, ridx)
                    hf = features("f", fidx) if use_mixblock else None
                    hr = features("r", ridx) if use_mixblock else None
                    if use_mixblock and t % cfg.gen_interval == 0:
                        losses_g.append(self._generator_step(
                            student, loss_fn, opt_g, gen_params, xf, xr[:b], hf, hr[:b], qf, qr[:b], size, gen
                        ))
                    losses_u.append(self._unlearner_step(student, loss_fn, opt_u, xf, xr, hf, hr, qf, qr, size, gen))
                    t += 1
                    bar.update(1)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        self.seconds = time.perf_counter() - start
        self.history = {
            "unlearner": torch.stack(losses_u).tolist() if losses_u else [],
            "generator": torch.stack(losses_g).tolist() if losses_g else [],
        }
        with torch.no_grad():
            hf8 = teacher(x_f[:8])[1] if use_mixblock else None
            hr8 = teacher(x_r[:8])[1] if use_mixblock else None
        self._preview = (x_f[:8], x_r[:8], hf8, hr8)
        return student.eval().requires_grad_(False)

    def _generator_step(self, student, loss_fn, opt_g, gen_params, xf, xr, hf, hr, qf, qr, size, gen):
        """Update the MixBlock only, towards mixes that reveal D_f and lose D_r (pairing: identity)."""
        b = xf.shape[0]
        lam = sample_lambda(b, self.config.alpha, device=xf.device, generator=gen)
        mask = self.mixblock.mask(hf, hr, lam, size)
        student.eval()  # f_U's batch-norm statistics must not move in G's step
        logits = student(mixup(xf, xr, mask, backend=self.backend))
        student.train()
        loss = loss_fn.generator_loss(logits, qf, qr, lam)
        grads = torch.autograd.grad(loss, gen_params)  # gradients of G only, none for f_U
        for p, g in zip(gen_params, grads):
            p.grad = g
        opt_g.step()
        return loss.detach()

    def _unlearner_step(self, student, loss_fn, opt_u, xf, xr, hf, hr, qf, qr, size, gen):
        """Update f_U only: ``L_mix + omega * L_real`` on mixes with a random pairing."""
        cfg = self.config
        b, B = xf.shape[0], xr.shape[0]
        perm = torch.randperm(B, generator=gen, device=xf.device)[:b]
        parts = []
        if cfg.use_mix:
            lam = sample_lambda(b, cfg.alpha, device=xf.device, generator=gen)
            with torch.no_grad():
                weight = lam if self.mixblock is None else self.mixblock.mask(hf, hr.index_select(0, perm), lam, size)
            parts.append(mixup(xf, xr, weight, perm, backend=self.backend))
        if cfg.omega > 0:
            parts += [xr, xf]
        logits = student(torch.cat(parts) if len(parts) > 1 else parts[0])
        if cfg.use_mix:
            mix_logits = logits[:b]
            real_r = logits[b : b + B] if cfg.omega > 0 else None
            real_f = logits[b + B :] if cfg.omega > 0 else None
            loss = loss_fn(mix_logits, real_f, real_r, qf, qr, lam, perm)
        else:
            loss = cfg.omega * real_loss(
                logits[:B], logits[B:], qr, qf, cfg.tau_real, reduction=cfg.reduction, backend=self.backend
            )
        opt_u.zero_grad(set_to_none=True)
        loss.backward()
        opt_u.step()
        return loss.detach()

    @torch.no_grad()
    def preview(self, seed: int = 0):
        """Up to 8 mixes of the first forget and retain samples with the trained
        generator: ``(x_f, x_r, mask, x_mix)`` on the CPU, for the report's grid."""
        if self._preview is None:
            raise RuntimeError("call unlearn() first")
        x_f, x_r, hf, hr = self._preview
        n = min(x_f.shape[0], x_r.shape[0])
        x_f, x_r = x_f[:n], x_r[:n]
        gen = torch.Generator(device=x_f.device).manual_seed(seed)
        lam = sample_lambda(n, self.config.alpha, device=x_f.device, generator=gen)
        if self.mixblock is None:
            mask = lam.view(-1, 1, 1, 1).expand(n, 1, *x_f.shape[2:]).contiguous()
        else:
            mask = self.mixblock.mask(hf[:n], hr[:n], lam, tuple(x_f.shape[2:4]))
        mixed = mixup(x_f, x_r, mask, backend=self.backend)
        return x_f.cpu(), x_r.cpu(), mask.cpu(), mixed.cpu(), lam.cpu()

    def settings(self) -> dict:
        return {**asdict(self.config), "feature_layer": self.feature_layer, "seed": self.seed}
