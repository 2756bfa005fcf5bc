"""Compiles every Triton kernel that fastmix's launchers would start, for a GPU
architecture, without a GPU: each launcher runs with a recorder in place of
its kernel, and the recorded launches are compiled ahead of time to cubin.

Run as a script (outside the interpreter): ``python triton_aot.py 90``.
"""
import itertools
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastmix import kernels  # the Triton kernels, installed as fastmix.kernels
from fastmix.kernels import contrastive, mixup, sharpen

TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.int64: "*i64"}


class Recorder:
    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((self.kernel, args, kwargs))

        return launch


def signature(kernel, args, kwargs):
    names = kernel.arg_names
    values = dict(zip(names, args))
    values.update({k: v for k, v in kwargs.items() if k in names})
    constexpr_names = {p.name for p in kernel.params if p.is_constexpr}
    sig, constexprs = {}, {}
    for name in names:
        value = values[name]
        if name in constexpr_names:
            sig[name] = "constexpr"
            constexprs[name] = value
        elif isinstance(value, torch.Tensor):
            sig[name] = TYPES[value.dtype]
        elif isinstance(value, bool):
            raise TypeError(f"{kernel.fn.__name__}: bool argument {name} must be constexpr")
        elif isinstance(value, int):
            sig[name] = "i64" if not -(2**31) <= value < 2**31 else "i32"
        elif isinstance(value, float):
            sig[name] = "fp32"
        else:
            raise TypeError(f"{kernel.fn.__name__}: cannot type argument {name}={value!r}")
    options = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages")}
    return sig, constexprs, options


def record_launches():
    launches = []
    for module in (sharpen, mixup, contrastive):
        for name in dir(module):
            obj = getattr(module, name)
            if isinstance(obj, triton.runtime.JITFunction) and name.endswith("_kernel"):
                setattr(module, name, Recorder(obj, launches))
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        z = torch.randn(6, 9, generator=gen).to(dtype)
        kernels.sharpen_forward(z, 0.3)
        kernels.sharpen_backward(z, z, 0.3)
        x = torch.randn(3, 2, 4, 5).to(dtype)
        perm = torch.tensor([0, 2, 2])
        for weight, p, needs in itertools.product(
            (torch.rand(()), torch.rand(3), torch.rand(3, 1, 4, 5)), (None, perm), ((True, True, True), (False, False, True), (True, False, False))
        ):
            kernels.mixup_forward(x, x, weight, p)
            kernels.mixup_backward(x, x, x, weight, p, needs)
        # a small batch (one fused launch) and a large one (row-terms and gradient kernels)
        for n, C in ((6, 9), (300, 300)):
            logits = torch.randn(n, C, generator=gen).to(dtype)
            labels = torch.randint(0, C, (n,), generator=gen)
            probs = torch.softmax(torch.randn(n, C, generator=gen), 1)
            for target, p, with_grad in itertools.product((labels, probs), (None, torch.arange(n)), (True, False)):
                lam = torch.rand(n)
                kernels.contrastive_forward(logits, target, target, lam, p, 0.5, "sum", with_grad)
                kernels.real_forward(logits, logits, target, target, 0.5, "mean", with_grad)
    return launches


def main(arch: int) -> int:
    seen, failures = set(), []
    for kernel, args, kwargs in record_launches():
        sig, constexprs, options = signature(kernel, args, kwargs)
        key = (kernel.fn.__name__, tuple(sorted(sig.items())), tuple(sorted(constexprs.items())))
        if key in seen:
            continue
        seen.add(key)
        try:
            compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs), target=GPUTarget("cuda", arch, 32), options=options)
            assert compiled.asm["cubin"]
        except Exception as exc:  # report them all, not only the first
            failures.append(f"{kernel.fn.__name__} {sig} {constexprs}: {type(exc).__name__}: {str(exc)[:500]}")
    print(f"compiled {len(seen) - len(failures)} of {len(seen)} kernel variants for sm_{arch}")
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures or not seen else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 90))
