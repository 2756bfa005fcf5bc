"""MixUnlearn (ICLR 2025) through :class:`fastmix.MixUnlearn`."""
from __future__ import annotations

from fastmix.mixunlearn.config import SEARCH_SPACE, SETTING_NAMES, MixUnlearnConfig
from fastmix.mixunlearn.method import MixUnlearn

from . import MethodContext, MethodResult, register


@register("mixunlearn", settings=MixUnlearnConfig, search_space=SEARCH_SPACE)
def run_mixunlearn(ctx: MethodContext) -> MethodResult:
    opts = ctx.options
    mu = MixUnlearn(
        ctx.original,
        opts.get("feature_layer"),
        seed=ctx.seed,
        quiet=ctx.quiet,
        labels=ctx.labels,
        **{k: v for k, v in opts.items() if k in SETTING_NAMES and k != "labels"},
    )
    if ctx.labels == "aware":
        model = mu.unlearn((ctx.x_forget, ctx.y_forget), (ctx.x_retain, ctx.y_retain))
    else:
        model = mu.unlearn(ctx.x_forget, ctx.x_retain)
    return MethodResult(model, mu.seconds, {"mixunlearn": mu})
