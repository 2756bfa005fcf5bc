"""Compiles every Triton kernel that fastmix's launchers would start, for a GPU
architecture, without a GPU, the way the JIT would on that GPU.

Each launcher runs with a recorder in place of its kernel; each recorded launch
goes through the kernel's own JIT binder (``create_function_from_signature``
with the target's backend), so the specialisation a GPU run gets (pointers and
integers divisible by 16, integers equal to 1) is the one compiled, vectorised
variants included. Prints registers and local memory (spills) per kernel, from\n``cuobjdump -res-usage`` of the cubin.

Run as a script (outside the interpreter): ``python triton_aot.py 90 86``.
"""
import itertools
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton
from fastmix.kernels import contrastive, mixup, sharpen
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from fastmix import kernels  # the Triton kernels, installed as fastmix.kernels

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Recorder:
    def __init__(self, kernel, launches):
        self.kernel, self.launches = kernel, launches

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((self.kernel, args, kwargs))

        return launch


def record_launches(dtype):
    """Every launch the launchers make for ``dtype`` data, on CPU tensors laid out as on a GPU."""
    launches = []
    originals = {}
    for module in (sharpen, mixup, contrastive):
        for name in dir(module):
            obj = getattr(module, name)
            if isinstance(obj, triton.runtime.JITFunction) and name.endswith("_kernel"):
                originals[(module, name)] = obj
                setattr(module, name, Recorder(obj, launches))
    try:
        gen = torch.Generator().manual_seed(0)
        for n, C in ((32, 10), (64, 1024)):
            z = torch.randn(n, C, generator=gen).to(dtype)
            kernels.sharpen_forward(z, 0.3)
            kernels.sharpen_backward(z, z, 0.3)
        perm = torch.tensor([0, 2, 2])
        x = torch.randn(3, 4, 16, 16).to(dtype)
        for weight, p, needs in itertools.product(
            (torch.rand(()), torch.rand(3), torch.rand(3, 1, 16, 16)), (None, perm),
            ((True, True, True), (False, False, True)),
        ):
            kernels.mixup_forward(x, x, weight, p)
            kernels.mixup_backward(x, x, x, weight, p, needs)
        x = x.contiguous(memory_format=torch.channels_last)
        kernels.mixup_forward(x, x, torch.rand(3, 1, 16, 16), perm)
        kernels.mixup_backward(x, x, x, torch.rand(3, 1, 16, 16), perm, (True, True, True))
        # small sets (the one-program tile) and large ones (row-terms and gradient kernels)
        for n, C in ((32, 10), (256, 1024)):
            logits = torch.randn(n, C, generator=gen).to(dtype)
            labels = torch.randint(0, C, (n,), generator=gen)
            probs = torch.softmax(torch.randn(n, C, generator=gen), 1)
            lam = torch.rand(n)
            for target in (labels, probs):
                kernels.loss_forward(logits, logits, logits, target, target, lam, torch.randperm(n), 0.5, 2.0, 0.3,
                                     "mean", True)
                kernels.contrastive_forward(logits, target, target, lam, None, 0.5, "sum", False)
                kernels.real_forward(logits, logits, target, target, 0.5, "mean", True)
    finally:
        for (module, name), obj in originals.items():
            setattr(module, name, obj)
    return launches


def compile_launch(kernel, args, kwargs, target, backend):
    """The launch compiled as the JIT compiles it: its binder's specialisation, its options."""
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    key = (kernel.fn.__name__, str(specialization), str(options))
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return key, lambda: triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                       options=options.__dict__)


def resources(compiled):
    """(registers, local memory bytes per thread: where spills go) of the cubin, from cuobjdump."""
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        out = subprocess.run([str(cuobjdump), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    usage = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", out)
    return int(usage.group(1)), max(int(usage.group(2)), int(usage.group(3)))


def main(archs) -> int:
    failures, report = [], {}
    total = 0
    for arch in archs:
        target = GPUTarget("cuda", arch, 32)
        backend = make_backend(target)
        for dtype in DTYPES:
            seen = set()
            for kernel, args, kwargs in record_launches(dtype):
                key, build = compile_launch(kernel, args, kwargs, target, backend)
                if key in seen:
                    continue
                seen.add(key)
                total += 1
                try:
                    compiled = build()
                    assert compiled.asm["cubin"]
                    regs, spill = resources(compiled)
                except Exception as exc:  # noqa: BLE001 (report them all, not only the first)
                    failures.append(f"sm_{arch} {key}: {type(exc).__name__}: {str(exc)[:500]}")
                    continue
                name = (arch, str(dtype).removeprefix("torch."), kernel.fn.__name__)
                old = report.get(name, (0, 0, 0, 0))
                report[name] = (old[0] + 1, max(old[1], regs), max(old[2], spill), old[3] + (spill > 0))
    print(f"compiled {total - len(failures)} of {total} kernel variants for sm_{', sm_'.join(map(str, archs))}")
    print("arch dtype kernel variants max_registers max_local_bytes variants_with_local")
    for (arch, dtype, name), (n, regs, spill, n_spill) in sorted(report.items()):
        print(f"sm_{arch} {dtype} {name} {n} {regs} {spill} {n_spill}")
    for failure in failures:
        print("FAILED", failure)
    return 1 if failures or not total else 0


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]] or [90]))
