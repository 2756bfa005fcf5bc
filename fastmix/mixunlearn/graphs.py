"""CUDA graphs for the fast step (``MixUnlearn(cuda_graphs=True)``, ``--cuda-graphs``).

Three graphs, captured once after a few eager warm-up iterations on a side stream (the
warm-up iterations are real training steps, so the result does not depend on them):

* the batch read: static int64 index buffers into the device-resident data and the
  teacher cache (the next batch's indices are copied into them, device to device);
* the generator step (every ``gen_interval``-th iteration): lambda, mask, mixup,
  the frozen unlearner, ``-C_tau_gen``, Adam(capturable=True) on the MixBlock;
* the unlearner step: lambda, pairing, mask, mixup, forward, loss, backward, Adam.

All sampling inside them draws from the loop's device generator, registered with each
graph, so a replay draws what the same step run eagerly would. The pairing is
``rand(B).argsort()`` (randperm cannot be captured; ``StepState.pairing``); the uncaptured
path of the same mode uses it too. The last, short batch of an epoch runs eagerly through the same
step functions, so nothing is recaptured. Unverified on a GPU so far.
"""
from __future__ import annotations

import contextlib

import torch

from .batches import BatchReader
from .state import StepState
from .steps import generator_step, unlearner_step


class StepGraphs:
    """Runs full-batch iterations of the fast loop, eagerly for ``warmup`` iterations
    (one at least with a generator step), then by replaying captured graphs.
    ``capture=False`` runs the same code eagerly throughout (the equivalence test's baseline)."""

    def __init__(self, reader: BatchReader, state: StepState, batch_size: int, capture: bool = True,
                 warmup: int = 3):
        device = reader.data.x_f.device
        self.reader, self.state = reader, state
        self.fidx = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.ridx = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.warmup, self.capture = warmup, capture
        self.has_gen = state.mixblock is not None
        self.eager_done, self.gen_done = 0, not self.has_gen
        self.graphs = None
        self.side = torch.cuda.Stream(device) if capture else None

    # the three pieces, on the static buffers
    def _read(self):
        self.batch = self.reader.batch(self.fidx, self.ridx)

    def _g(self):
        self.loss_g = generator_step(self.state, self.batch)

    def _u(self):
        self.loss_u = unlearner_step(self.state, self.batch)

    def _capture_all(self):
        graphs = []
        for fn in (self._read, self._g if self.has_gen else None, self._u):
            if fn is None:
                graphs.append(None)
                continue
            g = torch.cuda.CUDAGraph()
            register = getattr(g, "register_generator_state", None)
            if register is None:
                raise RuntimeError("cuda_graphs=True needs torch.cuda.CUDAGraph.register_generator_state "
                                   "(torch >= 2.5) to draw from the loop's generator inside a graph")
            register(self.state.rng)
            with torch.cuda.graph(g):
                fn()
            graphs.append(g)
        self.graphs = graphs

    def step(self, fidx: torch.Tensor, ridx: torch.Tensor, with_gen: bool):
        """One full-batch iteration; returns ``(generator loss or None, unlearner loss)``."""
        self.fidx.copy_(fidx)
        self.ridx.copy_(ridx)
        if self.graphs is None and self.capture and self.eager_done >= self.warmup and self.gen_done:
            torch.cuda.current_stream().synchronize()
            self._capture_all()
        if self.graphs is not None:
            read, g, u = self.graphs
            read.replay()
            if with_gen:
                g.replay()
            u.replay()
            return (self.loss_g.clone() if with_gen else None), self.loss_u.clone()
        if self.side is not None:  # warm-up on a side stream, as capture wants
            self.side.wait_stream(torch.cuda.current_stream())
            ctx = torch.cuda.stream(self.side)
        else:
            ctx = contextlib.nullcontext()
        with ctx:
            self._read()
            if with_gen:
                self._g()
            self._u()
        if self.side is not None:
            torch.cuda.current_stream().wait_stream(self.side)
        self.eager_done += 1
        self.gen_done = self.gen_done or with_gen
        return (self.loss_g if with_gen else None), self.loss_u
