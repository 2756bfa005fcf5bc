"""The trainer's whole loop: ``MixUnlearn.unlearn`` with the fast step (the
teacher cache, device-side sampling, fused ops) against ``step="paper"`` (the
eager paper-style step: f_D recomputed every batch, host-side sampling, plain-torch
losses through autograd), on the same data and model.

* ``unlearning-epoch``: one class-level epoch on Fashion-MNIST (D_f = class 0, 6000
  images; D_r the other 54000) with SPEC 8's CNN, B = 32, the teacher cache's build
  included. Needs the data set's IDX files (Debian's dataset-fashion-mnist, or
  FASTMIX_FASHION_MNIST=DIR); the smoke run uses random images of the same shape.
* ``trainer-step``: whole 2-epoch calls, and in ``extra_info.step_s`` the loop's time
  per iteration (set-up excluded) at B = 32, the CNN on 28x28 and ResNet-18 on 32x32
  images (ResNet-18 on a GPU only).
* ``models-only``: the models' own passes of those iterations and nothing else.

The model is freshly initialised, and each step runs with its engine defaults
(channels_last for the fast step, plain NCHW for the paper step). A trained model's
steps are slower on a CPU, its weights holding subnormal floats, which the fast step
flushes (bench/trainer_epoch.py --weights times that).
``impl`` is "eager" for the paper step, "fastmix-<backend>" for the fast step and,
on a GPU, "fastmix-cuda-graphs" for the fast step captured in CUDA graphs, so
bench/summarize.py reports their speed-ups over the paper step.
"""
import os

import pytest
import torch
from bench_common import DEVICE, ON_GPU, Settings, environment, sync

from fastmix import MixUnlearn
from fastmix.backends import resolve_backend
from fastmix.harness.models import MnistCNN, ResNet18

B = 32
IMPLS = ("eager", "fastmix", "fastmix-graphs")
OPTIONS = dict(lr=5e-5, batch_size=B, tau_gen=1.0, tau_mix=10.0, tau_real=10.0, omega=10.0)


def fashion_mnist_class0():
    from fastmix.harness.data import DataError, load_dataset

    try:
        ds = load_dataset("fashion-mnist", os.environ.get("FASTMIX_FASHION_MNIST"))
    except DataError as e:
        pytest.skip(f"Fashion-MNIST is not here ({e})")
    forget = ds.y_train == 0
    return (ds.x_train[forget], ds.y_train[forget]), (ds.x_train[~forget], ds.y_train[~forget])


def random_images(n_f, n_r, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(n_f, *shape, generator=g), torch.randint(0, 10, (n_f,), generator=g)),
            (torch.randn(n_r, *shape, generator=g), torch.randint(0, 10, (n_r,), generator=g)))


def run_unlearn(benchmark, impl, net, forget, retain, rounds, epochs=1, **info):
    if impl == "fastmix-graphs" and not ON_GPU:
        pytest.skip("CUDA graphs need a GPU")
    step = "paper" if impl == "eager" else "fast"
    engine = dict(cuda_graphs=True) if impl == "fastmix-graphs" else {}
    net = net.to(DEVICE)
    forget = tuple(t.to(DEVICE) for t in forget)
    retain = tuple(t.to(DEVICE) for t in retain)
    last = {}

    def once():
        mu = MixUnlearn(net, seed=0, device=DEVICE, step=step, epochs=epochs, **engine, **OPTIONS)
        mu.unlearn(forget, retain)
        sync()
        last["mu"] = mu

    benchmark.extra_info.update(environment())
    backend = resolve_backend(None, torch.device(DEVICE))  # the fast step's default: cpu (C++) here where built
    name = {"eager": "eager", "fastmix": f"fastmix-{backend}", "fastmix-graphs": f"fastmix-{backend}-graphs"}
    benchmark.extra_info.update(impl=name[impl],
                                step=step, batch=B, **info)
    benchmark.pedantic(once, rounds=1 if Settings.smoke else rounds, iterations=1)
    mu = last["mu"]
    benchmark.extra_info.update(setup_s=mu.timings["setup_s"], loop_s=mu.timings["loop_s"], steps=mu.timings["steps"],
                                step_s=mu.timings["loop_s"] / mu.timings["steps"], cache=mu.cache_info)
    return mu


@pytest.mark.parametrize("impl", IMPLS)
def test_unlearning_epoch(benchmark, impl):
    if Settings.smoke:
        forget, retain = random_images(64, 256, (1, 28, 28))
    else:
        forget, retain = fashion_mnist_class0()
    torch.manual_seed(0)
    benchmark.group = "unlearning-epoch fashion-mnist class 0, mnist-cnn, B=32"
    run_unlearn(benchmark, impl, MnistCNN(), forget, retain, rounds=2, op="unlearning-epoch",
                shape=[B, 1, 28, 28], model="mnist-cnn", dtype="fp32", layout="engine default", mask="mixblock",
                n_forget=int(forget[0].shape[0]), n_retain=int(retain[0].shape[0]))


@pytest.mark.parametrize("model_name", ["mnist-cnn", "resnet18"])
@pytest.mark.parametrize("impl", IMPLS)
def test_trainer_step(benchmark, impl, model_name):
    if model_name == "resnet18" and not ON_GPU:
        pytest.skip("ResNet-18 steps take seconds each on this CPU; timed on a GPU only")
    cls, shape = (MnistCNN, (1, 28, 28)) if model_name == "mnist-cnn" else (ResNet18, (3, 32, 32))
    n_steps = 4 if Settings.smoke else (200 if ON_GPU else 40)
    # 2 epochs over a D_r twice the batches' draws: the cache fills about as in a long run
    forget, retain = random_images(B * n_steps, 2 * B * n_steps, shape)
    torch.manual_seed(0)
    benchmark.group = (f"trainer-step {model_name} B={B} fp32: whole calls of 2 epochs, set-up included "
                       "(per iteration of the loop alone: extra_info.step_s)")
    run_unlearn(benchmark, impl, cls(), forget, retain, rounds=3, epochs=2, op="trainer-step", shape=[B, *shape],
                model=model_name, dtype="fp32", layout="engine default", mask="mixblock")


@pytest.mark.parametrize("model_name", ["mnist-cnn", "resnet18"])
def test_models_only(benchmark, model_name):
    """The floor under ``trainer-step``: the models' own passes of ``gen_interval`` = 4
    iterations and nothing else. Each iteration the unlearner's forward and backward
    over 3B images (mixes, retain, forget); once in the 4 the generator's pass too (the
    MixBlock's mask, the frozen unlearner's forward, the backward to the MixBlock), in
    channels_last as the fast step runs them. One
    call = 4 iterations; ``extra_info.iteration_s`` is a fourth of the median, so
    ``1 - iteration_s / trainer-step's step_s`` is the share of a step spent outside
    the models' forward and backward."""
    from fastmix.mixunlearn.mixblock import MixBlock

    if model_name == "resnet18" and not ON_GPU:
        pytest.skip("ResNet-18 steps take seconds each on this CPU; timed on a GPU only")
    cls, shape, feat = ((MnistCNN, (1, 28, 28), (32, 7, 7)) if model_name == "mnist-cnn"
                        else (ResNet18, (3, 32, 32), (256, 8, 8)))
    torch.manual_seed(0)
    cl = torch.channels_last  # the fast step's default layout for these models
    model = cls().to(DEVICE, memory_format=cl).train()
    mixblock = MixBlock(feat[0]).to(DEVICE)
    g_params = list(mixblock.parameters())
    x3 = torch.randn(3 * B, *shape, device=DEVICE).contiguous(memory_format=cl)
    xf, xr = x3[:B], x3[B : 2 * B]
    hf, hr = torch.randn(B, *feat, device=DEVICE), torch.randn(B, *feat, device=DEVICE)
    lam = torch.rand(B, device=DEVICE)

    def four_iterations():
        for t in range(4):
            if t == 0:
                mask = mixblock.mask(hf, hr, lam, shape[1:])
                model.eval()
                out = model(mask * xf + (1 - mask) * xr)
                model.train()
                torch.autograd.grad(out.sum(), g_params)
            model.zero_grad(set_to_none=True)
            model(x3).sum().backward()
        sync()

    benchmark.group = f"models-only {model_name} B={B} fp32"
    benchmark.extra_info.update(environment())
    benchmark.extra_info.update(impl="models-only", op="models-only", model=model_name, shape=[B, *shape],
                                layout="channels_last")
    four_iterations()
    benchmark.pedantic(four_iterations, rounds=1 if Settings.smoke else 10, iterations=1)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if stats is not None:
        benchmark.extra_info["iteration_s"] = stats.median / 4
