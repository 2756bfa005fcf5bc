"""Host time of fastmix's ops: what an eager call costs in Python and dispatch alone.

The backend's kernels are swapped for ones that return preallocated outputs (no
arithmetic), so what remains is the host path: argument and value checks, backend
resolution, the autograd plumbing, the scaling of the saved gradient. Timed over many
calls, forward and backward apart, with ``time.thread_time`` (the CPU time this thread
used: on a shared, oversubscribed machine the wall clock mostly measures the wait for a
core); the median of several repeats (``--min``: the least) is printed in microseconds per call, next to the
floor: a bare ``torch.autograd.Function`` whose forward returns a new 0-d tensor and
whose backward returns preallocated gradients (what any eager op with autograd costs), for
one input and for three (the loss's three logits), and two of PyTorch's native ops (``sum``,
``cross_entropy`` at (32, 10), arithmetic included) through the same autograd engine.

    python bench/host_time.py            # the default (torch) backend's path
    python bench/host_time.py --trusted  # inside fastmix.ops.debug.trusted_inputs()
    python bench/host_time.py --backend cpu

With ``--backend cpu`` the C++ kernels run for real (their arithmetic at (32, 10) is part
of every figure), and two more rows split the loss forward: the backend's Python wrapper
with its ctypes call and kernel, and the kernel alone through ctypes.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import fastmix
from fastmix.backends import Kernels, kernels_for

MIXUP_SHAPE = (32, 1, 28, 28)  # the mixup benchmark's small case; masks broadcast over the one channel


def null_kernels(B: int, C: int) -> Kernels:
    """Kernels that do nothing: gradients are tensors allocated once, here; outputs are
    fresh empty tensors (autograd needs a new output tensor per call)."""
    g = [torch.zeros(B, C) for _ in range(3)]
    out = torch.zeros(B, C)
    mask_grad = torch.zeros(MIXUP_SHAPE)
    empty = torch.empty(0)

    def loss_forward(*args):
        loss = torch.empty(())
        return (loss, *g) if args[-1] else (loss, empty, empty, empty)

    return Kernels(
        sharpen_forward=lambda z, T: torch.empty(z.shape),
        sharpen_backward=lambda g_, y, T: out,
        mixup_forward=lambda x_f, *a: torch.empty(x_f.shape),
        mixup_backward=lambda *a: (mask_grad, mask_grad, mask_grad),
        contrastive_forward=lambda *a: (torch.empty(()), g[0] if a[-1] else empty),
        real_forward=lambda *a: (torch.empty(()), *((g[1], g[2]) if a[-1] else (empty, empty))),
        loss_forward=loss_forward,
    )


STAT = statistics.median  # --min: the least of the repeats (what the other processes' load added least to)


def per_call_us(fn, n: int, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        for _ in range(n):
            fn()
        times.append((time.thread_time() - t0) / n * 1e6)
    return STAT(times)


class _Bare(torch.autograd.Function):
    @staticmethod
    def forward(ctx, grads, *inputs):
        ctx.grads = grads
        return torch.empty(())

    @staticmethod
    def backward(ctx, grad):
        return None, *ctx.grads


def forward_backward_us(make_loss, inputs, n: int, grad_output=None) -> tuple[float, float, float]:
    """Forward, whole backward (one ``torch.autograd.grad`` call) and the backward's
    marginal share (:func:`marginal_backward_us`), us per call."""
    fwd = per_call_us(make_loss, n)
    bwd = []
    for _ in range(7):  # each graph goes backward once
        losses = iter([make_loss() for _ in range(n)])
        bwd.append(per_call_us(lambda it=losses: torch.autograd.grad(next(it), inputs, grad_output), n, repeats=1))
    return fwd, STAT(bwd), marginal_backward_us(make_loss, inputs, n, grad_output)


def marginal_backward_us(make_out, inputs, n: int, grad_output=None) -> float:
    """What an op adds to a backward the engine runs anyway: ``torch.autograd.grad`` over two
    roots, the op's output and ``anchor.sum()``, less the same call over ``anchor.sum()``
    alone. A training step runs one backward over the whole graph, so the engine's fixed
    cost per call (the graph task, its start and end: about what ``x.sum()``'s whole
    backward costs) is paid once per step, not per op; this is the op's own share. The two
    are timed alternately, 7 rounds, each graph going backward once."""
    anchor = torch.randn(8, requires_grad=True)
    with_op, alone = [], []
    for _ in range(7):
        graphs = iter([(make_out(), anchor.sum()) for _ in range(n)])
        with_op.append(per_call_us(lambda it=graphs: torch.autograd.grad(
            next(it), (*inputs, anchor), (grad_output, None)), n, repeats=1))
        sums = iter([anchor.sum() for _ in range(n)])
        alone.append(per_call_us(lambda it=sums: torch.autograd.grad(next(it), anchor), n, repeats=1))
    return STAT(with_op) - STAT(alone)


def cpu_loss_rows(logits, targets, lam, perm, n: int) -> list:
    """The cpu backend's loss forward with gradients: wrapper + ctypes + kernel, and the
    kernel alone (its struct built once)."""
    from fastmix.backends import cpu_backend

    z = [t.detach() for t in logits]
    wrapper = per_call_us(lambda: cpu_backend.loss_forward(*z, *targets, lam, perm, 10.0, 10.0, 1.0, "sum", True), n)
    loss, grads = torch.empty(()), [torch.empty_like(t) for t in z]
    labels = targets[0].dtype == torch.int64
    q = [0, 0] if labels else [t.data_ptr() for t in targets]
    y = [t.data_ptr() for t in targets] if labels else [0, 0]
    B, C = z[0].shape
    call = cpu_backend._LOSS_CALL.pack(*[t.data_ptr() for t in z], *q, *y, lam.data_ptr(), perm.data_ptr(),
                                       loss.data_ptr(), *[g.data_ptr() for g in grads], 1, B, B, C, 10.0, 10.0, 1.0,
                                       0, 1, 1)
    fn = cpu_backend._fn("loss_forward")
    kernel = per_call_us(lambda: fn(call), n)
    return [("  cpu_backend.loss_forward (wrapper)", wrapper, None, None),
            ("  its C kernel alone (ctypes)", kernel, None, None)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trusted", action="store_true", help="inside fastmix.ops.debug.trusted_inputs()")
    parser.add_argument("--backend", choices=("torch", "cpu"), default="torch",
                        help="torch: its kernels swapped for ones that do nothing; cpu: the C++ kernels run")
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--min", action="store_true", help="the least of the 7 repeats instead of their median")
    args = parser.parse_args()
    global STAT
    STAT = min if args.min else statistics.median
    torch.set_num_threads(1)
    B, C = 32, 10
    if args.backend == "torch":
        kernels_for("torch")
        sys.modules["fastmix.backends"]._REGISTERED["torch"] = null_kernels(B, C)
    module = fastmix.MixUnlearnLoss(1.0, 10.0, 10.0, 1.0, backend=args.backend)
    logits = [torch.randn(B, C).requires_grad_() for _ in range(3)]
    y_f, y_r = torch.randint(0, C, (B,)), torch.randint(0, C, (B,))
    q_f, q_r = torch.softmax(torch.randn(B, C), 1), torch.softmax(torch.randn(B, C), 1)
    lam, perm = torch.rand(B), torch.randperm(B)
    z = torch.randn(B, C)

    context = fastmix.ops.debug.trusted_inputs(args.trusted)
    with context:
        g = torch.zeros(B, C)
        rows = [("floor: a bare autograd.Function", *forward_backward_us(lambda: _Bare.apply((g,), logits[0]),
                                                                          logits[:1], args.n)),
                ("floor, three inputs (as the loss)", *forward_backward_us(lambda: _Bare.apply((g, g, g), *logits),
                                                                            logits, args.n)),
                # PyTorch's own ops through the same autograd engine (their arithmetic included)
                ("native: x.sum()", *forward_backward_us(lambda: logits[0].sum(), logits[:1], args.n)),
                ("native: F.cross_entropy (32, 10)", *forward_backward_us(
                    lambda: torch.nn.functional.cross_entropy(logits[0], y_f), logits[:1], args.n))]
        for name, targets in (("labels", (y_f, y_r)), ("probabilities", (q_f, q_r))):
            fwd, bwd, marginal = forward_backward_us(lambda t=targets: module(*logits, *t, lam, perm), logits, args.n)
            rows.append((f"MixUnlearnLoss {name}", fwd, bwd, marginal))
            if name == "labels":  # what nn.Module.__call__ adds (its hook checks) to the op's own path
                rows.append(("  the same through .forward", per_call_us(
                    lambda t=targets: module.forward(*logits, *t, lam, perm), args.n), None, None))
            if args.backend == "cpu":
                rows += cpu_loss_rows(logits, targets, lam, perm, args.n)
        rows.append(("sharpen (no grad)", per_call_us(lambda: fastmix.sharpen(z, 0.3, backend=args.backend), args.n),
                     None, None))
        z_grad = z.clone().requires_grad_()
        rows.append(("sharpen", *forward_backward_us(lambda: fastmix.sharpen(z_grad, 0.3, backend=args.backend),
                                                     [z_grad], args.n, torch.ones(B, C))))
        x_f, x_r = torch.randn(MIXUP_SHAPE), torch.randn(MIXUP_SHAPE)
        mask = torch.rand(MIXUP_SHAPE).requires_grad_()
        rows.append(("mixup, mask weight", *forward_backward_us(
            lambda: fastmix.mixup(x_f, x_r, mask, perm, backend=args.backend), [mask], args.n,
            torch.ones(MIXUP_SHAPE))))
    kernels = "kernels return preallocated outputs" if args.backend == "torch" else "the C++ kernels run"
    stat = "least" if args.min else "median"
    print(f"host CPU time per call, us ({stat} of 7 x {args.n} calls; backend {args.backend}: {kernels})"
          f"{' inside trusted_inputs()' if args.trusted else ''}")
    print("  (backward: one torch.autograd.grad call, the engine's fixed cost included; its share: what the op"
          " adds to a backward over a larger graph)")
    for name, fwd, bwd, share in rows:
        print(f"  {name:36s} forward {fwd:6.1f}"
              + (f"  backward {bwd:6.1f}  its share {share:6.1f}" if bwd is not None else ""))


if __name__ == "__main__":
    main()
