"""torch.library.opcheck on every op, and torch.compile(fullgraph=True) of a step that uses them."""
import pytest
import torch

import fastmix

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "triton"] + (["cpu"] if fastmix.backends("cpu")["cpu"].usable else [])


def _op(name):
    return getattr(torch.ops.fastmix, name).default


def _loss_inputs(kind, gen):
    B, C, pool = 5, 7, 8
    logits = torch.randn(B, C, generator=gen).to(DEVICE).requires_grad_()
    if kind == "labels":
        q_f = torch.randint(0, C, (B,), generator=gen).to(DEVICE)
        q_r = torch.randint(0, C, (pool,), generator=gen).to(DEVICE)
    else:
        q_f = torch.softmax(torch.randn(B, C, generator=gen), 1).to(DEVICE)
        q_r = torch.softmax(torch.randn(pool, C, generator=gen), 1).to(DEVICE)
    perm = torch.randint(0, pool, (B,), generator=gen).to(DEVICE)
    return logits, q_f, q_r, perm


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_opcheck_losses(backend, kind):
    gen = torch.Generator().manual_seed(1)
    logits, q_f, q_r, perm = _loss_inputs(kind, gen)
    lam = torch.rand(logits.shape[0], generator=gen).to(DEVICE)
    torch.library.opcheck(_op("contrastive_loss"), (logits, q_f, q_r, lam, perm, 0.5, "sum", True, backend))
    torch.library.opcheck(_op("contrastive_loss"), (logits.detach(), q_f, q_r[: q_f.shape[0]], lam[0], None, 0.5,
                                                    "mean", False, backend))
    retain_logits = torch.randn(q_r.shape[0], logits.shape[1], generator=gen).to(DEVICE).requires_grad_()
    torch.library.opcheck(_op("real_loss"), (retain_logits, logits, q_r, q_f, 2.0, "sum", True, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_opcheck_fused_loss(backend, kind):
    gen = torch.Generator().manual_seed(5)
    mix, q_f, q_r, perm = _loss_inputs(kind, gen)
    B, C = mix.shape
    forget = torch.randn(B, C, generator=gen).to(DEVICE).requires_grad_()
    retain = torch.randn(q_r.shape[0], C, generator=gen).to(DEVICE).requires_grad_()
    lam = torch.rand(B, generator=gen).to(DEVICE)
    op = _op("mixunlearn_loss")
    torch.library.opcheck(op, (mix, forget, retain, q_f, q_r, lam, perm, 0.5, 2.0, 1.5, "sum", True, backend))
    torch.library.opcheck(op, (mix, None, None, q_f, q_r[:B], lam[0], None, 0.5, 2.0, 0.0, "mean", True, backend))
    torch.library.opcheck(op, (mix.detach(), forget.detach(), retain.detach(), q_f, q_r, lam, perm, 0.5, 2.0, 1.0,
                               "sum", False, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("weight_shape", [(), (3,), (3, 1, 5, 4)])
def test_opcheck_mixup(backend, weight_shape):
    gen = torch.Generator().manual_seed(2)
    x_f = torch.randn(3, 2, 5, 4, generator=gen).to(DEVICE).requires_grad_()
    x_r = torch.randn(6, 2, 5, 4, generator=gen).to(DEVICE).requires_grad_()
    weight = torch.rand(weight_shape, generator=gen).to(DEVICE).requires_grad_()
    perm = torch.tensor([5, 0, 5], device=DEVICE)
    torch.library.opcheck(_op("mixup"), (x_f, x_r, weight, perm, backend))
    torch.library.opcheck(_op("mixup"), (x_f, x_r[:3], weight, None, backend))
    grad = torch.randn(3, 2, 5, 4, generator=gen).to(DEVICE)
    saved = (x_f.detach(), x_r.detach(), weight.detach(), perm)  # what the backward sees: no double backward
    torch.library.opcheck(_op("mixup_backward"), (grad, *saved, [True, True, True], backend))
    torch.library.opcheck(_op("mixup_backward"), (grad, *saved, [False, False, True], backend))


@pytest.mark.parametrize("backend", BACKENDS)
def test_opcheck_sharpen(backend):
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 9, generator=gen).to(DEVICE).requires_grad_()
    torch.library.opcheck(_op("sharpen"), (logits, 0.3, backend))
    out = torch.softmax(logits.detach() / 0.3, dim=-1)
    torch.library.opcheck(_op("sharpen_backward"), (torch.randn_like(out), out, 0.3, backend))


class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def _step(model, loss_fn, x_f, x_r, y_f, y_r, teacher_logits, lam, perm, mask):
    """The forward of an unlearner step in miniature: mixup, model, MixUnlearnLoss."""
    x_mix = fastmix.mixup(x_f, x_r, mask, perm)
    q_f = loss_fn.targets(teacher_logits)
    loss = loss_fn(model(x_mix), model(x_f), model(x_r), q_f, torch.softmax(model(x_r), 1).detach(), lam, perm)
    return loss + 0.5 * fastmix.contrastive_loss(model(x_f), y_f, y_r, lam, 1.0, perm=perm)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compile_fullgraph_step_on_cpu(compiler):
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(4)
    B = 4
    x_f = torch.randn(B, 1, 6, 6, generator=gen)
    x_r = torch.randn(B, 1, 6, 6, generator=gen)
    y_f = torch.randint(0, 5, (B,), generator=gen)
    y_r = torch.randint(0, 5, (B,), generator=gen)
    teacher = torch.randn(B, 5, generator=gen)
    lam = fastmix.sample_lambda(B, 0.75, generator=gen)
    perm = torch.randperm(B, generator=gen)
    mask = torch.rand(B, 1, 6, 6, generator=gen).requires_grad_()
    loss_fn = fastmix.MixUnlearnLoss(0.1, 10.0, 5.0, 1.0, backend="torch")

    eager_model = _TinyNet()
    compiled_model = _TinyNet()
    compiled_model.load_state_dict(eager_model.state_dict())
    args = (x_f, x_r, y_f, y_r, teacher, lam, perm)

    eager_mask = mask.detach().clone().requires_grad_()
    eager = _step(eager_model, loss_fn, *args, eager_mask)
    eager.backward()
    compiled_step = torch.compile(_step, fullgraph=True, backend=compiler)
    compiled = compiled_step(compiled_model, loss_fn, *args, mask)
    compiled.backward()

    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(mask.grad, eager_mask.grad)
    for p_c, p_e in zip(compiled_model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p_c.grad, p_e.grad)
