"""GPU figures of the CUDA issue: launches and speed of the loss, mixup bandwidth.

Usage: python bench/cuda_bench.py [--json FILE] [--backends cuda,triton,torch]
       python bench/cuda_bench.py --resources LIB   (no GPU needed: registers per kernel)

Measures, on the current GPU:
- the copy bandwidth (a large device-to-device copy: bytes read + written per second);
- the kernel launches of a contrastive-loss forward plus backward at (B, C) = (32, 10);
- its time at (32, 10) and (4096, 1000), against the bandwidth floor
  (bytes of logits, targets and gradient over the copy bandwidth);
- the unlearner's loss L_mix + omega * L_real as one op (the backend's ``loss_forward``,
  forward with gradients) at (32, 10) (launches) and (4096, 1000), against its floor;
- mixup at (256, 3, 224, 224) float32 channels_last against the copy bandwidth.
Times are medians of CUDA-event timings after warm-up.

``--resources LIB`` prints, for each architecture in a built library, each kernel's
registers, stack, shared and local memory (``cuobjdump -res-usage``) as a markdown table.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys

import torch

import fastmix


def cuda_time(fn, iters=50, warmup=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def copy_bandwidth():
    src = torch.empty(1 << 28, dtype=torch.float32, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    t = cuda_time(lambda: dst.copy_(src), iters=20, warmup=3)
    return 2 * src.numel() * 4 / t


def count_launches(fn):
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def loss_case(B, C, backend, kind, bandwidth):
    gen = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(B, C, device="cuda", generator=gen).requires_grad_()
    if kind == "labels":
        q_f = torch.randint(0, C, (B,), device="cuda", generator=gen)
        q_r = torch.randint(0, C, (B,), device="cuda", generator=gen)
        target_bytes = 2 * B * 8
    else:
        q_f = torch.softmax(torch.randn(B, C, device="cuda", generator=gen), 1)
        q_r = torch.softmax(torch.randn(B, C, device="cuda", generator=gen), 1)
        target_bytes = 2 * B * C * 4
    lam = torch.rand(B, device="cuda", generator=gen)
    perm = torch.randperm(B, device="cuda", generator=gen)
    seed = torch.ones((), device="cuda")

    def step():
        loss = fastmix.contrastive_loss(logits, q_f, q_r, lam, 0.5, perm=perm, backend=backend)
        # a ready grad_output (no fill kernel) and no accumulation into logits.grad
        return torch.autograd.grad(loss, logits, seed)

    t = cuda_time(step)
    floor = (2 * B * C * 4 + target_bytes + B * 8 + B * 4) / bandwidth  # logits, targets, grad, perm, lam
    row = {"op": "contrastive fwd+bwd", "B": B, "C": C, "targets": kind, "backend": backend,
           "time_us": t * 1e6, "floor_us": floor * 1e6, "x_floor": t / floor}
    if B * C <= 1024:
        row["launches"] = len(count_launches(step))
    return row


def unlearn_loss_case(B, C, backend, kind, bandwidth):
    """The fused loss_forward of a backend: three logits (mix, retain, forget), both temperatures."""
    from fastmix.backends import kernels_for

    fn = kernels_for(backend).loss_forward
    if fn is None:
        return {"op": "unlearn loss fwd", "B": B, "C": C, "backend": backend, "error": "no loss_forward"}
    gen = torch.Generator(device="cuda").manual_seed(0)
    z = torch.randn(3, B, C, device="cuda", generator=gen)
    if kind == "labels":
        q_f, q_r = (torch.randint(0, C, (B,), device="cuda", generator=gen) for _ in range(2))
        target_bytes = 2 * B * 8
    else:
        q_f, q_r = (torch.softmax(torch.randn(B, C, device="cuda", generator=gen), 1) for _ in range(2))
        target_bytes = 2 * B * C * 4
    lam = torch.rand(B, device="cuda", generator=gen)
    perm = torch.randperm(B, device="cuda", generator=gen)

    def step():
        return fn(z[0], z[2], z[1], q_f, q_r, lam, perm, 10.0, 5.0, 10.0, "sum", True)

    t = cuda_time(step)
    floor = (2 * 3 * B * C * 4 + target_bytes + B * 8 + B * 4) / bandwidth  # 3 logits + 3 grads, targets once
    row = {"op": "unlearn loss fwd (L_mix + omega L_real)", "B": B, "C": C, "targets": kind, "backend": backend,
           "time_us": t * 1e6, "floor_us": floor * 1e6, "x_floor": t / floor}
    if B * C <= 1024:
        row["launches"] = len(count_launches(step))
    return row


def resources(library: str) -> str:
    """A markdown table of each kernel's resources per architecture (cuobjdump -res-usage)."""
    tool = _cuobjdump()
    table: dict[str, dict[str, tuple[str, ...]]] = {}
    for arch in ("sm_86", "sm_90"):
        usage = subprocess.run([tool, "-res-usage", "-arch", arch, library], capture_output=True, text=True,
                               check=True).stdout
        for name, *res in re.findall(r"Function (\S+):\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", usage):
            table.setdefault(_kernel_name(name), {})[arch] = tuple(res)
    lines = ["| kernel | registers sm_86 | registers sm_90 | stack / local bytes (both) |", "|---|---|---|---|"]
    for name in sorted(table):
        by_arch = table[name]
        regs = [by_arch.get(arch, ("-",))[0] for arch in ("sm_86", "sm_90")]
        spill = sorted({f"{r[1]} / {r[3]}" for r in by_arch.values()})
        lines.append(f"| `{name}` | {regs[0]} | {regs[1]} | {', '.join(spill)} |")
    return "\n".join(lines) + "\n"


def _cuobjdump() -> str:
    """cuobjdump from PATH or from Triton's wheel (which ships one)."""
    import importlib.util
    import os
    import shutil

    found = shutil.which("cuobjdump")
    spec = importlib.util.find_spec("triton")
    for location in (spec.submodule_search_locations or []) if spec and not found else []:
        candidate = os.path.join(location, "backends", "nvidia", "bin", "cuobjdump")
        if os.access(candidate, os.X_OK):
            found = candidate
    if not found:
        raise SystemExit("no cuobjdump found (install triton or the CUDA toolkit's cuobjdump)")
    return found


def _kernel_name(mangled: str) -> str:
    """loss_rows_kernel<float, true, 4> from its mangled name (enough of the Itanium ABI for csrc)."""
    demangled = subprocess.run(["c++filt", mangled], capture_output=True, text=True, check=False).stdout.strip()
    demangled = demangled or mangled
    demangled = re.sub(r"fastmix::\(anonymous namespace\)::", "", demangled)
    demangled = re.sub(r"\(.*\)$", "", demangled).removeprefix("void ")  # the parameter list, the return type
    return demangled.replace("__nv_bfloat16", "bf16").replace("__half", "half")


def mixup_case(backend, bandwidth):
    B, shape = 256, (256, 3, 224, 224)
    x_f = torch.randn(shape, device="cuda").contiguous(memory_format=torch.channels_last)
    x_r = torch.randn(shape, device="cuda").contiguous(memory_format=torch.channels_last)
    lam = torch.rand(B, device="cuda")
    perm = torch.randperm(B, device="cuda")
    t = cuda_time(lambda: fastmix.mixup(x_f, x_r, lam, perm, backend=backend), iters=20)
    moved = 3 * x_f.numel() * 4
    return {"op": "mixup fwd (256,3,224,224) fp32 channels_last", "backend": backend, "time_us": t * 1e6,
            "GBps": moved / t / 1e9, "of_copy_bw": moved / t / bandwidth}


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--json")
    parser.add_argument("--backends", default="cuda,triton,torch")
    parser.add_argument("--resources", metavar="LIB", help="print the kernels' resources in LIB and stop")
    args = parser.parse_args(argv)
    if args.resources:
        print(resources(args.resources))
        return 0
    if not torch.cuda.is_available():
        print("no GPU: nothing to measure", file=sys.stderr)
        return 1
    status = fastmix.backends("cuda")
    backends = [b for b in args.backends.split(",") if status[b].usable]
    bw = copy_bandwidth()
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_GBps": bw / 1e9,
              "backends": {b: status[b].reason for b in status}, "rows": []}
    for backend in backends:
        for B, C, kind in ((32, 10, "labels"), (32, 10, "probabilities"), (4096, 1000, "labels"),
                           (4096, 1000, "probabilities")):
            try:
                report["rows"].append(loss_case(B, C, backend, kind, bw))
            except Exception as exc:  # noqa: BLE001 (keep measuring the rest)
                report["rows"].append({"op": "contrastive fwd+bwd", "B": B, "C": C, "backend": backend,
                                       "error": repr(exc)})
        for B, C, kind in ((32, 10, "labels"), (4096, 1000, "labels"), (4096, 1000, "probabilities")):
            try:
                report["rows"].append(unlearn_loss_case(B, C, backend, kind, bw))
            except Exception as exc:  # noqa: BLE001 (keep measuring the rest)
                report["rows"].append({"op": "unlearn loss fwd", "B": B, "C": C, "backend": backend,
                                       "error": repr(exc)})
        try:
            report["rows"].append(mixup_case(backend, bw))
        except Exception as exc:  # noqa: BLE001 (keep measuring the rest)
            report["rows"].append({"op": "mixup", "backend": backend, "error": repr(exc)})
    print(f"{report['device']}: copy bandwidth {bw / 1e9:.0f} GB/s")
    for row in report["rows"]:
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
