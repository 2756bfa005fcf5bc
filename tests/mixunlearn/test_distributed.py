"""Data-parallel unlearning (torch.distributed, gloo on the CPU): two processes at a
global batch B give the model one process gives at B, with batch norm too: its
statistics are the whole part's, not each rank's."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from mixunlearn.bn_net import bn_model

from fastmix import MixUnlearn
from fastmix.harness.models import build_model


def make_model(kind="cnn"):
    if kind == "bn":
        return bn_model()
    return build_model("digits-cnn", 10, 1, seed=0)


# B = 7 does not split evenly over 2 ranks, and 20 forget samples leave a short last
# batch: both exercise the row padding of fastmix.mixunlearn.distributed.RowShard.
CASES = {
    "mixblock": dict(batch_size=7),
    "agnostic-beta": dict(batch_size=7, labels="agnostic", mask="beta"),
    "no-mix": dict(batch_size=8, use_mix=False),
    "bn": dict(batch_size=7, model="bn"),
    "bn-lagged": dict(batch_size=7, model="bn", generator_opponent="lagged", lambda_per="batch"),
}


def data():
    g = torch.Generator().manual_seed(1)
    xf, yf = 1.0 + 2.0 * torch.randn(20, 1, 8, 8, generator=g), torch.randint(0, 10, (20,), generator=g)
    xr, yr = torch.randn(40, 1, 8, 8, generator=g), torch.randint(0, 10, (40,), generator=g)
    return (xf, yf), (xr, yr)


def unlearn(kw):
    kw = dict(kw)
    model = make_model(kw.pop("model", "cnn"))
    mu = MixUnlearn(model, seed=0, epochs=2, lr=1e-3, **kw)
    (xf, yf), (xr, yr) = data()
    if kw.get("labels") == "agnostic":
        out = mu.unlearn(xf, xr)
    else:
        out = mu.unlearn((xf, yf), (xr, yr))
    return out, mu


def one_step_with_sgd(kind="cnn"):
    """One generator and one unlearner step of the trainer with SGD(lr=1): the weights'
    change is minus the gradient itself (Adam, scale-free, would hide a gradient that is
    off by a constant factor). Data-parallel when a process group is initialised."""
    from fastmix.mixunlearn import steps

    model = make_model(kind)
    mu = MixUnlearn(model, seed=0, batch_size=7)
    (xf, yf), (xr, yr) = data()
    run = mu.prepare((xf[:7], yf[:7]), (xr[:7], yr[:7]))
    state = run.state
    state.mixblock_opt = torch.optim.SGD(state.mixblock.parameters(), lr=1.0)
    state.unlearner_opt = torch.optim.SGD(state.unlearner.parameters(), lr=1.0)
    idx = torch.arange(7)
    batch = run.batch(idx, idx)
    steps.generator_step(state, batch)
    steps.unlearner_step(state, batch)
    return {"student": state.unlearner.state_dict(), "mixblock": state.mixblock.state_dict()}


def worker(rank, world_size, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        for kind in ("cnn", "bn"):
            torch.save(one_step_with_sgd(kind), os.path.join(out_dir, f"sgd-{kind}-{rank}.pt"))
        for name, kw in CASES.items():
            model, mu = unlearn(kw)
            torch.save({"state": model.state_dict(), "history": mu.history,
                        "mixblock": mu.mixblock.state_dict() if mu.mixblock is not None else None},
                       os.path.join(out_dir, f"{name}-{rank}.pt"))
    finally:
        dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("kind", ["cnn", "bn"])
def test_two_processes_give_one_process_gradients(two_ranks, kind):
    """With SGD(lr=1) one step moves each weight by minus its gradient: the data-parallel
    gradients are the one-process gradients, not N times or 1/N of them; with batch norm,
    the running statistics are the one process's too (the statistics span both ranks'
    rows, and rank 1's padding row counts nowhere)."""
    one = one_step_with_sgd(kind)
    fresh = make_model(kind).state_dict()
    for r in (0, 1):
        got = torch.load(two_ranks / f"sgd-{kind}-{r}.pt")
        for part in ("student", "mixblock"):
            for k, v in one[part].items():
                torch.testing.assert_close(got[part][k], v, rtol=1e-4, atol=1e-6, msg=f"rank {r}: {part} {k}")
    assert any(not torch.equal(one["student"][k], fresh[k]) for k in fresh)


@pytest.mark.parametrize("name", list(CASES))
def test_two_processes_equal_one_at_the_same_global_batch(two_ranks, name, torch_threads):
    with torch_threads(1):
        single, mu = unlearn(CASES[name])
    ranks = [torch.load(two_ranks / f"{name}-{r}.pt") for r in (0, 1)]
    for k, v in single.state_dict().items():
        assert torch.equal(ranks[0]["state"][k], ranks[1]["state"][k])  # DDP keeps the ranks identical
        torch.testing.assert_close(ranks[0]["state"][k], v, rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")
    assert any(not torch.equal(a, b) for a, b in zip(single.state_dict().values(), mu.model.state_dict().values()))
    for part in ("unlearner", "generator"):
        torch.testing.assert_close(torch.tensor(ranks[0]["history"][part]), torch.tensor(mu.history[part]),
                                   rtol=1e-4, atol=1e-4)
    if mu.mixblock is not None:
        # Parameters whose gradient is zero but for rounding, which Adam scales up to steps of
        # gen_lr: v's bias shifts both attention outputs alike, which the 2-way softmax cancels;
        # k's bias and k's weight on the lambda channel shift every key of a sample alike, which
        # the attention's softmax over the keys cancels.
        noise = dict(rtol=0, atol=2 * 2 * mu.config.gen_lr)
        got = dict(ranks[1]["mixblock"])
        want = dict(mu.mixblock.state_dict())
        for d in (got, want):
            d["k.weight"], d["k.weight.lambda"] = d["k.weight"][:, :-1], d["k.weight"][:, -1:]
        for k, v in want.items():
            tol = noise if k in ("v.bias", "k.bias", "k.weight.lambda") else dict(rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got[k], v, msg=f"{name}: mixblock {k}", **tol)


def test_torchrun_cli_writes_one_result_equal_to_one_process(tmp_path):
    """`torchrun --nproc_per_node=2 -m fastmix unlearn` on the CPU (gloo): rank 0 trains
    the models, both ranks unlearn, rank 0 alone evaluates and writes results.json."""
    import json
    import subprocess
    import sys

    from fastmix.cli import main

    args = ["unlearn", "--train-epochs", "2", "--unlearn-epochs", "2", "--method", "mixunlearn", "--no-png",
            "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
         "-m", "fastmix", *args, "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("mixunlearn") == 1  # one table, from rank 0
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    for metric in ("Train_r", "Train_f", "Test_r", "Test_f", "MIA_efficacy", "avg_gap"):
        assert abs(ddp["mixunlearn"][metric] - one["mixunlearn"][metric]) <= 0.5, metric
    timing = ("seconds", "RTE")  # RTE is retrain's seconds over the row's
    assert {k: v for k, v in ddp["original"].items() if k not in timing} == \
        {k: v for k, v in one["original"].items() if k not in timing}
