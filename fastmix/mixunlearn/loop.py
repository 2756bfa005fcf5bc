"""The fast loop of SPEC 6: batches drawn on the device, a generator step every
``gen_interval`` iterations, an unlearner step every iteration."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from fastmix.ops.debug import trusted_inputs
from fastmix.progress import progress_bar

from . import engine
from .batches import BatchReader
from .state import StepState
from .steps import generator_step, unlearner_step
from .teacher_cache import TeacherCache


@dataclass
class Losses:
    """Each step's loss (0-d tensors on the device) and when the loop began."""

    unlearner: list = field(default_factory=list)
    generator: list = field(default_factory=list)
    start: float = 0.0


@dataclass
class LoopPlan:
    """How the fast loop runs: ``steps`` batches an epoch over ``n_forget`` forget and
    ``n_retain`` retain samples; ``flush`` the models whose subnormal weights are zeroed
    before each epoch (empty: no flush); ``graphs`` replays the steps as CUDA graphs,
    ``capture=False`` runs the graph mode's code uncaptured (its equivalence test)."""

    n_forget: int
    n_retain: int
    steps: int
    flush: tuple = ()
    graphs: bool = False
    capture: bool = True
    quiet: bool = True


def mark_start(device: torch.device) -> float:
    """Where set-up (the teacher cache included) ends and the loop begins."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def fast_loop(state: StepState, reader: BatchReader, cache: TeacherCache | None, plan: LoopPlan) -> Losses:
    cfg, rng = state.config, state.rng
    dev = reader.data.x_f.device
    B, n_f, n_r = cfg.batch_size, plan.n_forget, plan.n_retain
    use_mixblock = state.mixblock is not None
    runner = None
    if plan.graphs:
        from .graphs import StepGraphs

        runner = StepGraphs(reader, state, B, capture=plan.capture)
    reps = (plan.steps * B + n_r - 1) // n_r  # retain permutations needed to fill one epoch's batches
    losses = Losses()
    t = 0
    losses.start = mark_start(dev)
    # the steps build their own labels, pairings and lambdas from data checked in set-up:
    # the ops' value checks (a read-back each) would only cost time here
    with trusted_inputs(), progress_bar(cfg.epochs * plan.steps, "mixunlearn", plan.quiet) as bar:
        for epoch in range(cfg.epochs):
            if plan.flush and epoch:  # weight decay may have pushed more weights below finfo.tiny
                engine.flush_subnormals_(*plan.flush)
            order_f = torch.randperm(n_f, generator=rng, device=dev)
            order_r = torch.cat([torch.randperm(n_r, generator=rng, device=dev) for _ in range(reps)])
            if cache is not None:
                cache.prepare(order_r[: plan.steps * B])
            for s in range(plan.steps):
                fidx = order_f[s * B : (s + 1) * B]
                ridx = order_r[s * B : (s + 1) * B]
                with_gen = use_mixblock and t % cfg.gen_interval == 0
                if runner is not None and fidx.shape[0] == B:
                    loss_g, loss_u = runner.step(fidx, ridx, with_gen)
                else:  # the last forget batch of an epoch may be short
                    batch = reader.batch(fidx, ridx)
                    loss_g = generator_step(state, batch.forget_sized()) if with_gen else None
                    loss_u = unlearner_step(state, batch)
                if loss_g is not None:
                    losses.generator.append(loss_g)
                losses.unlearner.append(loss_u)
                t += 1
                bar.update(1)
    return losses
