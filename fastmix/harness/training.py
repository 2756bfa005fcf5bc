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
from fastmix.mixunlearn.rows import Rows
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
    x: torch.Tensor | Rows,
    y: torch.Tensor,
    recipe: Recipe,
    *,
    seed: int,
    desc: str = "train",
    quiet: bool = False,
    augment=None,
) -> nn.Module:
    """Train ``model`` in place on ``(x, y)`` (on the model's device) and return it;
    ``x`` a tensor or :class:`Rows` (its batches are gathered, nothing else is copied).

    Batches come from ``torch.randperm`` with a generator on the data's device seeded
    from ``seed``; no value is read back to the host inside the loop. The last
    partial batch of an epoch is kept.

    Run as the unlearner's fast step runs (fastmix.mixunlearn.engine): convolutional models train
    in channels_last (and are handed back in the default format); on the CPU, Adam is
    the fused implementation and the subnormal weights that weight decay leaves are
    zeroed before each epoch (BENCHMARKS.md, "CPU: training the original, retrained and fine-tuned models").

    ``augment(batch, generator)``, when given, transforms each training batch; it draws
    from a generator of its own (seeded from ``seed + 1``), so the batches are the same
    with and without it.
    """
    device = x.device
    cpu = device.type == "cpu"
    fmt = torch.channels_last if trainer_layout(model, x.dim()) else torch.contiguous_format
    gen = torch.Generator(device=device).manual_seed(seed)
    aug_gen = torch.Generator(device=device).manual_seed((seed + 1) % 2**63) if augment is not None else None
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
                xb = x.index_select(0, idx)
                if augment is not None:
                    xb = augment(xb, aug_gen)
                xb = xb.contiguous(memory_format=fmt)
                loss = F.cross_entropy(model(xb), y.index_select(0, idx))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(1)
    return model.to(memory_format=torch.contiguous_format).eval()


def trainer_layout(model: nn.Module, sample_dim: int) -> bool:
    """Lay ``model`` out, in place, as fastmix trains every model: channels_last when it
    is convolutional and fed images (as MixUnlearn's engine does; its convolutions are
    faster on the CPU and on GPUs), else unchanged. Returns whether it is channels_last.
    A layout changes results by rounding only; trained models are handed back in the
    default layout (``model.to(memory_format=torch.contiguous_format)``)."""
    if not is_convolutional(model, sample_dim):
        return False
    model.to(memory_format=torch.channels_last)
    return True


def fingerprint(*tensors: torch.Tensor) -> str:
    """A short sha256 of the tensors' dtypes, shapes and bytes: what a cached model was
    trained on, so that other data under the same name and size is never mistaken for it."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()[:16]


def cache_key(**fields) -> str:
    """A short stable hash of what determines a trained model."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _comparable(meta: dict) -> dict:
    return json.loads(json.dumps(meta, sort_keys=True, default=str))  # tuples -> lists, as stored


def save_checkpoint(path: Path, model: nn.Module, meta: dict) -> None:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    atomic_write(path, lambda tmp: torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp))


def _read(path: Path, what: str) -> dict:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a fastmix checkpoint{what} ({e})") from None
    if not isinstance(blob, dict) or not isinstance(blob.get("state_dict"), dict) or \
            not isinstance(blob.get("meta"), dict):
        raise ValueError(f"{path}: not a fastmix checkpoint{what} (expected the keys state_dict and meta)")
    return blob


def load_checkpoint(path: Path, model: nn.Module) -> dict:
    """Load weights into ``model``; returns the stored metadata."""
    blob = _read(path, f" for {type(model).__name__}")
    try:
        model.load_state_dict(blob["state_dict"])
    except Exception as e:
        raise ValueError(f"{path}: not a fastmix checkpoint for {type(model).__name__} ({e})") from None
    return blob["meta"]


def check_meta(path: Path, stored: dict, expected: dict) -> None:
    """Refuse a cached model whose recorded training differs from what the run needs,
    naming the first field that differs (``seconds`` is not compared)."""
    stored, expected = _comparable(stored), _comparable(expected)
    for name, want in expected.items():
        if name == "seconds":
            continue
        have = stored.get(name, "<not recorded>")
        if have != want:
            raise ValueError(
                f"{path}: this cached model was trained with {name}={have!r}, but this run needs {name}={want!r}; "
                "it was copied or renamed from another run: delete it (it is retrained) or pass another --models-dir"
            )


def check_cached(path: Path, meta: dict) -> None:
    """If ``path`` exists, check that it is a readable checkpoint made for ``meta``
    (:func:`check_meta`); lets a run refuse a bad cache entry before it trains anything."""
    if Path(path).is_file():
        check_meta(path, _read(path, "")["meta"], meta)


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
    augment=None,
) -> tuple[nn.Module, float, bool]:
    """The model cached at ``path``, or a new one trained and saved there.

    ``meta`` is what determines the model (data fingerprint, split, seed, model, recipe,
    fastmix version: :func:`fastmix.harness.experiment.model_meta`); a cached model
    whose stored metadata differ from it is refused (:func:`check_meta`), never reused.

    ``augment`` goes to :func:`train_classifier` (what it does must be in ``meta``).

    Returns ``(model, training_seconds, reused)``; a reused model reports the
    seconds its training took when it was made.
    """
    model = make_model().to(x.device)
    if path.is_file():
        stored = load_checkpoint(path, model)
        check_meta(path, stored, {**meta, "recipe": asdict(recipe)})
        log(f"reusing {path} (trained in {stored.get('seconds', float('nan')):.1f}s)")
        return model.eval(), float(stored.get("seconds", float("nan"))), True
    start = time.perf_counter()
    train_classifier(model, x, y, recipe, seed=seed, desc=desc, quiet=quiet, augment=augment)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    seconds = time.perf_counter() - start
    save_checkpoint(path, model, {**meta, "recipe": asdict(recipe), "seconds": seconds})
    log(f"saved {path} ({seconds:.1f}s)")
    return model, seconds, False
