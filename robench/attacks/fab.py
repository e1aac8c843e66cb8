"""The fast adaptive boundary attack, FAB and its targeted version FAB-T (Croce & Hein 2020)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robench import chunks, precision
from robench.attack import Attack
from robench.attacks.bases import FABBase

#: Guards divisions by a norm (the distance to a hyperplane with a zero gradient).
_TINY = 1e-12
#: The smallest step norm in the bias ``α = ‖δₖ‖ / (‖δₖ‖ + ‖δ₀‖)`` (as in the paper's code).
_MIN_STEP = 1e-8
#: Untargeted FAB computes the gradients of the class differences in chunks of classes of at
#: most this many gradient elements (class × example × input), so its memory stays bounded.
_JACOBIAN_CHUNK = 1 << 25
#: The class count :meth:`FAB.cost` assumes for the untargeted version (one backward per class).
_ASSUMED_CLASSES = 10


class FAB(FABBase, Attack):
    """Fast adaptive boundary attack (Croce & Hein 2020): minimal adversarial perturbations.

    A minimisation attack, L∞ or L2: it looks for each example's adversarial point of smallest
    norm (robench scores it at every ε by projecting it into the ball). Each step linearises the
    classifier at the current iterate ``xₖ`` and takes the decision hyperplane of the linearised
    model: untargeted, the closest one among the other classes ``j`` (the smallest
    ``|f_j − f_y| / ‖∇(f_j − f_y)‖_q``, q the dual norm: 1 for L∞, 2 for L2); targeted (FAB-T),
    the target's. It projects both ``xₖ`` and the clean point ``x₀`` onto that hyperplane
    intersected with the bounds (the exact minimal-norm projection, ``δₖ`` and ``δ₀``) and
    moves to ``clamp((1 − α)(xₖ + η·δₖ) + α(x₀ + η·δ₀))`` with ``α = min(‖δₖ‖ / (‖δₖ‖ + ‖δ₀‖),
    α_max)``, a step biased towards the clean point. When the model misclassifies the new point
    (checked in full precision) it is kept if it is the example's smallest adversarial so far,
    and the iterate steps back towards the clean point: ``x₀ + β·(x − x₀)``.

    Parameters (the paper's defaults):

    - ``steps`` = 100 iterations per run (the FAB paper's and AutoAttack's FAB-T; torchattacks'
      default is 10);
    - ``restarts`` = 1 runs: the first starts at the clean point, each further one from a random
      point at distance ``r = min(‖best‖, ε)/2`` of it, ``‖best‖`` the example's smallest
      adversarial norm so far (uniform noise scaled to L∞ norm ``r``, or Gaussian noise scaled
      to L2 norm ``r``; then clamped to the bounds), as in the paper's code;
    - ``targeted`` = false; with true, FAB-T runs towards each of the ``n_target_classes`` = 9
      classes the clean logits score highest besides the true one in turn, each on the
      examples not yet done (AutoAttack's FAB-T): one forward-backward pass per step. The
      untargeted version needs the gradient of every class difference ``f_j − f_y``: one
      forward and a backward per other class, batched into one vectorised backward
      (``is_grads_batched``; a loop for models vmap cannot batch). Either way, each step adds
      one forward pass, in full precision, to check the new point; the gradient passes run in
      the evaluation's attack precision (:func:`robench.precision.gradient_autocast`);
    - ``eta`` = 1.05 (overshoot), ``alpha_max`` = 0.1 (largest bias towards the clean point),
      ``beta`` = 0.9 (backward step);
    - ``early_stop`` = true: with a finite ε, an example is done as soon as its best
      adversarial point lies within the ε-ball: it leaves the batch (no more steps, restarts or
      targets). That keeps every example robust accuracy at ε counts as broken (AutoAttack only
      drops broken examples between targets and restarts), but their points are then not
      minimised further. At ε = ∞ (robench's minimisation run) nothing is done early: every
      example takes every step of every run.

    Departures from the paper: the projection onto hyperplane ∩ box is exact for any bounds
    (the reference code assumes [0, 1]); at ε = ∞ an example with no adversarial yet restarts at
    ``r`` = half its first projection step from the clean point (the linearised distance to the
    boundary) where the paper uses a dataset constant; the early stop above; the optional final
    line search of the original code is not implemented. Examples the model misclassifies
    without attack are returned as they are (norm 0), as are those the attack never fools.
    """

    minimizes = True

    params: FABBase.Params

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._vectorized = True  # batched backward over the classes (falls back to a loop)

    def cost(self) -> float:
        """Per step: a forward and one backward per other class (untargeted, assuming ten
        classes) or one forward-backward pass (targeted), plus the forward that checks it."""
        p = self.params
        if p.targeted:
            return 0.5 + p.n_target_classes * p.restarts * p.steps * 1.5
        return 0.5 + p.restarts * p.steps * (1.0 + 0.5 * _ASSUMED_CLASSES)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p, device = self.params, x.device.type
        with torch.no_grad(), precision.full_precision(device):
            logits = chunks.forward(model, x)
        n_classes = logits.shape[1]
        if p.targeted and p.n_target_classes > n_classes - 1:
            raise ValueError(
                f"fab: n_target_classes = {p.n_target_classes} exceeds the number of classes "
                f"minus one ({n_classes - 1})"
            )
        state = _State(x, logits.argmax(dim=1) != y)
        eps = self.threat.eps
        # examples are done once their best norm is at most `limit`
        state.limit = eps if p.early_stop and math.isfinite(eps) else 0.0
        if p.targeted:
            others = logits.scatter(1, y[:, None], float("-inf"))
            targets = others.topk(p.n_target_classes, dim=1).indices.unbind(1)
        else:
            targets = (None,)
        for target in targets:
            for restart in range(p.restarts):
                index = state.todo()
                if not len(index):
                    return state.out
                x0 = x[index]
                start = x0 if restart == 0 else self._random_start(x0, state, index)
                t = None if target is None else target[index]
                self._descend(model, state, index, start, y[index], t, first=restart == 0)
        return state.out

    def _random_start(self, x0: torch.Tensor, state: _State, index: torch.Tensor) -> torch.Tensor:
        """A random point at distance ``min(‖best‖, ε)/2`` of ``x0`` (see the class docstring)."""
        radius = state.best[index].clamp(max=self.threat.eps)
        radius = torch.where(torch.isfinite(radius), radius, state.estimate[index])
        radius = radius.nan_to_num(posinf=0.0).mul_(0.5)
        if self.threat.norm == "linf":
            t = torch.empty_like(x0).uniform_(-1.0, 1.0)
        else:
            t = torch.randn_like(x0)
        scale = radius / _norm(t, self.threat.norm).clamp_(min=_TINY)
        lo, hi = self.threat.bounds
        return t.mul_(_rows(scale, t)).add_(x0).clamp_(lo, hi)

    def _descend(
        self,
        model: nn.Module,
        state: _State,
        index: torch.Tensor,
        x_k: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        *,
        first: bool,
    ) -> None:
        """``steps`` FAB iterations from ``x_k`` for the examples at ``index`` (in ``state``)."""
        p, norm = self.params, self.threat.norm
        lo, hi = self.threat.bounds
        device = x_k.device.type
        x0 = state.x[index]
        for step in range(p.steps):
            if target is None:
                df, w = self._closest_plane(model, x_k, y)
            else:
                df, w = self._target_plane(model, x_k, y, target)
            # the linearised boundary {z : df + <w, z − x_k> = 0}, reached from x_k and from x0
            flat_k, flat_0 = x_k.reshape(len(x_k), -1), x0.reshape(len(x0), -1)
            change = torch.cat((-df, (w * (flat_k - flat_0)).sum(dim=1) - df))
            delta = _plane_projection(
                torch.cat((flat_k, flat_0)), torch.cat((w, w)), change, lo, hi, norm
            )
            step_k, step_0 = delta.view(2, *x_k.shape).unbind(0)
            size = _norm(delta, norm).clamp_(min=_MIN_STEP)
            size_k, size_0 = size[: len(x_k)], size[len(x_k) :]
            if first and step == 0:  # the linearised distance to the boundary, for restarts
                state.estimate[index] = torch.minimum(state.estimate[index], size_0)
            alpha = _rows((size_k / (size_k + size_0)).clamp_(max=p.alpha_max), x_k)
            x_k = (
                (x_k + p.eta * step_k)
                .mul_(1 - alpha)
                .add_((x0 + p.eta * step_0).mul_(alpha))
                .clamp_(lo, hi)
            )
            with torch.no_grad(), precision.full_precision(device):
                fooled = chunks.forward(model, x_k).argmax(dim=1) != y
            if not fooled.any():
                continue
            dist = _norm(x_k - x0, norm)
            better = fooled & (dist < state.best[index])
            if better.any():
                state.out[index[better]] = x_k[better]
                state.best[index[better]] = dist[better]
            beta = _rows(torch.where(fooled, p.beta, 1.0).to(x_k.dtype), x_k)
            x_k = x_k.sub_(x0).mul_(beta).add_(x0)
            if state.limit > 0:
                keep = (state.best[index] > state.limit).nonzero().flatten()
                if not len(keep):
                    return
                if len(keep) < len(index):
                    index, x_k, x0, y = index[keep], x_k[keep], x0[keep], y[keep]
                    target = None if target is None else target[keep]

    def _target_plane(
        self, model: nn.Module, x_k: torch.Tensor, y: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``f_t − f_y`` at ``x_k`` and its input gradient (flattened): one forward-backward
        (on a CPU, in chunks: :mod:`robench.chunks`)."""

        def one(rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
            x_rows = x_k[rows].detach().requires_grad_(True)
            with torch.enable_grad():
                with precision.gradient_autocast(x_rows.device.type):
                    logits = model(x_rows)
                    diff = logits.gather(1, target[rows, None]) - logits.gather(1, y[rows, None])
                (grad,) = torch.autograd.grad(diff.sum(), x_rows)
            return diff.detach().squeeze(1).to(x_rows.dtype), grad.reshape(len(x_rows), -1)

        diff, grad = chunks.gradient_passes(model, x_k, one)
        return diff, grad

    def _closest_plane(
        self, model: nn.Module, x_k: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Among the other classes ``j``, ``f_j − f_y`` at ``x_k`` and its input gradient
        (flattened) for the ``j`` of the closest linearised boundary ``|f_j − f_y| /
        ‖∇(f_j − f_y)‖_q``: one forward, then the backward passes of every class difference,
        batched (``is_grads_batched``) in chunks of classes."""
        n, dual = len(x_k), 1 if self.threat.norm == "linf" else 2
        x_k = x_k.detach().requires_grad_(True)
        size = x_k[0].numel()
        rows = torch.arange(n, device=x_k.device)
        with torch.enable_grad():
            with precision.gradient_autocast(x_k.device.type):
                logits = model(x_k)
            n_classes = logits.shape[1]
            classes = torch.arange(n_classes, device=x_k.device)
            others = classes.expand(n, -1)[classes != y[:, None]].view(n, n_classes - 1)
            f = logits.detach().to(x_k.dtype)
            df = f.gather(1, others) - f.gather(1, y[:, None])
            true = F.one_hot(y, n_classes).to(logits.dtype)
            best = torch.full((n,), math.inf, dtype=x_k.dtype, device=x_k.device)
            best_df, best_w = torch.zeros_like(best), x_k.new_zeros(n, size)
            chunk = max(1, _JACOBIAN_CHUNK // (n * size))
            for start in range(0, n_classes - 1, chunk):
                cols = others[:, start : start + chunk]
                seeds = F.one_hot(cols.T, n_classes).to(logits.dtype) - true  # (c, n, classes)
                grads = self._batched_grad(logits, x_k, seeds).reshape(len(seeds), n, size)
                dist = df[:, start : start + chunk].T.abs() / (
                    grads.norm(p=dual, dim=2).add_(_TINY)
                )
                here, j = dist.min(dim=0)
                better = (here < best) | (start == 0)
                best = torch.where(better, here, best)
                best_df = torch.where(better, df[rows, start + j], best_df)
                best_w = torch.where(better[:, None], grads[j, rows], best_w)
        return best_df, best_w

    def _batched_grad(
        self, logits: torch.Tensor, x: torch.Tensor, seeds: torch.Tensor
    ) -> torch.Tensor:
        """The input gradients of ``<seeds[c], logits>`` for every ``c``, stacked: one batched
        backward (vmap), or one backward each where the model does not support vmap."""
        if self._vectorized:
            try:
                (grads,) = torch.autograd.grad(
                    logits, x, seeds, retain_graph=True, is_grads_batched=True
                )
                return grads
            except RuntimeError:  # an operation vmap cannot batch, or out of memory: loop
                self._vectorized = False
        return torch.stack(
            [torch.autograd.grad(logits, x, seed, retain_graph=True)[0] for seed in seeds]
        )


class _State:
    """Per example of the batch: the smallest adversarial point found and its norm."""

    def __init__(self, x: torch.Tensor, fooled: torch.Tensor) -> None:
        self.x = x
        self.out = x.clone()
        inf = torch.full((len(x),), math.inf, dtype=x.dtype, device=x.device)
        #: the norm of ``out - x``; 0 where the clean point is already misclassified
        self.best = inf.masked_fill(fooled, 0.0)
        #: the length of the first projection step from ``x`` (the restart radius at ε = ∞)
        self.estimate = inf.clone()
        #: an example is done when its best norm is at most this (0: never, but fooled clean)
        self.limit = 0.0

    def todo(self) -> torch.Tensor:
        """The examples still attacked."""
        return (self.best > self.limit).nonzero().flatten()


def _rows(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-example vector shaped to broadcast against a batch like ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def _norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    flat = t.reshape(len(t), -1)
    return flat.abs().amax(dim=1) if norm == "linf" else flat.norm(p=2, dim=1)


def _plane_projection(
    t: torch.Tensor, w: torch.Tensor, change: torch.Tensor, lo: float, hi: float, norm: str
) -> torch.Tensor:
    """Per row, the smallest ``δ`` (L∞ or L2) with ``<w, δ> = change`` and ``lo ≤ t + δ ≤ hi``:
    the projection of ``t`` onto the hyperplane ``<w, z> = <w, t> + change`` within the box.

    Moving coordinate ``i`` in the direction that helps, by at most its room to the bound, the
    best ``δ`` of a given radius ``τ`` is ``δᵢ = sign·min(τ, roomᵢ)`` (L∞) or ``min(τ·|wᵢ|,
    roomᵢ)`` (L2, the clipped KKT solution), and ``<w, δ>`` is piecewise linear and increasing
    in ``τ`` with a breakpoint where each coordinate saturates. Sorting the breakpoints gives
    the segment where ``<w, δ>`` reaches ``change``, and ``τ`` on it in closed form. A row that
    cannot reach the hyperplane inside the box gets the box corner that comes closest.
    """
    sign = torch.where(change < 0, -1.0, 1.0).to(w.dtype)
    w = w * sign[:, None]  # now <w, δ> must reach need ≥ 0
    need = change.abs()
    direction = w.sign()
    room = torch.where(w > 0, hi - t, t - lo).clamp_(min=0)
    weight = w.abs()
    gain = weight * room  # what each coordinate gives when saturated
    if norm == "linf":
        brk, rate = room, weight
    else:
        brk = torch.where(weight > 0, room / weight, math.inf)
        rate = weight * weight
    order = brk.argsort(dim=1)
    brk, rate, gain = brk.gather(1, order), rate.gather(1, order), gain.gather(1, order)
    gain_upto = gain.cumsum(dim=1)
    rate_from = rate.flip(1).cumsum(dim=1).flip(1)  # exact zeros after the last nonzero rate
    rate_after = F.pad(rate_from[:, 1:], (0, 1))
    reach = gain_upto + torch.where(rate_after > 0, brk * rate_after, 0.0)  # <w, δ> at brk
    k = (reach < need[:, None]).sum(dim=1, keepdim=True)
    feasible = k.squeeze(1) < t.shape[1]
    k = k.clamp_(max=t.shape[1] - 1)
    gain_before = (gain_upto.gather(1, k) - gain.gather(1, k)).squeeze(1)
    tau = (need - gain_before) / rate_from.gather(1, k).squeeze(1).clamp(min=_TINY)
    tau = torch.where(feasible, tau.clamp_(min=0), math.inf)[:, None]
    move = tau if norm == "linf" else tau * weight
    move = torch.where(weight > 0, torch.minimum(move, room), 0.0)
    return direction.mul_(move)
