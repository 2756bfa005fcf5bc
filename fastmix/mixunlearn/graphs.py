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
``rand(B).argsort()`` (randperm cannot be captured); the uncaptured path of the same
mode uses it too. The last, short batch of an epoch runs eagerly through the same
step functions, so nothing is recaptured. Unverified on a GPU so far (issue 5).
"""
from __future__ import annotations

import contextlib

import torch


def argsort_perm(n: int, generator: torch.Generator, device) -> torch.Tensor:
    """A uniform random permutation that can be captured in a CUDA graph."""
    return torch.rand(n, generator=generator, device=device).argsort()


class StepGraphs:
    """Runs full-batch iterations of the fast loop, eagerly for ``warmup`` iterations
    (one at least with a generator step), then by replaying captured graphs.
    ``capture=False`` runs the same code eagerly throughout (the equivalence test's baseline)."""

    def __init__(self, batch, gen_step, unl_step, B: int, device, gen: torch.Generator,
                 has_gen: bool, warmup: int = 3, capture: bool = True):
        self.batch, self.gen_step, self.unl_step = batch, gen_step, unl_step
        self.fidx = torch.zeros(B, dtype=torch.long, device=device)
        self.ridx = torch.zeros(B, dtype=torch.long, device=device)
        self.gen, self.warmup, self.capture = gen, warmup, capture
        self.has_gen = has_gen
        self.eager_done, self.gen_done = 0, not has_gen
        self.graphs = None
        self.side = torch.cuda.Stream(device) if capture else None

    # the three pieces, on the static buffers
    def _read(self):
        self.xf, self.qf, self.hf = self.batch(0, self.fidx)
        self.xr, self.qr, self.hr = self.batch(1, self.ridx)

    def _g(self):
        self.loss_g = self.gen_step(self.xf, self.xr, self.hf, self.hr, self.qf, self.qr)

    def _u(self):
        self.loss_u = self.unl_step(self.xf, self.xr, self.hf, self.hr, self.qf, self.qr)

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
            register(self.gen)
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
