"""Helpers of the methods' tests (a module of its own: ``import conftest`` is ambiguous
between the conftest files of tests/ and tests/harness/)."""
import torch


def same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
