"""Bytes each Triton launch reads and writes, counted under the interpreter (and, through
``recorded``, each launch of the CUDA kernels in the host emulation).

Every load and store of a kernel goes through the interpreter's builder; ``Traffic``
records the addresses a program touches, which named tensor they fall in, and the
eviction policy of the load. From that, per launch and tensor:

- ``bytes``: what DRAM serves when nothing survives between programs or launches. A
  program that reads an element twice pays once (its own row, just read: L1/L2);
  two programs reading it pay twice.
- ``l2_bytes``: the same, less the reads of elements that the launch before read with
  ``eviction_policy="evict_last"`` (what the kernels ask L2 to keep for the next launch).
  Valid only while that set fits in L2; ``evict_last_bytes`` says how big it is.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Launch:
    kernel: str
    grid: tuple
    programs: list = field(default_factory=list)  # per program: {(op, policy): set of element addresses}


class Traffic:
    """Records while installed (monkeypatch); ``count`` classifies afterwards, so that the
    kernels' own outputs can be named once they exist."""

    def __init__(self, monkeypatch):
        from triton.runtime.interpreter import InterpretedFunction, InterpreterBuilder

        self.launches: list[Launch] = []
        self.sizes: dict = {}
        self._program: dict = {}
        counter = self
        run = InterpretedFunction.run
        set_grid_idx = InterpreterBuilder.set_grid_idx
        load = InterpreterBuilder.create_masked_load
        store = InterpreterBuilder.create_masked_store

        def counted_run(kernel, *args, grid, warmup, **kwargs):
            counter.launches.append(Launch(kernel.fn.__name__, tuple(grid)))
            try:
                return run(kernel, *args, grid=grid, warmup=warmup, **kwargs)
            finally:
                counter._end_program()

        def counted_set_grid_idx(builder, x, y, z):
            counter._end_program()
            return set_grid_idx(builder, x, y, z)

        def counted_load(builder, ptrs, mask, other, cache_policy, is_volatile):
            counter._touch("load", ptrs, mask, cache_policy)
            return load(builder, ptrs, mask, other, cache_policy, is_volatile)

        def counted_store(builder, ptrs, value, mask, cache_policy):
            counter._touch("store", ptrs, mask, None)
            return store(builder, ptrs, value, mask, cache_policy)

        monkeypatch.setattr(InterpretedFunction, "run", counted_run)
        monkeypatch.setattr(InterpreterBuilder, "set_grid_idx", counted_set_grid_idx)
        monkeypatch.setattr(InterpreterBuilder, "create_masked_load", counted_load)
        monkeypatch.setattr(InterpreterBuilder, "create_masked_store", counted_store)
        # the interpreter drops the cache policy: keep the eviction policy for _touch
        monkeypatch.setattr(InterpreterBuilder, "get_cache_policy",
                            lambda builder, cache_modifier, eviction_policy: eviction_policy)

    def _touch(self, op, ptrs, mask, policy):
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        shape = np.broadcast_shapes(ptrs.data.shape, mask.data.shape)
        addresses = np.broadcast_to(ptrs.data, shape)[np.broadcast_to(mask.data, shape)]
        addresses = np.unique(addresses.astype(np.uint64)).tolist()
        self._program.setdefault((op, policy), set()).update(addresses)
        self.sizes.update(dict.fromkeys(addresses, size))

    def _end_program(self):
        if self._program and self.launches:
            self.launches[-1].programs.append(self._program)
        self._program = {}

    def count(self, tensors: dict[str, torch.Tensor]) -> list[dict]:
        """Per launch: {"kernel", "grid", "bytes", "l2_bytes": {(op, name): bytes},
        "evict_last_bytes"}; name "other" for memory outside ``tensors``."""
        ranges = []
        for name, t in tensors.items():
            start = t.untyped_storage().data_ptr()
            ranges.append((name, start, start + t.untyped_storage().nbytes()))

        def name_of(address):
            return next((name for name, start, end in ranges if start <= address < end), "other")

        out, kept = [], set()
        for launch in self.launches:
            counts = {"kernel": launch.kernel, "grid": launch.grid, "bytes": defaultdict(int),
                      "l2_bytes": defaultdict(int)}
            evict_last = set()
            for program in launch.programs:
                paid = defaultdict(set)  # an element read under two policies by one program is paid once
                for (op, policy), addresses in program.items():
                    paid[op] |= addresses
                    if policy == "evict_last":
                        evict_last |= addresses
                for op, addresses in paid.items():
                    for address in addresses:
                        key = (op, name_of(address))
                        counts["bytes"][key] += self.sizes[address]
                        if not (op == "load" and address in kept):
                            counts["l2_bytes"][key] += self.sizes[address]
            counts["evict_last_bytes"] = sum(self.sizes[a] for a in evict_last)
            kept = evict_last
            out.append(counts)
        return out


def recorded(launches: list[Launch], sizes: dict) -> Traffic:
    """A ``Traffic`` of accesses recorded elsewhere (the CUDA host emulation's trace), to be
    counted the same way: a program is then a group of lanes that owns a row."""
    traffic = Traffic.__new__(Traffic)
    traffic.launches, traffic.sizes, traffic._program = launches, sizes, {}
    return traffic


def total(counts: list[dict], op: str, name: str, l2: bool = False) -> int:
    return sum(c["l2_bytes" if l2 else "bytes"][(op, name)] for c in counts)


def check_fused_loss_traffic(counts: list[dict], named: dict, kind: str, B: int, C: int) -> None:
    """The multiplicities the three-launch fused loss is designed for (Triton's and CUDA's
    alike; BENCHMARKS.md derives its traffic tables from them). ``named``: z_mix, z_f, z_r,
    q_f, q_r, g_mix, g_f, g_r."""

    def reads(name, l2=False):
        return total(counts, "load", name, l2) / named[name].nbytes

    # with nothing kept between launches, a row with a forget term is read twice
    assert (reads("z_mix"), reads("z_f"), reads("z_r")) == (2, 2, 1)
    # what a launch asks L2 to keep is what the next one reads again: then every logit is read once
    assert (reads("z_mix", True), reads("z_f", True), reads("z_r", True)) == (1, 1, 1)
    if kind == "probabilities":
        assert (reads("q_f"), reads("q_r")) == (3, 2)
        # q_f once; q_r twice: q_r[perm[i]] (mix row i) and q_r[i] (retain row i) never share a program
        assert (reads("q_f", True), reads("q_r", True)) == (1, 2)
    for name in ("g_mix", "g_f", "g_r"):  # each gradient written once, nothing else written into it
        assert total(counts, "store", name) == named[name].nbytes
    assert all(total(counts, "store", name) == 0 for name in ("z_mix", "z_f", "z_r", "q_f", "q_r"))
    # the kept set is one log-sum-exp group at a time: its logits (and q_f), not all of them
    row_bytes = C * 4 * (2 if kind == "probabilities" else 1)
    assert [c["evict_last_bytes"] for c in counts] == [B * row_bytes, B * row_bytes, 0]

    # these multiplicities against the floor (logits and targets read once, each gradient
    # written once): 13/8 = 1.63x (probabilities) and 8/6 = 1.33x (labels) with nothing kept
    # in L2, 9/8 = 1.13x and 6/6 = 1.00x with the kept set in L2 (BENCHMARKS.md's tables)
