"""The core of Auto-PGD (Croce & Hein, ICML 2020), shared by ``apgd``, ``apgd-t`` and AutoAttack.

APGD is projected gradient ascent with momentum whose step size needs no tuning: it starts at
``η = 2ε`` and halves at checkpoints where progress stalled, restarting from the best point
found. The functions here work on any subset of a batch, so the AutoAttack composite can call
them directly on the examples the earlier attacks left robust:

- :func:`apgd_outcome`: untargeted (CE or DLR loss) or targeted (targeted DLR
  loss, one target class per example) APGD, with restarts;
- :func:`apgdt_outcome`: APGD-T, targeted APGD against each of the
  ``n_target_classes`` highest-scoring other classes in turn;
- :func:`checkpoints`: the step-size schedule's checkpoints;
- :func:`dlr_loss`, :func:`targeted_dlr_loss`: the scale-invariant losses.

Every decision "this example is fooled" is the model's own verdict in full precision: in fp32
it comes from the logits of the gradient pass itself (no extra pass); when gradient passes run
in bfloat16 (:mod:`robench.precision`) those logits only nominate the examples near or past the
decision boundary, and a full-precision forward pass over them decides.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from itertools import pairwise
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from robench import chunks, precision
from robench.attacks._common import Ball
from robench.attacks.pgd import _confirmed, _near_boundary
from robench.threat import ThreatModel

#: the loss APGD maximises: cross-entropy, DLR, or targeted DLR (needs a target per example)
APGDLoss = Literal["ce", "dlr", "dlr-targeted"]

#: momentum weight α of the update (the paper's value); the first step is a plain one (α = 1)
MOMENTUM = 0.75

#: guards divisions (the DLR denominators, the L2 normalisations) against zero
_TINY = 1e-12


class Outcome(NamedTuple):
    """What an APGD run returns for its batch."""

    #: the adversarial point of each fooled example (the first one found), else the point of
    #: highest loss found (the clean input for an example the model misclassifies already)
    x_adv: torch.Tensor
    #: examples the model, in full precision, misclassifies at ``x_adv``
    fooled: torch.Tensor


# --- the schedule -----------------------------------------------------------------------------


def checkpoints(steps: int) -> list[int]:
    """The iterations ``0 = w_0 < w_1 < … < steps`` at which APGD may halve its step size.

    ``w_j = ⌈p_j·steps⌉`` with ``p_0 = 0``, ``p_1 = 0.22`` and ``p_{j+1} = p_j + max(p_j −
    p_{j−1} − 0.03, 0.06)``, computed exactly (in fractions, so that e.g. ``0.41·100`` is 41,
    not 42). Checkpoints at or after ``steps`` are dropped (nothing follows them) and, for
    small ``steps``, repeated ones collapse. For ``steps = 100``: 0, 22, 41, 57, 70, 80, 87, 93,
    99.
    """
    out = [0]
    p_prev, p = Fraction(0), Fraction(22, 100)
    while (w := math.ceil(p * steps)) < steps:
        if w > out[-1]:
            out.append(w)
        p_prev, p = p, p + max(p - p_prev - Fraction(3, 100), Fraction(6, 100))
    return out


# --- losses -----------------------------------------------------------------------------------


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio, per example: ``−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 +
    1e-12)`` with ``z_π`` the logits in decreasing order (needs ≥ 3 classes).

    Positive exactly when the example is misclassified; invariant to shifting and (positively)
    rescaling the logits.
    """
    with torch.no_grad():  # which logits enter; the gradient flows through one gather
        top = logits.topk(3, dim=1).indices
        other = torch.where(top[:, 0] == y, top[:, 1], top[:, 0])  # largest but z_y
    z = logits.gather(1, torch.stack((y, other, top[:, 0], top[:, 2]), dim=1))
    return (z[:, 1] - z[:, 0]) / (z[:, 2] - z[:, 3] + _TINY)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR, per example: ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2 + 1e-12)``, with
    ``t = target`` (needs ≥ 4 classes). Maximising it pushes the target's logit above the true
    class's.
    """
    with torch.no_grad():
        top = logits.topk(4, dim=1).indices
    z = logits.gather(1, torch.stack((y, target, top[:, 0], top[:, 2], top[:, 3]), dim=1))
    return (z[:, 1] - z[:, 0]) / (z[:, 2] - 0.5 * (z[:, 3] + z[:, 4]) + _TINY)


def apgd_loss(
    logits: torch.Tensor, y: torch.Tensor, loss: APGDLoss, target: torch.Tensor | None = None
) -> torch.Tensor:
    """The loss APGD maximises, one value per example (computed in fp32 at least)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if loss == "dlr":
        return dlr_loss(logits, y)
    if loss == "dlr-targeted":
        if target is None:
            raise ValueError("the targeted DLR loss needs a target class per example")
        return targeted_dlr_loss(logits, y, target)
    raise ValueError(f"unknown APGD loss {loss!r} (expected 'ce', 'dlr' or 'dlr-targeted')")


#: The DLR losses read the logits ``(y, largest other, π1, π2, π3)`` (DLR) or ``(y, t, π1, π2, π3,
#: π4)`` (targeted DLR), gathered in this order (π2 included, with weight 0: taking all top-k
#: columns saves an indexing). Rows: each column's weight in the numerator and, negated, in
#: the denominator; so ``(w_num − (num/den)·w_den) / den`` is the gradient on those columns.
_DLR_WEIGHTS = {
    "dlr": ((-1.0, 1.0, 0.0, 0.0, 0.0), (0.0, 0.0, -1.0, 0.0, 1.0)),
    "dlr-targeted": ((-1.0, 1.0, 0.0, 0.0, 0.0, 0.0), (0.0, 0.0, -1.0, 0.0, 0.5, 0.5)),
}


@functools.lru_cache(maxsize=64)
def _dlr_weights(loss: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(_DLR_WEIGHTS[loss], dtype=dtype, device=device)


def loss_and_logit_grad(
    logits: torch.Tensor, y: torch.Tensor, loss: APGDLoss, target: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`apgd_loss` and its gradient with respect to the logits, in closed form.

    Computed without autograd, in a dozen tensor operations (autograd's graph of the loss would
    be most of a small model's backward pass); the gradient pass then backpropagates it
    through the model alone. Equal to autograd's gradient of :func:`apgd_loss` (topk ties
    resolved the same way). Both in fp32 at least.
    """
    with torch.no_grad():
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        y_col = y[:, None]
        if loss == "ce":  # −log p_y; gradient p − onehot(y)
            log_p = logits.log_softmax(dim=1)
            log_p_y = log_p.gather(1, y_col)
            grad = log_p.exp_().scatter_(1, y_col, log_p_y.expm1())
            return log_p_y.squeeze(1).neg_(), grad
        if loss == "dlr":
            top = logits.topk(3, dim=1).indices
            other = torch.where(top[:, :1] == y_col, top[:, 1:2], top[:, :1])
            cols = torch.cat((y_col, other, top), dim=1)
        elif loss == "dlr-targeted":
            if target is None:
                raise ValueError("the targeted DLR loss needs a target class per example")
            cols = torch.cat((y_col, target[:, None], logits.topk(4, dim=1).indices), dim=1)
        else:
            raise ValueError(f"unknown APGD loss {loss!r} (expected 'ce', 'dlr' or 'dlr-targeted')")
        z = logits.gather(1, cols)
        num = z[:, 1] - z[:, 0]
        low = z[:, 4] if loss == "dlr" else 0.5 * (z[:, 4] + z[:, 5])  # z_π3 or its mean with z_π4
        den = (z[:, 2] - low).add_(_TINY)[:, None]
        ratio = num[:, None] / den
        w = _dlr_weights(loss, logits.dtype, logits.device)
        coef = torch.addcmul(w[0], ratio, w[1]).div_(den)  # (∂num − (num/den)·∂den) / den
        return ratio.squeeze(1), torch.zeros_like(logits).scatter_add_(1, cols, coef)


# --- building blocks --------------------------------------------------------------------------


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example vector shaped to broadcast against a batch like ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).norm(p=2, dim=1)


def _start(ball: Ball) -> torch.Tensor:
    """APGD's random first iterate: a random point on the boundary of the ε-ball, projected onto
    the bounds (as the reference implementation does).

    L∞: ``x + ε·t/‖t‖∞`` with ``t`` uniform in ``[−1, 1]^d`` (so one coordinate moves by ε and
    the others uniformly less); L2: ``x + ε·t/‖t‖₂`` with ``t`` Gaussian (uniform on the
    sphere). Global torch RNG.
    """
    x = ball.x
    if ball.norm == "linf":
        t = torch.rand_like(x).mul_(2).sub_(1)
        scale = t.reshape(len(t), -1).abs().amax(dim=1)
    else:
        t = torch.randn_like(x)
        scale = _l2(t)
    t.mul_(_rows(ball.eps / scale.clamp_(min=_TINY), t)).add_(x)
    return ball.project_(t)


def _pass(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None,
    loss: APGDLoss,
    *,
    grad: bool,
    eot_iter: int = 1,
) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One forward pass at ``x`` and its loss: ``(∇ₓ loss or None, logits, loss)``, detached.

    With ``grad``, a gradient pass in the attack's precision (:func:`robench.precision.
    gradient_autocast`), or ``eot_iter`` of them whose gradients and losses are averaged (for
    a randomised model; the logits are the last draw's); without, one forward pass in full
    precision (APGD's last iterate needs only its loss and the model's verdict). On a CPU, in
    chunks (:mod:`robench.chunks`)."""
    device_type = x.device.type
    if not grad:
        with torch.no_grad(), precision.full_precision(device_type):
            logits = chunks.forward(model, x)
        return None, logits, loss_and_logit_grad(logits, y, loss, target)[0]

    def one(rows: slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_rows = x[rows].detach().requires_grad_(True)
        y_rows, t_rows = y[rows], None if target is None else target[rows]
        total = values = None
        for _ in range(eot_iter):
            with precision.gradient_autocast(device_type):
                logits = model(x_rows)
            value, dlogits = loss_and_logit_grad(logits, y_rows, loss, t_rows)
            # ∑ logits·dlogits has gradient dlogits at the logits (a scalar output: grad_outputs
            # would make autograd import torch.fx's symbolic shapes, seconds on first use)
            (g,) = torch.autograd.grad((logits * dlogits.to(logits.dtype)).sum(), x_rows)
            total, values = (g, value) if total is None else (total.add_(g), values.add_(value))
        if eot_iter > 1:
            total, values = total.div_(eot_iter), values.div_(eot_iter)
        return total, logits.detach(), values

    total, logits, values = chunks.gradient_passes(model, x, one)
    return total, logits, values


def _correct(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, confirm: bool
) -> torch.Tensor:
    """Examples the model classifies correctly at ``x``: from ``logits`` when they are in full
    precision; with ``confirm`` (reduced-precision logits) a full-precision pass decides for
    those the logits put near or past the decision boundary."""
    if not confirm:
        return logits.argmax(dim=1) == y
    near = _near_boundary(logits, y)
    return ~_confirmed(model, x, y, near) if bool(near.any()) else ~near


def _clean_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's logits at the clean inputs, in its own precision."""
    with torch.no_grad(), precision.full_precision(x.device.type):
        return chunks.forward(model, x)


# --- one APGD run -----------------------------------------------------------------------------


class _Run(NamedTuple):
    x_adv: torch.Tensor
    fooled: torch.Tensor
    #: the highest loss reached (meaningful for the examples not fooled)
    loss: torch.Tensor


def _single_run(
    model: nn.Module,
    ball: Ball,
    y: torch.Tensor,
    target: torch.Tensor | None,
    *,
    loss: APGDLoss,
    steps: int,
    rho: float,
    early_stop: bool,
    eot_iter: int = 1,
) -> _Run:
    """One APGD run of ``steps`` iterations from a random start, on every example of ``ball``.

    The state is per example (step size, loss counters, best point and its gradient, held in
    the dict ``s`` so that dropping fooled examples is one indexing per tensor); the
    checkpoints are shared. Costs ``steps`` gradient passes and one forward pass per example,
    fewer with ``early_stop``: an example leaves the working batch at the first point that
    fools the model. One device sync per step (the size of the working batch).
    """
    n = len(y)
    device = ball.x.device
    confirm = precision.reduced(device.type)
    since = {b: b - a for a, b in pairwise(checkpoints(steps))}  # checkpoint -> its span
    rows = (-1,) + (1,) * (ball.x.dim() - 1)  # a per-example vector against the batch

    x = _start(ball)
    out = x.clone()  # each example's result: its first adversarial point, else its best point
    fooled = torch.zeros(n, dtype=torch.bool, device=device)
    grad, logits, value = _pass(model, x, y, target, loss, grad=True, eot_iter=eot_iter)
    out_loss = torch.full_like(value, -math.inf)
    s: dict[str, torch.Tensor] = {
        "index": torch.arange(n, device=device),  # rows of the working batch in `out`
        "y": y,
        "x": x,
        "x_prev": x,
        "grad": grad,
        "x_best": x,
        "grad_best": grad,
        "loss_best": value,
        "loss_prev": value,
        "eta": torch.full((n, *rows[1:]), 2.0 * ball.eps, dtype=x.dtype, device=device),
        "n_up": torch.zeros_like(value),  # loss increases since the last checkpoint
        "best_at_mark": value,  # the best loss at the last checkpoint
        "halved": torch.ones(n, dtype=torch.bool, device=device),  # η halved at the last one
    }
    if target is not None:
        s["target"] = target

    t = 0
    while True:  # x_t (= s["x"]), its logits, loss and gradient are known
        # record the examples fooled at x_t (their first such point); early stop drops them
        correct = _correct(model, s["x"], s["y"], logits, confirm and t < steps)
        if early_stop:
            keep = correct.nonzero().flatten()  # the step's one device sync
            if len(keep) < n:
                hit = ~correct
                at = s["index"][hit]
                out[at] = s["x"][hit]
                fooled[at] = True
                if not len(keep):
                    return _Run(out, fooled, out_loss)
                s = {k: v[keep] for k, v in s.items()}
                ball, n = ball.select(keep), len(keep)
        else:  # every example stays; a newly fooled one records x_t
            index = s["index"]
            new = ~correct & ~fooled[index]
            out[index] = torch.where(new.view(rows), s["x"], out[index])
            fooled[index] |= new
        if t == steps:
            break

        with torch.no_grad():
            if t in since:  # a checkpoint: halve η and go back to the best point where (1) the
                # loss went up in fewer than ρ of the steps since the last checkpoint, or (2) η
                # was not halved at the last checkpoint and the best loss has not improved
                halve = (s["n_up"] < rho * since[t]) | (
                    ~s["halved"] & (s["loss_best"] <= s["best_at_mark"])
                )
                h = halve.view(rows)
                s["eta"] = torch.where(h, s["eta"] / 2, s["eta"])
                s["x"] = torch.where(h, s["x_best"], s["x"])
                s["grad"] = torch.where(h, s["grad_best"], s["grad"])
                s["halved"], s["best_at_mark"] = halve, s["loss_best"]
                s["n_up"] = torch.zeros_like(s["n_up"])

            # z = P(x + η·step(∇)); x' = P(x + α(z − x) + (1 − α)(x − x_prev)); α = 1 at first
            t += 1
            x, grad = s["x"], s["grad"]
            if ball.norm == "linf":
                direction = grad.sign()
            else:
                direction = grad / _l2(grad).clamp_(min=_TINY).view(rows)
            z = ball.project_(torch.addcmul(x, s["eta"], direction))
            if t > 1:  # α·z + (1 − α)·(2x − x_prev)
                z = ball.project_(z.lerp_(torch.lerp(s["x_prev"], x, 2.0), 1 - MOMENTUM))
            s["x_prev"], s["x"] = x, z

        grad, logits, value = _pass(
            model, z, s["y"], s.get("target"), loss, grad=t < steps, eot_iter=eot_iter
        )

        with torch.no_grad():
            s["n_up"] += value > s["loss_prev"]
            s["loss_prev"] = value
            better = value > s["loss_best"]
            b = better.view(rows)
            s["x_best"] = torch.where(b, z, s["x_best"])
            if grad is not None:
                s["grad"] = grad
                s["grad_best"] = torch.where(b, grad, s["grad_best"])
            s["loss_best"] = torch.where(better, value, s["loss_best"])

    index = s["index"]
    out[index] = torch.where(fooled[index].view(rows), out[index], s["x_best"])
    out_loss[index] = s["loss_best"]
    return _Run(out, fooled, out_loss)


def _with_restarts(
    model: nn.Module,
    ball: Ball,
    y: torch.Tensor,
    target: torch.Tensor | None,
    *,
    loss: APGDLoss,
    steps: int,
    restarts: int,
    rho: float,
    early_stop: bool,
    eot_iter: int = 1,
) -> _Run:
    """``restarts`` APGD runs, each (after the first) on the examples not fooled yet; an
    example keeps its first adversarial point, else its highest-loss point over the runs."""
    kw = {"loss": loss, "steps": steps, "rho": rho, "early_stop": early_stop, "eot_iter": eot_iter}
    best = _single_run(model, ball, y, target, **kw)
    for _ in range(restarts - 1):
        todo = (~best.fooled).nonzero().flatten()
        if not len(todo):
            break
        run = _single_run(
            model, ball.select(todo), y[todo], None if target is None else target[todo], **kw
        )
        _merge(best, todo, run)
    return best


def _merge(best: _Run, todo: torch.Tensor, run: _Run) -> None:
    """Fold ``run`` (on the rows ``todo`` of ``best``, none of them fooled) into ``best``: a
    fooled example takes its adversarial point, another its point of higher loss."""
    take = run.fooled | (run.loss > best.loss[todo])
    best.x_adv[todo] = torch.where(_rows(take, run.x_adv), run.x_adv, best.x_adv[todo])
    best.loss[todo] = torch.where(take, run.loss, best.loss[todo])
    best.fooled[todo] = run.fooled


def _classes_needed(loss: APGDLoss, n_classes: int, who: str) -> None:
    need = {"ce": 2, "dlr": 3, "dlr-targeted": 4}[loss]
    if n_classes < need:
        raise ValueError(
            f"{who}: the {'targeted ' if loss == 'dlr-targeted' else ''}"
            f"{'DLR' if loss != 'ce' else 'CE'} loss needs at least {need} classes, "
            f"the model has {n_classes}"
        )


# --- entry points -----------------------------------------------------------------------------


def apgd_outcome(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    loss: APGDLoss = "ce",
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    targets: torch.Tensor | None = None,
    early_stop: bool = True,
    eot_iter: int = 1,
) -> Outcome:
    """APGD on the batch ``(x, y)`` within ``threat``: :class:`Outcome` ``(x_adv, fooled)``.

    ``model`` must be in eval mode with frozen parameters (inside :func:`robench.attack.craft`,
    or :func:`robench.attack.attack_mode`, with gradients enabled). One full-precision forward
    pass over the clean batch first: examples the model already misclassifies are returned
    as they are (fooled) and not attacked. Then ``restarts`` runs of ``steps`` iterations (each
    restart only on the examples not fooled yet; see :class:`robench.attacks.apgd.APGD` for the
    algorithm). ``loss="dlr-targeted"`` needs ``targets``, one class per example other than
    its label. With ``eot_iter > 1`` each step averages the gradient and the loss over that
    many gradient passes (expectation over transformation, for randomised models; the reference
    implementation's ``eot_iter``). Uses the global torch RNG; gradient passes run in the
    evaluation's attack precision, fooled verdicts are full precision.
    """
    if (loss == "dlr-targeted") != (targets is not None):
        raise ValueError("give targets exactly when the loss is 'dlr-targeted'")
    clean = _clean_logits(model, x)
    _classes_needed(loss, clean.shape[1], "apgd")
    fooled = clean.argmax(dim=1) != y
    x_adv = x.detach().clone()
    todo = (~fooled).nonzero().flatten()
    if len(todo):
        run = _with_restarts(
            model,
            Ball(x[todo], threat),
            y[todo],
            None if targets is None else targets[todo],
            loss=loss,
            steps=steps,
            restarts=restarts,
            rho=rho,
            early_stop=early_stop,
            eot_iter=eot_iter,
        )
        x_adv[todo] = run.x_adv
        fooled[todo] = run.fooled
    return Outcome(x_adv, fooled)


def apgdt_outcome(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    *,
    n_target_classes: int = 9,
    steps: int = 100,
    restarts: int = 1,
    rho: float = 0.75,
    early_stop: bool = True,
    eot_iter: int = 1,
) -> Outcome:
    """APGD-T on the batch ``(x, y)``: :class:`Outcome` ``(x_adv, fooled)``.

    One full-precision forward pass over the clean batch ranks the classes; examples already
    misclassified are returned as they are. Then, for the target ranks ``k = 2, …,
    n_target_classes + 1`` in turn, APGD with the targeted DLR loss towards each example's
    ``k``-th highest clean logit (``restarts`` runs of ``steps`` iterations) on the examples
    not fooled yet. An example keeps its first adversarial point, else its point of highest
    targeted DLR loss over all targets; ``eot_iter`` as in :func:`apgd_outcome`. Raises
    ``ValueError`` when ``n_target_classes``
    exceeds the number of classes minus one, or the model has fewer than 4 classes.
    """
    clean = _clean_logits(model, x)
    n_classes = clean.shape[1]
    if n_target_classes > n_classes - 1:
        raise ValueError(
            f"apgd-t: n_target_classes = {n_target_classes} exceeds the number of classes "
            f"minus one ({n_classes - 1})"
        )
    _classes_needed("dlr-targeted", n_classes, "apgd-t")
    ranked = clean.topk(n_target_classes + 1, dim=1).indices
    fooled = clean.argmax(dim=1) != y
    best = _Run(
        x.detach().clone(),
        fooled,
        torch.full((len(x),), -math.inf, dtype=torch.float64, device=x.device),
    )
    ball = Ball(x, threat)
    for rank in range(1, n_target_classes + 1):
        todo = (~best.fooled).nonzero().flatten()
        if not len(todo):
            break
        run = _with_restarts(
            model,
            ball.select(todo),
            y[todo],
            ranked[todo, rank],
            loss="dlr-targeted",
            steps=steps,
            restarts=restarts,
            rho=rho,
            early_stop=early_stop,
            eot_iter=eot_iter,
        )
        _merge(best, todo, run._replace(loss=run.loss.double()))
    return Outcome(best.x_adv, best.fooled)
