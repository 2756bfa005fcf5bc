"""Training the original and the retrained classifier (SPEC 8's recipe), and caching them."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from fastmix.mixunlearn.engine import flush_subnormals_, is_convolutional
from fastmix.progress import progress_bar

from .atomic import atomic_write


@dataclass(frozen=True)
class Recipe:
    """Adam with weight decay, cross-entropy, shuffled batches (paper: lr 1e-4, wd 1e-4,
    20 epochs, batch 32)."""

    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 1e-4


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    *,
    seed: int,
    desc: str = "train",
    quiet: bool = False,
) -> nn.Module:
    """Train ``model`` in place on ``(x, y)`` (on the model's device) and return it.

    Batches come from ``torch.randperm`` with a generator on the data's device seeded
    from ``seed``; no value is read back to the host inside the loop. The last
    partial batch of an epoch is kept.

    Run as the unlearner's fast step runs (fastmix.mixunlearn.engine): convolutional models train
    in channels_last (and are handed back in the default format); on the CPU, Adam is
    the fused implementation and the subnormal weights that weight decay leaves are
    zeroed before each epoch (BENCHMARKS.md, "CPU: training the original, retrained and fine-tuned models").
    """
    device = x.device
    cpu = device.type == "cpu"
    fmt = torch.channels_last if is_convolutional(model, x.dim()) else torch.contiguous_format
    model.to(memory_format=fmt)
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, fused=cpu or None)
    n, bs = x.shape[0], recipe.batch_size
    steps = (n + bs - 1) // bs
    model.train()
    with progress_bar(total=recipe.epochs * steps, desc=desc, quiet=quiet) as bar:
        for _ in range(recipe.epochs):
            if cpu:
                flush_subnormals_(model)
            order = torch.randperm(n, generator=gen, device=device)
            for s in range(steps):
                idx = order[s * bs : (s + 1) * bs]
                xb = x.index_select(0, idx).contiguous(memory_format=fmt)
                loss = F.cross_entropy(model(xb), y.index_select(0, idx))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
    return model.to(memory_format=torch.contiguous_format).eval()


def cache_key(**fields) -> str:
    """A short stable hash of what determines a trained model."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def save_checkpoint(path: Path, model: nn.Module, meta: dict) -> None:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    atomic_write(path, lambda tmp: torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp))


def load_checkpoint(path: Path, model: nn.Module) -> dict:
    """Load weights into ``model``; returns the stored metadata."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["state_dict"])
    except Exception as e:
        raise ValueError(f"{path}: not a fastmix checkpoint for {type(model).__name__} ({e})") from None
    return blob["meta"]


def train_or_load(
    path: Path,
    make_model,
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: Recipe,
    *,
    seed: int,
    meta: dict,
    desc: str,
    quiet: bool = False,
    log=print,
) -> tuple[nn.Module, float, bool]:
    """The model cached at ``path``, or a new one trained and saved there.

    Returns ``(model, training_seconds, reused)``; a reused model reports the
    seconds its training took when it was made.
    """
    model = make_model().to(x.device)
    if path.is_file():
        stored = load_checkpoint(path, model)
        log(f"reusing {path} (trained in {stored.get('seconds', float('nan')):.1f}s)")
        return model.eval(), float(stored.get("seconds", float("nan"))), True
    start = time.perf_counter()
    train_classifier(model, x, y, recipe, seed=seed, desc=desc, quiet=quiet)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    seconds = time.perf_counter() - start
    save_checkpoint(path, model, {**meta, "recipe": asdict(recipe), "seconds": seconds})
    log(f"saved {path} ({seconds:.1f}s)")
    return model, seconds, False
