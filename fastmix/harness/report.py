"""The outputs of `fastmix unlearn`: a text table, results.json and a PNG."""
from __future__ import annotations

import functools
import hashlib
import json
import platform
from pathlib import Path

import numpy as np

from .atomic import atomic_write


def format_table(rows: dict[str, dict], metrics) -> str:
    """One row per method (original, retrain, then the methods); metrics in percent.
    A row aggregated over seeds (:func:`aggregate`) shows ``mean ± std``."""
    cols = [*metrics, "avg_gap", "seconds", *(["RTE"] if all("RTE" in r for r in rows.values()) else [])]
    spread = any(f"{c}_std" in row for row in rows.values() for c in cols)
    cell = 17 if spread else 13
    width = max(10, *(len(n) for n in rows)) + 1
    head = "method".ljust(width) + "".join(c.rjust(cell) for c in cols)
    lines = [head, "-" * len(head)]
    for name, row in rows.items():
        cells = "".join((f"{row[c]:.2f} ± {row[c + '_std']:.2f}" if f"{c}_std" in row else f"{row[c]:.2f}").rjust(cell)
                        for c in cols)
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)


def aggregate(per_seed: list[dict[str, dict]]) -> dict[str, dict]:
    """Rows of several seeds' runs as ``{name: {metric: mean, metric_std: std}}`` (the
    sample standard deviation; 0 for one seed), over the methods every run has."""
    names = [n for n in per_seed[0] if all(n in rows for rows in per_seed)]
    out = {}
    for name in names:
        keys = [k for k in per_seed[0][name] if all(k in rows[name] for rows in per_seed)]
        values = {k: np.array([rows[name][k] for rows in per_seed], dtype=np.float64) for k in keys}
        out[name] = {}
        for k, v in values.items():
            out[name][k] = float(v.mean())
            out[name][f"{k}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    return out


def versions() -> dict:
    """What ran: the packages' versions, the machine, and ``fastmix_source``, a hash of
    fastmix's code (:func:`code_hash`): the version number stays put between releases. A
    resumed run may mix code (nothing compares it): :func:`write_results` lists every
    source its rows came from."""
    import sklearn
    import torch

    import fastmix

    return {"fastmix": fastmix.__version__, "fastmix_source": code_hash(), "torch": torch.__version__,
            "scikit-learn": sklearn.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu_threads": torch.get_num_threads()}


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """:func:`source_hash` of the fastmix package and of its Triton kernels (``fastmix.kernels``,
    a folder of its own in an editable install), once per process: a run calls it when it
    starts, so that an edit made while it runs is not taken for the code it ran. Where
    ``fastmix.kernels`` cannot be found (fastmix imported from a source checkout, whose
    ``kernels/`` is not inside the package), the package alone: those kernels cannot run."""
    import importlib.util

    import fastmix

    package = Path(fastmix.__file__).parent
    spec = importlib.util.find_spec("fastmix.kernels")
    kernels = [Path(p) for p in spec.submodule_search_locations] if spec else []
    return source_hash(package, *[k for k in kernels if package not in k.parents])


def source_hash(*roots: Path) -> str:
    """The first 16 hex digits of a SHA-256 over the relative paths and contents of the
    ``.py`` files and the built kernel libraries (``.so``) under each of ``roots``."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted([*root.rglob("*.py"), *root.rglob("*.so")]):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def recorded_sources(doc: dict) -> list:
    """The ``fastmix_source`` hashes a results.json says its rows came from (a file from
    before ``fastmix_sources`` records one ``fastmix_source``; none: [])."""
    v = doc.get("versions") if isinstance(doc.get("versions"), dict) else {}
    held = v.get("fastmix_sources") or ([v["fastmix_source"]] if v.get("fastmix_source") else [])
    return [str(h) for h in held]


def write_results(path: Path, rows: dict[str, dict], settings: dict, pending=(), diagnostics=None,
                  sources=(), made_here: bool = True) -> dict:
    """results.json: one record per row keyed by method name (``original``, ``retrain``,
    then each method) with the metrics in percent, ``avg_gap`` and ``seconds``; plus
    ``settings`` and ``versions``. Written atomically; while methods are still to run it
    also lists them under ``pending`` (absent once the run is complete).

    ``versions["fastmix_sources"]``: the sorted ``fastmix_source`` hashes of the code that
    made the rows: ``sources`` (those of rows kept from earlier runs: a resumed run, a
    ``--seeds`` run's seeds) and, when this process made rows (``made_here``; a ``--seeds``
    aggregate only averages), its own; more than one means the rows mix code."""
    doc = {name: {k: float(v) for k, v in row.items()} for name, row in rows.items()}
    if pending:
        doc["pending"] = list(pending)
    if diagnostics:
        doc["diagnostics"] = diagnostics
    doc["settings"] = settings
    doc["versions"] = versions()
    doc["versions"]["fastmix_sources"] = sorted({*sources, *([doc["versions"]["fastmix_source"]] if made_here else [])})

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2, default=str)
            f.write("\n")

    atomic_write(path, write)
    return doc


def _show(ax, img, title=None, cmap="gray", vmin=None, vmax=None):
    img = np.asarray(img)
    if img.shape[0] == 1:
        ax.imshow(img[0], cmap=cmap, vmin=vmin, vmax=vmax)
    else:  # colour: min-max scale each image for display
        img = np.transpose(img, (1, 2, 0))
        img = (img - img.min()) / max(img.max() - img.min(), 1e-8)
        ax.imshow(img)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _plot_mask_stats(ax, stats) -> None:
    """Mean mask per lambda bin (bars, labelled with the bin's count) beside the bin's mean lambda (dots)."""
    centres = [(lo + hi) / 2 for lo, hi in stats["bins"]]
    width = 0.8 * (stats["bins"][0][1] - stats["bins"][0][0])
    masks = [m if m is not None else 0.0 for m in stats["mean_mask"]]
    ax.bar(centres, masks, width, color="tab:purple", label="mean mask")
    ax.plot(centres, [lam if lam is not None else float("nan") for lam in stats["mean_lambda"]], "k.",
            label="mean lambda")
    for x, m, n in zip(centres, masks, stats["count"]):
        ax.text(x, m + 0.02, str(n), ha="center", fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.15)
    ax.set_xlabel("lambda bin (unlearner's mixes)", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left")


def write_png(path: Path, rows: dict[str, dict], metrics, preview=None, title: str = "", mask_stats=None) -> None:
    """Left: each metric of every method beside retrain and, below it when ``mask_stats``
    is given (``MixUnlearn.mask_stats``), the MixBlock's mean mask in each bin of lambda
    against lambda itself. Right (when ``preview`` is ``(x_f, x_r, mask, x_mix, lam)``
    from :meth:`MixUnlearn.preview`): mixup samples with their masks, one row per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_prev = 0 if preview is None else min(6, preview[0].shape[0])
    fig = plt.figure(figsize=(12 if n_prev else 8, max(4.5, 1.3 * n_prev)))
    grid = fig.add_gridspec(max(n_prev, 1), 5 if n_prev else 1, width_ratios=[6, 1, 1, 1, 1] if n_prev else [1])
    if mask_stats:
        left = grid[:, 0].subgridspec(2, 1, height_ratios=[3, 1.3], hspace=0.45)
        ax = fig.add_subplot(left[0])
        _plot_mask_stats(fig.add_subplot(left[1]), mask_stats)
    else:
        ax = fig.add_subplot(grid[:, 0])
    names = list(rows)
    width = 0.8 / len(names)
    xs = np.arange(len(metrics))
    for i, name in enumerate(names):
        vals = [rows[name][m] for m in metrics]
        errs = [rows[name][f"{m}_std"] for m in metrics] if f"{metrics[0]}_std" in rows[name] else None
        ax.bar(xs + i * width - 0.4 + width / 2, vals, width, yerr=errs, capsize=2,
               label=f"{name} (gap {rows[name]['avg_gap']:.1f})", edgecolor="black" if name == "retrain" else None)
    ax.set_xticks(xs)
    ax.set_xticklabels(metrics, fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=9)
    if n_prev:
        x_f, x_r, mask, x_mix, lam = (t.numpy() for t in preview)
        for r in range(n_prev):
            if r == 0:
                heads = ("x_f", "x_r", f"mask (lam={lam[r]:.2f})", "x_mix")
            else:
                heads = (None,) * 3 + (f"lam={lam[r]:.2f}",)
            _show(fig.add_subplot(grid[r, 1]), x_f[r], heads[0])
            _show(fig.add_subplot(grid[r, 2]), x_r[r], heads[1])
            _show(fig.add_subplot(grid[r, 3]), mask[r], heads[2] if r == 0 else None, cmap="viridis", vmin=0, vmax=1)
            _show(fig.add_subplot(grid[r, 4]), x_mix[r], heads[3] if r == 0 else None)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
