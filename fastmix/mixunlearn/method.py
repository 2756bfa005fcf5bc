"""MixUnlearn: the adversarial mixup unlearning loop of SPEC section 6."""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from . import engine
from .augment import get_augmentation
from .distributed import RowShard, world
from .features import FrozenTeacher
from fastmix.ops.loss import MixUnlearnLoss
from .mixblock import MixBlock
from .teacher_cache import TeacherCache
from fastmix.ops.contrastive import real_loss
from fastmix.ops.mixup import mixup
from fastmix.progress import progress_bar
from fastmix.ops.sampling import sample_lambda


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
    (without augmentation they never change) and read by index afterwards. All
    sampling (batches, lambdas, pairings) uses a generator on the device seeded from
    ``seed``, and nothing in a step reads a value back to the host: the same seed gives
    the same model on the CPU.

    Engine options (how the steps run, not what they compute; see :mod:`fastmix.mixunlearn.engine`):

    * ``step``: ``"fast"`` (default) or ``"reference"``, the eager paper-style step
      (f_D recomputed each iteration, Beta and pairings drawn on the host with numpy,
      separate forward passes, plain-torch losses through autograd: fastmix.ops.eager).
    * ``cache``: keep f_D's outputs per sample (default True; fastmix.mixunlearn.teacher_cache);
      ``cache_limit_mb`` caps its size (default: half the device's free memory); a
      cache over the cap is refused, naming both ways out.
    * ``augment``: None or ``"crop-flip"`` (on the device; turns the cache off).
    * ``amp``: ``"off"``, ``"bf16"`` or ``"fp16"`` (autocast of the unlearner's forward;
      fp32 weights and losses; fp16 uses a GradScaler, whose inf check synchronises).
    * ``channels_last``: None (on for convolutional models in the fast step, on the CPU
      too), True or False.
    * ``cuda_graphs``: True captures the steps in CUDA graphs (fastmix.mixunlearn.graphs; needs CUDA,
      refused on the CPU and with fp16). None (default) leaves them off for now: the
      captured path has not run on a GPU yet.
    * ``flush_subnormals``: None (on for the fast step on the CPU), True or False: zero
      the parameters' subnormal values in fastmix's copies of the models before each
      epoch; x86 CPUs compute with them in microcode (engine.flush_subnormals_). On the
      CPU the fast step also uses Adam's fused implementation.
    * Under ``torchrun`` (a process group of several ranks) the loop runs data-parallel
      (fastmix.mixunlearn.distributed), with the same result as one process at the same batch.
    * ``log``: a callable for the set-up's report lines (the cache's size; default:
      stderr unless ``quiet``).

    After :meth:`unlearn`: ``seconds`` (wall time, including the precomputation),
    ``history`` (``{"unlearner": [...], "generator": [...]}`` losses), ``mixblock``
    (the trained generator, or None for the Beta ablation), ``cache_info`` and
    ``timings`` (``setup_s``, the teacher cache included; ``loop_s``; ``steps``).
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
        step: str = "fast",
        cache: bool = True,
        cache_limit_mb: float | None = None,
        augment: str | None = None,
        amp: str = "off",
        channels_last: bool | None = None,
        cuda_graphs: bool | None = None,
        flush_subnormals: bool | None = None,
        log=None,
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
        self.engine = engine.EngineOptions(
            step=step, cache=cache, cache_limit_mb=cache_limit_mb, augment=augment, amp=amp,
            channels_last=channels_last, cuda_graphs=cuda_graphs, flush_subnormals=flush_subnormals,
        ).validate(self.device, self.config)
        self._augment = get_augmentation(self.engine.augment)
        self._log_fn = log
        self.seconds = float("nan")
        self.history: dict[str, list[float]] = {"unlearner": [], "generator": []}
        self.mixblock: MixBlock | None = None
        self.cache_info: dict = {}
        self.timings: dict = {}
        self._loop_start: float | None = None
        self._preview = None
        # Set by unlearn(); the step methods read them (bench/ calls the steps directly).
        self._shard: RowShard | None = None
        self._mixblock_ddp = None
        self._amp = engine.Amp("off", self.device)
        self._argsort_perm = False
        self._capture = True  # False: the CUDA-graph mode's code run uncaptured (its equivalence test)

    def _log(self, msg: str) -> None:
        if world()[0] != 0:
            return  # one log, from rank 0
        if self._log_fn is not None:
            self._log_fn(msg)
        elif not self.quiet:
            print(f"mixunlearn: {msg}", file=sys.stderr)

    # --- the loop --------------------------------------------------------------------------

    def unlearn(self, forget_data, retain_data) -> nn.Module:
        """Run ``epochs`` passes over the forget set and return the unlearned model."""
        cfg, eng = self.config, self.engine
        aware = cfg.labels == "aware"
        x_f, y_f = _as_tensors(forget_data, "forget_data", aware)
        x_r, y_r = _as_tensors(retain_data, "retain_data", aware)
        if x_f.shape[1:] != x_r.shape[1:]:
            raise ValueError(f"forget and retain samples differ in shape: {tuple(x_f.shape[1:])} vs {tuple(x_r.shape[1:])}")
        if cfg.mask == "mixblock" and x_f.dim() != 4:
            raise ValueError(f"the MixBlock mixes (N, C, H, W) images, got samples of shape {tuple(x_f.shape[1:])}")
        if self._augment is not None and x_f.dim() != 4:
            raise ValueError(f"augment={eng.augment!r} needs (N, C, H, W) images, got samples of shape {tuple(x_f.shape[1:])}")
        rank, world_size = world()
        if world_size > 1 and eng.step == "reference":
            raise ValueError("step='reference' (--reference-step) runs in one process; launch it without torchrun")
        graphs = eng.use_cuda_graphs(self.device)
        if graphs and world_size > 1:
            raise ValueError("cuda_graphs=True (--cuda-graphs) runs in one process for now; pass --no-cuda-graphs under torchrun")
        if graphs and self.device.type == "cuda" and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
            raise ValueError(f"cuda_graphs=True (--cuda-graphs) needs torch.cuda.CUDAGraph.register_generator_state, "
                             f"which torch {torch.__version__} lacks; pass --no-cuda-graphs")
        dev = self.device
        start = time.perf_counter()
        self._loop_start = None
        channels_last = eng.use_channels_last(self.model, x_f.dim())
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x_f, x_r = x_f.to(dev).contiguous(memory_format=fmt), x_r.to(dev).contiguous(memory_format=fmt)
        y_f = y_f.to(dev) if y_f is not None else None
        y_r = y_r.to(dev) if y_r is not None else None

        use_mixblock = cfg.mask == "mixblock"
        frozen = copy.deepcopy(self.model).to(dev, memory_format=fmt).eval().requires_grad_(False)
        teacher = FrozenTeacher(frozen, self.feature_layer) if use_mixblock else None
        student = copy.deepcopy(self.model).to(dev, memory_format=fmt).train().requires_grad_(True)
        loss_fn = MixUnlearnLoss(
            cfg.tau_gen, cfg.tau_mix, cfg.tau_real, cfg.omega if cfg.use_mix else 0.0,
            cfg.sharpen_T, cfg.reduction, backend=self.backend,
        )
        n_f, B = x_f.shape[0], cfg.batch_size
        feat_shape = None
        if teacher is not None:
            with torch.no_grad():
                feat_shape = tuple(teacher(x_f[:1])[1].shape[1:])
        if use_mixblock:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.mixblock = MixBlock(feat_shape[0]).to(dev, memory_format=fmt)
        adam = dict(capturable=graphs and dev.type == "cuda", fused=eng.use_fused_adam(dev) or None)
        opt_g = torch.optim.Adam(self.mixblock.parameters(), lr=cfg.gen_lr, **adam) if use_mixblock else None
        opt_u = torch.optim.Adam(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **adam)
        size = tuple(x_f.shape[2:4]) if x_f.dim() == 4 else None
        steps = (n_f + B - 1) // B

        if eng.step == "reference":
            from .paper_loop import reference_loop

            self.cache_info = {"cached": False, "reason": "step='reference' recomputes f_D every iteration"}
            losses_u, losses_g = reference_loop(
                self, x_f, y_f, x_r, y_r, frozen, teacher, student, opt_u, opt_g, size, steps
            )
        else:
            losses_u, losses_g = self._fast_loop(
                x_f, y_f, x_r, y_r, frozen, teacher, student, loss_fn, opt_u, opt_g, feat_shape, size, steps,
                rank, world_size, graphs,
            )
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        end = time.perf_counter()
        self.seconds = end - start
        loop_start = self._loop_start or start
        self.timings = {"setup_s": loop_start - start, "loop_s": end - loop_start, "steps": cfg.epochs * steps}
        self.history = {
            "unlearner": torch.stack(losses_u).tolist() if losses_u else [],
            "generator": torch.stack(losses_g).tolist() if losses_g else [],
        }
        with torch.no_grad():
            hf8 = teacher(x_f[:8])[1] if use_mixblock else None
            hr8 = teacher(x_r[:8])[1] if use_mixblock else None
        self._preview = (x_f[:8], x_r[:8], hf8, hr8)
        self._shard = self._mixblock_ddp = None
        self._argsort_perm = False
        return student.eval().requires_grad_(False)

    def _mark_loop_start(self) -> None:
        """Where set-up (the teacher cache included) ends and the loop begins, for ``timings``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._loop_start = time.perf_counter()

    def _build_cache(self, x_f, x_r, aware, frozen, teacher, loss_fn, feat_shape) -> TeacherCache | None:
        """f_D's outputs per sample (fastmix.mixunlearn.teacher_cache), or None (the reason in ``cache_info``)."""
        eng, dev = self.engine, self.device
        n_f, n_r = x_f.shape[0], x_r.shape[0]
        if self._augment is not None:
            reason = f"augment={eng.augment!r} changes the inputs every step"
        elif not eng.cache:
            reason = "cache=False (--no-cache)"
        elif teacher is None and aware:
            reason = "nothing to cache: the Beta ablation with labels needs no f_D output"
        else:
            reason = None
        if reason is not None:
            self.cache_info = {"cached": False, "reason": reason}
            if teacher is not None or not aware:
                self._log(f"teacher cache off: {reason}; f_D runs on every batch")
            return None
        with torch.no_grad():
            num_classes = frozen(x_f[:1]).shape[1]
        per_sample = (math.prod(feat_shape) if teacher is not None else 0) + (0 if aware else num_classes)
        limit = engine.check_cache_fits((n_f + n_r) * per_sample * 4, eng.cache_limit_mb, dev)
        cache = TeacherCache(frozen, teacher, loss_fn, x_f, x_r, aware, feat_shape, num_classes)
        what = ", ".join(filter(None, [
            f"features {'x'.join(map(str, feat_shape))}" if teacher is not None else "",
            "" if aware else f"targets of {num_classes} classes"]))
        self.cache_info = {"cached": True, "bytes": cache.nbytes, "limit_mb": limit, "contents": what}
        self._log(f"teacher cache: {cache.nbytes / 2**20:.1f} MiB on {dev} ({what}) for {n_f} + {n_r} samples; "
                  f"limit {limit:.0f} MiB ({'cache_limit_mb' if eng.cache_limit_mb is not None else 'half the free memory'}"
                  "; --cache-limit-mb MB or --no-cache to change)")
        return cache

    def _fast_loop(self, x_f, y_f, x_r, y_r, frozen, teacher, student, loss_fn, opt_u, opt_g, feat_shape, size,
                   steps, rank, world_size, graphs=False):
        cfg, dev = self.config, self.device
        aware = cfg.labels == "aware"
        use_mixblock = teacher is not None
        n_f, n_r, B = x_f.shape[0], x_r.shape[0], cfg.batch_size
        flush = self.engine.use_flush_subnormals(dev)
        learners = [student, self.mixblock] if use_mixblock else [student]
        if flush:
            engine.flush_subnormals_(frozen, *learners)
        cache = self._build_cache(x_f, x_r, aware, frozen, teacher, loss_fn, feat_shape)
        self._amp = engine.Amp(self.engine.amp, dev, graphs=graphs)
        channels_last = x_f.dim() == 4 and x_f.shape[1] > 1 and not x_f.is_contiguous()
        augment = self._augment

        def batch(side, idx):
            """One side's images, targets and features: read from the cache by index, or
            (augmented and) passed through f_D."""
            x, y = (x_f, y_f) if side == 0 else (x_r, y_r)
            xb = x.index_select(0, idx)
            if channels_last:  # index_select gives a contiguous batch
                xb = xb.contiguous(memory_format=torch.channels_last)
            if cache is not None:
                qb, hb = cache.read(side, idx)
                return xb, (y.index_select(0, idx) if aware else qb), hb
            if augment is not None:
                xb = augment(xb, gen)
            with torch.no_grad():
                if aware:
                    logits, hb = None, (teacher.features(xb) if use_mixblock else None)
                elif use_mixblock:
                    logits, hb = teacher(xb)
                else:
                    logits, hb = frozen(xb), None
            return xb, (y.index_select(0, idx) if aware else loss_fn.targets(logits)), hb

        gen = torch.Generator(device=dev).manual_seed(self.seed)
        gen_params = list(self.mixblock.parameters()) if use_mixblock else None
        train_student = student
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [dev.index] if dev.type == "cuda" else None
            self._shard = RowShard(rank, world_size)
            train_student = DDP(student, device_ids=ids)
            self._mixblock_ddp = DDP(self.mixblock, device_ids=ids) if use_mixblock else None
            self._log(f"data-parallel over {world_size} ranks: each runs ceil(B/{world_size}) rows of every batch")

        runner = None
        if graphs:
            from .graphs import StepGraphs

            self._argsort_perm = True
            runner = StepGraphs(
                batch,
                lambda xf, xr, hf, hr, qf, qr: self._generator_step(
                    student, loss_fn, opt_g, gen_params, xf, xr, hf, hr, qf, qr, size, gen),
                lambda xf, xr, hf, hr, qf, qr: self._unlearner_step(
                    train_student, loss_fn, opt_u, xf, xr, hf, hr, qf, qr, size, gen),
                B, dev, gen, has_gen=use_mixblock, capture=self._capture,
            )
            self._log("CUDA graphs: the batch read, the generator step and the unlearner step are captured "
                      "after 3 warm-up iterations; an epoch's short last batch runs uncaptured")

        reps = (steps * B + n_r - 1) // n_r  # retain permutations needed to fill one epoch's batches
        losses_u, losses_g = [], []
        t = 0
        self._mark_loop_start()
        with progress_bar(cfg.epochs * steps, "mixunlearn", self.quiet or rank != 0) as bar:
            for epoch in range(cfg.epochs):
                if flush and epoch:  # weight decay may have pushed more weights below finfo.tiny
                    engine.flush_subnormals_(*learners)
                order_f = torch.randperm(n_f, generator=gen, device=dev)
                order_r = torch.cat([torch.randperm(n_r, generator=gen, device=dev) for _ in range(reps)])
                if cache is not None:
                    cache.prepare(order_r[: steps * B])
                for s in range(steps):
                    fidx = order_f[s * B : (s + 1) * B]
                    ridx = order_r[s * B : (s + 1) * B]
                    b = min(B, n_f - s * B)  # the last forget batch may be short
                    if runner is not None and b == B:
                        loss_g, loss_u = runner.step(fidx, ridx, use_mixblock and t % cfg.gen_interval == 0)
                        if loss_g is not None:
                            losses_g.append(loss_g)
                        losses_u.append(loss_u)
                        t += 1
                        bar.update(1)
                        continue
                    xf, qf, hf = batch(0, fidx)
                    xr, qr, hr = batch(1, ridx)
                    if use_mixblock and t % cfg.gen_interval == 0:
                        losses_g.append(self._generator_step(
                            student, loss_fn, opt_g, gen_params, xf, xr[:b], hf, hr[:b], qf, qr[:b], size, gen
                        ))
                    losses_u.append(self._unlearner_step(
                        train_student, loss_fn, opt_u, xf, xr, hf, hr, qf, qr, size, gen
                    ))
                    t += 1
                    bar.update(1)
        return losses_u, losses_g

    def _generator_step(self, student, loss_fn, opt_g, gen_params, xf, xr, hf, hr, qf, qr, size, gen):
        """Update the MixBlock only, towards mixes that reveal D_f and lose D_r (pairing: identity)."""
        b = xf.shape[0]
        amp, shard = self._amp, self._shard
        lam = sample_lambda(b, self.config.alpha, device=xf.device, generator=gen)
        if shard is None:
            mask = self.mixblock.mask(hf, hr, lam, size)
            student.eval()  # f_U's batch-norm statistics must not move in G's step
            with amp.autocast():
                logits = student(mixup(xf, xr, mask, backend=self.backend))
            student.train()
            if amp.dtype is not None:
                logits = logits.float()
            loss = loss_fn.generator_loss(logits, qf, qr, lam)
            grads = torch.autograd.grad(amp.scale(loss, opt_g), gen_params)  # gradients of G only, none for f_U
            for p, g in zip(gen_params, grads):
                p.grad = g
        else:
            # This rank's rows; backward() (not autograd.grad) so DDP averages G's gradients,
            # with f_U's weights frozen for the step so that no gradient reaches them.
            rows = shard.rows(b, xf.device)
            mask = self._mixblock_ddp(hf.index_select(0, rows), hr.index_select(0, rows), lam.index_select(0, rows), size)[:, 0:1]
            frozen_now = [p for p in student.parameters() if p.requires_grad]
            for p in frozen_now:
                p.requires_grad_(False)
            student.eval()
            with amp.autocast():
                local = student(mixup(xf.index_select(0, rows), xr.index_select(0, rows), mask, backend=self.backend))
            student.train()
            (logits,) = shard.gather(local.float(), [b])
            loss = loss_fn.generator_loss(logits, qf, qr, lam)
            opt_g.zero_grad(set_to_none=True)
            amp.scale(loss, opt_g).backward()
            for p in frozen_now:
                p.requires_grad_(True)
        amp.step(opt_g)
        return loss.detach()

    def _unlearner_step(self, student, loss_fn, opt_u, xf, xr, hf, hr, qf, qr, size, gen):
        """Update f_U only: ``L_mix + omega * L_real`` on mixes with a random pairing."""
        cfg = self.config
        amp, shard = self._amp, self._shard
        b, B = xf.shape[0], xr.shape[0]
        if self._argsort_perm:  # the CUDA-graph mode's pairing (fastmix.mixunlearn.graphs)
            perm = torch.rand(B, generator=gen, device=xf.device).argsort()[:b]
        else:
            perm = torch.randperm(B, generator=gen, device=xf.device)[:b]
        lam = sample_lambda(b, cfg.alpha, device=xf.device, generator=gen) if cfg.use_mix else None
        if shard is None:
            parts = []
            if cfg.use_mix:
                with torch.no_grad():
                    weight = lam if self.mixblock is None else self.mixblock.mask(hf, hr.index_select(0, perm), lam, size)
                parts.append(mixup(xf, xr, weight, perm, backend=self.backend))
            if cfg.omega > 0:
                parts += [xr, xf]
            with amp.autocast():
                logits = student(torch.cat(parts) if len(parts) > 1 else parts[0])
            if amp.dtype is not None:
                logits = logits.float()
            # split, not three slices: its backward is one cat, theirs three zero-filled copies summed
            pieces = iter(logits.split([part.shape[0] for part in parts]))
            mix_logits = next(pieces) if cfg.use_mix else None
            real_r, real_f = (next(pieces), next(pieces)) if cfg.omega > 0 else (None, None)
        else:
            # Each rank runs its rows of the mixes and of both real batches in one forward;
            # the gather gives every rank the whole batch's logits for the batch-coupled loss.
            parts, sizes = [], []
            rows_b = shard.rows(b, xf.device)
            if cfg.use_mix:
                lam_s, perm_s = lam.index_select(0, rows_b), perm.index_select(0, rows_b)
                hf_s = hf.index_select(0, rows_b) if hf is not None else None
                with torch.no_grad():
                    weight = lam_s if self.mixblock is None else self.mixblock.mask(
                        hf_s, hr.index_select(0, perm_s), lam_s, size)
                parts.append(mixup(xf.index_select(0, rows_b), xr, weight, perm_s, backend=self.backend))
                sizes.append(b)
            if cfg.omega > 0:
                parts += [xr.index_select(0, shard.rows(B, xf.device)), xf.index_select(0, rows_b)]
                sizes += [B, b]
            with amp.autocast():
                local = student(torch.cat(parts) if len(parts) > 1 else parts[0])
            full = shard.gather(local.float(), sizes)
            mix_logits = full.pop(0) if cfg.use_mix else None
            real_r, real_f = (full[0], full[1]) if cfg.omega > 0 else (None, None)
        if cfg.use_mix:
            loss = loss_fn(mix_logits, real_f, real_r, qf, qr, lam, perm)
        else:
            loss = cfg.omega * real_loss(
                real_r, real_f, qr, qf, cfg.tau_real, reduction=cfg.reduction, backend=self.backend
            )
        opt_u.zero_grad(set_to_none=True)
        amp.scale(loss, opt_u).backward()
        amp.step(opt_u)
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
        return {**asdict(self.config), "feature_layer": self.feature_layer, "seed": self.seed,
                "engine": asdict(self.engine)}
