"""MixUnlearn: the adversarial mixup unlearning of SPEC section 6.

:class:`MixUnlearn` validates its settings and data, sets a run up (a
:class:`~fastmix.mixunlearn.state.StepState` and the batch reader) and hands it to a
loop: :func:`~fastmix.mixunlearn.loop.fast_loop`, or the paper-style
:func:`~fastmix.mixunlearn.paper_loop.paper_loop` for ``step="paper"``.
"""
from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from fastmix.ops.loss import MixUnlearnLoss
from fastmix.ops.mixup import mixup
from fastmix.ops.sampling import sample_lambda
from fastmix.settings import check_seed

from . import engine
from .augment import get_augmentation
from .batches import BatchReader, RunData
from .batchnorm import RowGroups, group_batchnorm, has_batchnorm, plain_batchnorm
from .config import EngineOptions, MixUnlearnConfig, split_settings
from .distributed import RowShard, world
from .features import FrozenOriginal
from .loop import LoopPlan, Losses, fast_loop
from .mixblock import MixBlock
from .rows import Rows, all_finite
from .state import Batch, MaskStats, StepState
from .teacher_cache import TeacherCache


def _as_tensors(data, name: str, need_labels: bool):
    """``x``, ``(x, y)`` or a map-style Dataset of ``(x, y)`` -> ``(x, y or None)``; ``x``
    a tensor or :class:`~fastmix.mixunlearn.rows.Rows` (a Dataset is stacked into one)."""
    if isinstance(data, (torch.Tensor, Rows)):
        x, y = data, None
    elif isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (torch.Tensor, Rows)):
        x, y = data
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        items = [data[i] for i in range(len(data))]
        if not items:
            raise ValueError(f"{name} is empty")
        x = torch.stack([torch.as_tensor(it[0]) for it in items])
        y = torch.as_tensor([int(it[1]) for it in items])
    else:
        raise TypeError(f"{name} must be a tensor x, a pair (x, y) of tensors or a Dataset of (x, y), got "
                        f"{type(data).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must hold a non-empty batch of samples (N, ...), got shape {tuple(x.shape)}")
    if y is not None:
        y = torch.as_tensor(y).long()
        if y.shape != (x.shape[0],):
            raise ValueError(f"{name}: labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if need_labels and y is None:
        raise ValueError(f"{name} needs labels (x, y) in the label-aware setting; use labels='agnostic' without them")
    return x, y


def _check_images(name: str, x: torch.Tensor, model: nn.Module) -> None:
    """Images the model can take, checked before any work: floating point in the model's
    dtype, the channel count of its first convolution, finite values (one read-back)."""
    if not x.is_floating_point():
        hint = " (uint8 images: convert with x.float() / 255)" if x.dtype == torch.uint8 else ""
        raise TypeError(f"{name} must hold floating-point images, got {x.dtype}{hint}")
    param = next(model.parameters(), None)
    if param is not None and param.is_floating_point() and x.dtype != param.dtype:
        raise TypeError(f"{name} holds {x.dtype} images but the model's weights are {param.dtype}; "
                        f"convert them with x.to({param.dtype})")
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None and x.dim() == 4 and x.shape[1] != conv.in_channels:
        raise ValueError(f"{name} has {x.shape[1]} channels per image, but the model's first convolution takes "
                         f"{conv.in_channels}; got samples of shape {tuple(x.shape[1:])}")
    if not all_finite(x):
        raise ValueError(f"{name} holds NaN or infinite pixels")


def _check_labels(name: str, y: torch.Tensor | None, num_classes: int) -> None:
    if y is not None and y.numel() and not (0 <= int(y.min()) and int(y.max()) < num_classes):
        raise ValueError(f"{name}: labels must lie in [0, {num_classes}) (the model's number of classes), "
                         f"got values from {int(y.min())} to {int(y.max())}")


@dataclass
class _Models:
    """What :meth:`MixUnlearn._models` sets up for a run."""

    original: FrozenOriginal
    unlearner: nn.Module
    mixblock: MixBlock | None
    opponent: nn.Module | None  # the lagged generator opponent (generator_opponent="lagged")
    groups: RowGroups | None  # BatchNorm's per-part statistics in the fast step
    feat_shape: tuple | None  # f_D's feature map per sample, with a MixBlock
    num_classes: int


@dataclass
class PreparedRun:
    """A run set up by :meth:`MixUnlearn.prepare` and not yet looped over.

    Its fields are public so that benchmarks and tests can run single steps
    (``fastmix.mixunlearn.steps.generator_step(run.state, run.batch(fidx, ridx))``)
    or change how the loop runs (``run.plan.capture``, ``run.state.pairing``).
    """

    state: StepState
    reader: BatchReader
    data: RunData
    original: FrozenOriginal
    cache: TeacherCache | None
    plan: LoopPlan
    start: float

    def batch(self, forget_idx: torch.Tensor, retain_idx: torch.Tensor) -> Batch:
        """A batch for a step run outside the loop. The teacher cache computes retain rows
        when an epoch first draws them (the loop asks it to); this asks it first."""
        if self.cache is not None:
            self.cache.prepare(retain_idx)
        return self.reader.batch(forget_idx, retain_idx)


class MixUnlearn:
    """Unlearn a trained classifier with MixUnlearn (ICLR 2025)::

        mu = fastmix.MixUnlearn(model, feature_layer="layer3", labels="agnostic")
        unlearned = mu.unlearn(forget_data, retain_data)

    ``model`` is any classifier returning logits; it is not modified (the unlearner
    starts as a copy). ``feature_layer`` names the module whose output feeds the
    MixBlock (a 4-d map, or transformer tokens that reshape to a square grid); it
    defaults to the model's ``feature_layer`` attribute. Data are ``(x, y)`` tensor
    pairs (``x`` alone in the label-agnostic setting) or Datasets of ``(x, y)``. The
    images are not copied, whatever their layout: each batch is gathered from them (and
    put in channels_last then, where the run uses it). Only a Dataset is stacked into a
    tensor, and images on another device are moved to ``device`` once.
    ``fastmix.mixunlearn.rows.Rows(x, index)`` passes rows of a larger tensor without
    copying them.
    Keyword settings are the fields of :class:`~fastmix.mixunlearn.config.MixUnlearnConfig`
    (the method's hyperparameters and ablations) and of
    :class:`~fastmix.mixunlearn.config.EngineOptions` (how the steps run, never what
    they compute: the fast or the paper-style step, the teacher cache, augmentation,
    mixed precision, channels_last, CUDA graphs, the subnormal flush); each field says
    its default and range. ``seed`` must be an int in 0..2**63-1.

    The frozen original model's logits and features are computed once per sample
    (without augmentation they never change) and read by index afterwards. All
    sampling (batches, lambdas, pairings) uses a generator on the device seeded from
    ``seed``, and nothing in a step reads a value back to the host: the same seed gives
    the same model on the CPU. The data are checked before any work: floating-point
    images in the model's dtype with its channel count, finite pixels, labels in range.

    Under ``torchrun`` (a process group of several ranks) the loop runs data-parallel
    (fastmix.mixunlearn.distributed), with the same result as one process at the same batch.
    Batch norm in the model computes in the fast step what the paper step's separate
    forwards compute: each part of the one forward (mixes, retain, forget) is normalised
    with its own statistics, over all ranks under torchrun
    (:mod:`fastmix.mixunlearn.batchnorm`).
    ``log`` is a callable for the set-up's report lines (the cache's size; default:
    stderr unless ``quiet``).

    After :meth:`unlearn`: ``seconds`` (wall time, including the precomputation),
    ``history`` (``{"unlearner": [...], "generator": [...]}`` losses), ``mixblock``
    (the trained generator, or None for the Beta ablation), ``cache_info`` and
    ``timings`` (``setup_s``, the teacher cache included; ``loop_s``; ``steps``),
    ``mask_stats`` (the unlearner step's mean mask against lambda in 10 bins of lambda:
    ``{"bins": [[lo, hi], ...], "count": [...], "mean_lambda": [...], "mean_mask": [...]}``,
    None without a MixBlock; :class:`~fastmix.mixunlearn.state.MaskStats`).
    """

    def __init__(self, model: nn.Module, feature_layer: str | None = None, *, seed: int = 0,
                 device: torch.device | str | None = None, quiet: bool = True, backend: str | None = None,
                 log=None, **settings):
        config, engine_options = split_settings(settings)
        self.config = MixUnlearnConfig(**config).validate()
        self.model = model
        self.feature_layer = feature_layer or getattr(model, "feature_layer", None)
        if self.config.mask == "mixblock" and not self.feature_layer:
            raise ValueError("feature_layer is required: name the module whose output feeds the MixBlock")
        if device is None:
            param = next(model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.seed = check_seed("seed", seed)
        self.quiet = quiet
        self.backend = backend
        self.engine = EngineOptions(**engine_options).validate(self.device, self.config)
        self._augment = get_augmentation(self.engine.augment)
        self._log_fn = log
        self.seconds = float("nan")
        self.history: dict[str, list[float]] = {"unlearner": [], "generator": []}
        self.mixblock: MixBlock | None = None
        self.cache_info: dict = {}
        self.timings: dict = {}
        self.mask_stats: dict | None = None
        self._preview = None

    def _log(self, msg: str) -> None:
        if world()[0] != 0:
            return  # one log, from rank 0
        if self._log_fn is not None:
            self._log_fn(msg)
        elif not self.quiet:
            print(f"mixunlearn: {msg}", file=sys.stderr)

    # --- set-up ----------------------------------------------------------------------------

    def _data(self, forget_data, retain_data) -> RunData:
        """The forget and retain samples, checked, on the device, read as
        :class:`~fastmix.mixunlearn.rows.Rows` that give batches in the run's memory format:
        the images are not copied (but to another device), whatever their layout."""
        cfg, eng = self.config, self.engine
        aware = cfg.labels == "aware"
        x_f, y_f = _as_tensors(forget_data, "forget_data", aware)
        x_r, y_r = _as_tensors(retain_data, "retain_data", aware)
        if x_f.shape[1:] != x_r.shape[1:]:
            raise ValueError(f"forget and retain samples differ in shape: {tuple(x_f.shape[1:])} vs "
                             f"{tuple(x_r.shape[1:])}")
        if cfg.mask == "mixblock" and x_f.dim() != 4:
            raise ValueError(f"the MixBlock mixes (N, C, H, W) images, got samples of shape {tuple(x_f.shape[1:])}")
        if self._augment is not None and x_f.dim() != 4:
            raise ValueError(f"augment={eng.augment!r} needs (N, C, H, W) images, got samples of shape "
                             f"{tuple(x_f.shape[1:])}")
        _check_images("forget_data", x_f, self.model)
        _check_images("retain_data", x_r, self.model)
        fmt = torch.channels_last if eng.use_channels_last(self.model, x_f.dim()) else torch.contiguous_format
        dev = self.device
        return RunData(
            x_f=Rows.of(x_f).to(dev).with_format(fmt), y_f=y_f.to(dev) if y_f is not None else None,
            x_r=Rows.of(x_r).to(dev).with_format(fmt), y_r=y_r.to(dev) if y_r is not None else None,
            memory_format=fmt,
        )

    def prepare(self, forget_data, retain_data) -> PreparedRun:
        """Check the data and set a run up: models, optimisers, the teacher cache, the plan."""
        cfg, eng, dev = self.config, self.engine, self.device
        rank, world_size = world()
        graphs = self._check_engine(world_size)
        start = time.perf_counter()
        data = self._data(forget_data, retain_data)
        loss_fn = MixUnlearnLoss(
            cfg.tau_gen, cfg.tau_mix, cfg.tau_real, cfg.omega if cfg.use_mix else 0.0,
            cfg.sharpen_T, cfg.reduction, backend=self.backend,
        )
        m = self._models(data)
        self.mixblock = m.mixblock
        adam = dict(capturable=graphs and dev.type == "cuda", fused=eng.use_fused_adam(dev) or None)
        mixblock_opt = None if m.mixblock is None else torch.optim.Adam(m.mixblock.parameters(), lr=cfg.gen_lr, **adam)
        unlearner_opt = torch.optim.Adam(m.unlearner.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **adam)
        flush = tuple(filter(None, (m.unlearner, m.mixblock, m.opponent)))
        flush = flush if eng.step == "fast" and eng.use_flush_subnormals(dev) else ()
        cache = None
        if eng.step == "fast":
            if flush:
                engine.flush_subnormals_(m.original, *flush)
            cache = self._build_cache(data, m.original, loss_fn, m.feat_shape, m.num_classes)
        else:
            self.cache_info = {"cached": False, "reason": "step='paper' recomputes f_D every iteration"}
        rng = torch.Generator(device=dev).manual_seed(self.seed)
        unlearner_forward, mixblock_forward, shard = self._data_parallel(m, rank, world_size)
        x_f = data.x_f
        state = StepState(
            config=cfg, unlearner=m.unlearner, unlearner_forward=unlearner_forward, mixblock=m.mixblock,
            mixblock_forward=mixblock_forward, loss_fn=loss_fn, unlearner_opt=unlearner_opt,
            mixblock_opt=mixblock_opt, amp=engine.Amp(eng.amp, dev, graphs=graphs), rng=rng,
            image_size=tuple(x_f.shape[2:4]) if x_f.dim() == 4 else None, backend=self.backend, shard=shard,
            pairing="argsort" if graphs else "randperm", groups=m.groups, opponent=m.opponent,
            mask_stats=MaskStats(dev) if m.mixblock is not None and cfg.use_mix else None,
        )
        reader = BatchReader(data, m.original, cache, loss_fn, self._augment, rng)
        if graphs:
            self._log("CUDA graphs: the batch read, the generator step and the unlearner step are captured "
                      "after 3 warm-up iterations; an epoch's short last batch runs uncaptured")
        steps = (x_f.shape[0] + cfg.batch_size - 1) // cfg.batch_size
        plan = LoopPlan(n_forget=x_f.shape[0], n_retain=data.x_r.shape[0], steps=steps, flush=flush, graphs=graphs,
                        capture=dev.type == "cuda", quiet=self.quiet or rank != 0)
        return PreparedRun(state=state, reader=reader, data=data, original=m.original, cache=cache, plan=plan,
                           start=start)

    def _check_engine(self, world_size: int) -> bool:
        """Refuse engine options this launch cannot run, before any work; returns whether
        the run captures CUDA graphs."""
        eng, dev = self.engine, self.device
        if world_size > 1 and eng.step == "paper":
            raise ValueError("step='paper' (--paper-step) runs in one process; launch it without torchrun")
        graphs = eng.use_cuda_graphs(dev)
        if graphs and world_size > 1:
            raise ValueError("cuda_graphs=True (--cuda-graphs) runs in one process for now; pass "
                             "--no-cuda-graphs under torchrun")
        if graphs and dev.type == "cuda" and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
            raise ValueError(f"cuda_graphs=True (--cuda-graphs) needs torch.cuda.CUDAGraph.register_generator_state, "
                             f"which torch {torch.__version__} lacks; pass --no-cuda-graphs")
        return graphs

    def _models(self, data: RunData) -> _Models:
        """The run's copies of the model (the frozen original f_D, the unlearner, the lagged
        opponent if any), the MixBlock, and the BatchNorm row groups of the fast step; the
        caller's model is never modified."""
        cfg, eng, dev, fmt = self.config, self.engine, self.device, data.memory_format
        use_mixblock = cfg.mask == "mixblock"
        original = FrozenOriginal(copy.deepcopy(self.model).to(dev, memory_format=fmt),
                                  self.feature_layer if use_mixblock else None)
        unlearner = copy.deepcopy(self.model).to(dev, memory_format=fmt).train().requires_grad_(True)
        with torch.no_grad():
            num_classes = original.logits(data.x_f[:1]).shape[1]
        _check_labels("forget_data", data.y_f, num_classes)
        _check_labels("retain_data", data.y_r, num_classes)
        feat_shape = mixblock = opponent = groups = None
        if use_mixblock:
            with torch.no_grad():
                feat_shape = tuple(original(data.x_f[:1])[1].shape[1:])
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                mixblock = MixBlock(feat_shape[0], init=cfg.mixblock_init,
                                    upsample=cfg.mask_upsample).to(dev, memory_format=fmt)
            if cfg.generator_opponent == "lagged":
                opponent = copy.deepcopy(unlearner).requires_grad_(False).train()
        if eng.step == "fast" and has_batchnorm(unlearner):  # the paper step runs its parts separately
            groups = RowGroups()
            for model in filter(None, (unlearner, opponent)):
                group_batchnorm(model, groups)
        return _Models(original=original, unlearner=unlearner, mixblock=mixblock, opponent=opponent, groups=groups,
                       feat_shape=feat_shape, num_classes=num_classes)

    def _data_parallel(self, m: _Models, rank: int, world_size: int):
        """``(unlearner_forward, mixblock_forward, shard)``: the models themselves in one
        process; DistributedDataParallel wrappers and this rank's rows under torchrun."""
        if world_size == 1:
            return m.unlearner, m.mixblock, None
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = self.device
        ids = [dev.index] if dev.type == "cuda" else None
        unlearner_forward = DDP(m.unlearner, device_ids=ids)
        mixblock_forward = DDP(m.mixblock, device_ids=ids) if m.mixblock is not None else None
        self._log(f"data-parallel over {world_size} ranks: each runs ceil(B/{world_size}) rows of every batch")
        return unlearner_forward, mixblock_forward, RowShard(rank, world_size)

    def _build_cache(self, data: RunData, original: FrozenOriginal, loss_fn, feat_shape,
                     num_classes) -> TeacherCache | None:
        """f_D's outputs per sample (fastmix.mixunlearn.teacher_cache), or None (the reason in ``cache_info``)."""
        eng, dev = self.engine, self.device
        aware = data.aware
        n_f, n_r = data.x_f.shape[0], data.x_r.shape[0]
        if self._augment is not None:
            reason = f"augment={eng.augment!r} changes the inputs every step"
        elif not eng.cache:
            reason = "cache=False (--no-cache)"
        elif not original.has_features and aware:
            reason = "nothing to cache: the Beta ablation with labels needs no f_D output"
        else:
            reason = None
        if reason is not None:
            self.cache_info = {"cached": False, "reason": reason}
            if original.has_features or not aware:
                self._log(f"teacher cache off: {reason}; f_D runs on every batch")
            return None
        per_sample = (math.prod(feat_shape) if original.has_features else 0) + (0 if aware else num_classes)
        limit = engine.check_cache_fits((n_f + n_r) * per_sample * 4, eng.cache_limit_mb, dev)
        cache = TeacherCache(original, loss_fn, data.x_f, data.x_r, aware, feat_shape, num_classes)
        what = ", ".join(filter(None, [
            f"features {'x'.join(map(str, feat_shape))}" if original.has_features else "",
            "" if aware else f"targets of {num_classes} classes"]))
        self.cache_info = {"cached": True, "bytes": cache.nbytes, "limit_mb": limit, "contents": what}
        source = "cache_limit_mb" if eng.cache_limit_mb is not None else "half the free memory"
        self._log(f"teacher cache: {cache.nbytes / 2**20:.1f} MiB on {dev} ({what}) for {n_f} + {n_r} samples; "
                  f"limit {limit:.0f} MiB ({source}; --cache-limit-mb MB or --no-cache to change)")
        return cache

    # --- the loop --------------------------------------------------------------------------

    def run(self, run: PreparedRun) -> nn.Module:
        """Loop over a prepared run and return the unlearned model."""
        from .paper_loop import paper_loop

        if self.engine.step == "paper":
            losses = paper_loop(run.state, run.data, run.original, run.plan, self.seed)
        else:
            losses = fast_loop(run.state, run.reader, run.cache, run.plan)
        plain_batchnorm(run.state.unlearner)
        self._finish(run, losses)
        return run.state.unlearner.eval().requires_grad_(False)

    def unlearn(self, forget_data, retain_data) -> nn.Module:
        """Run ``epochs`` passes over the forget set and return the unlearned model."""
        return self.run(self.prepare(forget_data, retain_data))

    def _finish(self, run: PreparedRun, losses: Losses) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        end = time.perf_counter()
        self.seconds = end - run.start
        self.timings = {"setup_s": losses.start - run.start, "loop_s": end - losses.start,
                        "steps": self.config.epochs * run.plan.steps}
        self.history = {
            "unlearner": torch.stack(losses.unlearner).tolist() if losses.unlearner else [],
            "generator": torch.stack(losses.generator).tolist() if losses.generator else [],
        }
        stats = run.state.mask_stats
        self.mask_stats = stats.read(distributed=run.state.shard is not None) if stats is not None else None
        x_f, x_r = run.data.x_f, run.data.x_r
        with torch.no_grad():
            hf8, hr8 = run.original(x_f[:8])[1], run.original(x_r[:8])[1]
        self._preview = (x_f[:8], x_r[:8], hf8, hr8)

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
