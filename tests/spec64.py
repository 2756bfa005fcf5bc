"""An independent float64 implementation of SPEC section 4, written from the formulas.

It shares no code with fastmix: one-hot targets are built explicitly and the
gradient comes from autograd, not from the closed form the kernels use.
"""
import torch

EPS = 1e-8


def as_probabilities(target, n_classes):
    if target.dtype == torch.int64:
        return torch.nn.functional.one_hot(target, n_classes).double()
    return target.double()


def distance(p, q):
    """d(p, q) = 1 - <p, q> / max(|p| |q|, eps), row by row."""
    dot = (p * q).sum(dim=1)
    norms = p.norm(dim=1) * q.norm(dim=1)
    return 1 - dot / torch.clamp(norms, min=EPS)


def c_tau(keep_terms, forget_terms, tau, reduction):
    n_keep = keep_terms.shape[0]
    value = keep_terms.sum() - n_keep * torch.log(torch.exp(forget_terms / tau).sum())
    return value / n_keep if reduction == "mean" else value


def contrastive(logits, forget_target, retain_target, lam, tau, perm=None, reduction="sum"):
    z = logits.double()
    B, C = z.shape
    p = torch.softmax(z, dim=1)
    q_f = as_probabilities(forget_target, C)
    q_r = as_probabilities(retain_target, C)
    if perm is not None:
        q_r = q_r[perm]
    lam = torch.as_tensor(lam, dtype=torch.float64).expand(B)
    keep = (1 - lam) * distance(p, q_r)
    forget = lam * distance(p, q_f)
    return c_tau(keep, forget, tau, reduction)


def real(retain_logits, forget_logits, retain_target, forget_target, tau, reduction="sum"):
    C = retain_logits.shape[1]
    p_r = torch.softmax(retain_logits.double(), dim=1)
    p_f = torch.softmax(forget_logits.double(), dim=1)
    keep = distance(p_r, as_probabilities(retain_target, C))
    forget = distance(p_f, as_probabilities(forget_target, C))
    return c_tau(keep, forget, tau, reduction)


def with_grads(fn, *logits, **kwargs):
    """fn's value and its gradients with respect to each logits tensor, in float64."""
    leaves = [z.detach().double().requires_grad_() for z in logits]
    value = fn(*leaves, **kwargs)
    grads = torch.autograd.grad(value, leaves)
    return value.detach(), [g.detach() for g in grads]


def mixup(x_forget, x_retain, weight, perm=None):
    x_r = x_retain.double() if perm is None else x_retain.double()[perm]
    w = weight.double()
    if w.dim() == 1:
        w = w.view(-1, *([1] * (x_forget.dim() - 1)))
    return w * x_forget.double() + (1 - w) * x_r


def sharpen(logits, T):
    p = torch.softmax(logits.double(), dim=-1)
    powered = p ** (1 / T)
    return powered / powered.sum(dim=-1, keepdim=True)
