"""Square Attack (Andriushchenko et al., ECCV 2020): score-based random search, L∞ and L2."""

from __future__ import annotations

import math

import torch
from torch import nn

from robench import chunks, precision
from robench.attack import Attack
from robench.attacks._common import per_example_loss
from robench.attacks.bases import SquareBase

#: Iterations (on a budget of 10 000 queries) after which the square's area halves.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)

#: Guards norms against division by zero.
_TINY = 1e-12


def square_fraction(p_init: float, iteration: int, n_queries: int) -> float:
    """The fraction ``p`` of each channel's pixels a square covers at ``iteration`` (from 0).

    The paper's piecewise-constant schedule: ``p_init``, halved after iterations 10, 50, 200,
    500, 1000, 2000, 4000, 6000 and 8000 of a 10 000-query budget, the iteration rescaled to
    that budget when ``n_queries`` differs (as the authors' code does).
    """
    it = int(iteration / n_queries * 10000)
    return p_init / 2 ** sum(it > t for t in _HALVINGS)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y − max_{j≠y} z_j`` per example: negative exactly when the model is fooled."""
    return -per_example_loss(logits, y, "margin")


def _rectangle_bump(rows: int, cols: int) -> torch.Tensor:
    """The paper's pseudo-Gaussian bump on a ``rows×cols`` rectangle (unnormalised).

    Nested rectangles grow around the centre; the k-th (k = 0, 1, ...) adds ``1/(k+1)²``, so a
    pixel at Chebyshev distance ``d`` from the centre holds ``Σ_{k≥d} 1/(k+1)²``.
    """
    levels = max(rows // 2, cols // 2) + 1
    tail = torch.tensor([1.0 / (k + 1) ** 2 for k in range(levels)], dtype=torch.float64)
    tail = tail.flip(0).cumsum(0).flip(0)  # tail[d] = Σ_{k≥d} 1/(k+1)²
    dr = (torch.arange(rows) - rows // 2).abs()
    dc = (torch.arange(cols) - cols // 2).abs()
    return tail[torch.maximum(dr[:, None], dc[None, :])]


def square_bump(s: int) -> torch.Tensor:
    """The L2 update's shape ``η`` on an ``s×s`` square, unit L2 norm (float64).

    A positive bump on the top ``⌊s/2⌋`` rows and a negative one on the rest (the paper's
    ``(η^(h,k), −η^(h,h−k))``). The attack rotates it by 90° at random.
    """
    top = _rectangle_bump(s // 2, s)
    top = top / top.norm().clamp(min=_TINY)
    bottom = _rectangle_bump(s - s // 2, s)
    bottom = bottom / bottom.norm().clamp(min=_TINY)
    eta = torch.cat([top, -bottom])
    return eta / eta.norm()


def _random_bool(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Fair coin flips of ``shape`` (global RNG)."""
    return torch.randint(0, 2, shape, device=device, dtype=torch.bool)


class _Windows:
    """Random square windows, one per example, on ``h×w`` images; caches what each side needs."""

    def __init__(self, h: int, w: int, like: torch.Tensor) -> None:
        self.h, self.w, self.device, self.dtype = h, w, like.device, like.dtype
        self._offsets: dict[int, torch.Tensor] = {}
        self._bumps: dict[int, torch.Tensor] = {}

    def _corners(self, m: int, side: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform top-left corners ``{0..h−side} × {0..w−side}``, one per example."""
        top = torch.randint(0, self.h - side + 1, (m,), device=self.device)
        left = torch.randint(0, self.w - side + 1, (m,), device=self.device)
        return top, left

    def index(self, m: int, side: int) -> torch.Tensor:
        """``(m, side²)``: each example's random window as flat indices into ``h·w``."""
        offsets = self._offsets.get(side)
        if offsets is None:
            span = torch.arange(side, device=self.device)
            offsets = self._offsets[side] = (span[:, None] * self.w + span[None, :]).flatten()
        top, left = self._corners(m, side)
        return (top * self.w + left)[:, None] + offsets

    def bumps(self, m: int, side: int) -> torch.Tensor:
        """``(m, side²)``: the L2 bump, flattened, turned by 90° for a random half of the rows."""
        both = self._bumps.get(side)
        if both is None:
            eta = square_bump(side).to(device=self.device, dtype=self.dtype)
            both = self._bumps[side] = torch.stack([eta.flatten(), eta.t().flatten()])
        return both[torch.randint(0, 2, (m,), device=self.device)]


class Square(SquareBase, Attack):
    """Square Attack (Andriushchenko et al. 2020): gradient-free random search with square updates.

    A score-based black-box attack: it only queries the model's logits (forward passes, no
    gradients, so masked gradients do not hinder it) and minimises the margin
    ``z_y − max_{j≠y} z_j`` by random search. Each iteration proposes, for every example not yet
    fooled, a change of its current point on a random square window (its own window per
    example, the same window in all channels) and keeps the proposal if the margin decreases.
    The window covers a fraction ``p`` of each channel's pixels, ``p_init`` at first, halved
    after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 (the schedule of a
    10 000-query budget, rescaled to ``n_queries`` as the authors do); its side is
    ``round(√(p·h·w))``, at least 1 (L∞) or 3 and odd (L2), at most the image's side.

    - L∞: starts from vertical stripes (each column of each channel at ``x ± ε``, random sign);
      a proposal sets the window to ``x ± ε`` with a random sign per channel (clipped to the
      bounds). As in the authors' code, a sign draw that would not change the point is
      redrawn (uniformly among the draws that do), so no query is wasted on the current point.
    - L2: starts from a grid of pseudo-Gaussian bumps of random sign per channel, scaled to
      ``‖δ‖₂ = ε``; a proposal moves the perturbation's mass in a second random window (and
      any unused budget) to a new bump, of random sign and orientation, in the first window,
      keeping ``‖δ‖₂ = ε`` (then clipped to the bounds).

    Parameters: ``n_queries`` (default 5000) forward passes per example and restart, the
    initial point included; ``p_init`` (0.8) the initial fraction; ``restarts`` (1) runs from
    fresh initial points, each on the examples no earlier run fooled (an example that no run
    fools keeps its lowest-margin point).

    An example counts as fooled when its margin is negative (the model misclassifies it); it
    then stops costing queries and keeps that point. A clean pass first leaves out the examples
    the model already misclassifies (returned unchanged). The batch shrinks as examples are
    fooled: each iteration costs one forward pass on the still-robust examples and one device
    sync; on a CPU, the pass runs in chunks (:mod:`robench.chunks`). Every pass runs in the
    model's full precision (any autocast is suspended; the evaluation's bf16 setting concerns
    gradient passes, of which Square has none), so every acceptance is the model's own verdict.

    Where this follows the paper rather than the authors' PyTorch code (which torchattacks
    ports): the windows, the L∞ signs and the L2 bump's orientation are drawn per example
    (that code draws them once per iteration for the whole batch); window corners are uniform
    on ``{0..h−s}`` (that code never draws ``h−s``, so it never changes an image's last row and
    column after the initial point, which makes it noticeably weaker on small images such as
    8×8 digits); the L2 update gives each channel its own windows' mass, as the paper's
    Algorithm 3 does (that code gives each channel the mass of all channels' windows).
    Beyond the paper: the square's side is capped by the image's height and width, and inputs
    that are not ``N×C×H×W`` are treated as one-channel images (``N×H×W``) or as one row of
    pixels (any other shape, flattened), where the squares are single pixels.
    """

    gradient_free = True

    params: SquareBase.Params

    def cost(self) -> float:
        # forward passes only (≈ 1/3 of a forward-backward); fooled examples stop early
        return self.params.n_queries * self.params.restarts / 3

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.threat.eps == 0 or len(x) == 0:
            return x
        with torch.no_grad(), precision.full_precision(x.device.type):
            return self._attack(model, x, y)

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        # the windows are written through (N, C, H·W) views: work in the contiguous layout and
        # hand the model its batches in the layout it was given (channels_last, say)
        layout = _layout(x)
        x = x.contiguous()
        if x.dim() == 4:
            images = x
        elif x.dim() == 3:
            images = x.unsqueeze(1)
        else:
            images = x.reshape(len(x), 1, 1, -1)

        best = images.clone()
        best_margin = _margin(chunks.forward(model, x.contiguous(memory_format=layout)), y)
        todo = (best_margin >= 0).nonzero().flatten()
        for _ in range(self.params.restarts):
            if not len(todo):
                break
            found, margin = self._single_run(model, images[todo], y[todo], shape[1:], layout)
            better = margin < best_margin[todo]
            best[todo[better]] = found[better]
            best_margin[todo[better]] = margin[better]
            todo = todo[margin >= 0]
        return best.view(shape).contiguous(memory_format=layout)

    def _single_run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        item_shape: torch.Size,
        layout: torch.memory_format,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One run from a fresh initial point: each example's final point and its margin."""
        p, eps = self.params, self.threat.eps
        lo, hi = self.threat.bounds
        n, c, h, w = x.shape
        linf = self.threat.norm == "linf"
        windows = _Windows(h, w, x)

        def margin_of(batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            batch = batch.view(len(batch), *item_shape).contiguous(memory_format=layout)
            return _margin(chunks.forward(model, batch), labels)

        if linf:  # the box of coordinates the ball and the bounds allow
            low = (x - eps).clamp_(min=lo)
            high = (x + eps).clamp_(max=hi)
            current = torch.where(_random_bool((n, c, 1, w), x.device), high, low)
            ball = (low, high)
        else:
            current = _l2_start(x, eps, lo, hi, windows)
            ball = (x,)
        margin = margin_of(current, y)

        out, out_margin = current.clone(), margin.clone()
        index = torch.arange(n, device=x.device)
        for i in range(p.n_queries - 1):
            keep = (margin >= 0).nonzero().flatten()  # the one device sync per iteration
            if len(keep) < len(index):  # some were fooled: they leave with their point
                fooled = margin < 0
                out[index[fooled]] = current[fooled]
                out_margin[index[fooled]] = margin[fooled]
                if not len(keep):
                    return out, out_margin
                index, y, current, margin = (t[keep] for t in (index, y, current, margin))
                ball = tuple(t[keep] for t in ball)
            frac = square_fraction(p.p_init, i, p.n_queries)
            if linf:
                proposal, window, new, old = _linf_proposal(current, *ball, frac, windows)
                new_margin = margin_of(proposal, y)
                better = new_margin < margin
                kept = torch.where(better[:, None, None], new, old)
                current.view(len(current), c, h * w).scatter_(2, window, kept)
            else:
                proposal = _l2_proposal(ball[0], current, frac, eps, lo, hi, windows)
                new_margin = margin_of(proposal, y)
                better = new_margin < margin
                current = torch.where(better[:, None, None, None], proposal, current)
            margin = torch.where(better, new_margin, margin)
        out[index] = current
        out_margin[index] = margin
        return out, out_margin


def _linf_proposal(
    current: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    frac: float,
    windows: _Windows,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Set a random square window of each example to ``x ± ε`` (a random sign per channel).

    Every coordinate of ``current`` is at ``low`` or ``high`` already. Where a draw would leave
    the whole window unchanged (each channel's window already at its drawn sign), the signs
    are redrawn uniformly among the other ``2^c − 1`` patterns, by flipping a uniformly random
    non-empty set of channels.

    Returns the proposal, the windows (``(m, c, side²)`` flat indices into each channel) and
    the window's new and old values, so that accepting a proposal touches only its window.
    """
    m, c, h, w = current.shape
    device = current.device
    side = min(max(round(math.sqrt(frac * h * w)), 1), h, w)
    window = windows.index(m, side)[:, None, :].expand(m, c, side * side)
    old = current.view(m, c, h * w).gather(2, window)
    high = high.view(m, c, h * w).gather(2, window)
    low = low.view(m, c, h * w).gather(2, window)
    up = _random_bool((m, c, 1), device)
    unchanged = (torch.where(up, high, low) == old).flatten(1).all(dim=1)
    if c <= 30:
        pattern = torch.randint(1, 2**c, (m, 1), device=device)
        flips = ((pattern >> torch.arange(c, device=device)) & 1).bool()
    else:  # an unchanged draw has probability 2^-c: any flip will do
        flips = _random_bool((m, c), device)
    up = up ^ (flips & unchanged[:, None])[:, :, None]
    new = torch.where(up, high, low)
    proposal = current.clone().view(m, c, h * w).scatter_(2, window, new)
    return proposal.view(m, c, h, w), window, new, old


def _signs(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """Uniform random ±1 of ``shape``, in ``like``'s dtype and device (global RNG)."""
    return torch.randint(0, 2, shape, device=like.device).to(like.dtype).mul_(2).sub_(1)


def _l2_start(x: torch.Tensor, eps: float, lo: float, hi: float, windows: _Windows) -> torch.Tensor:
    """The paper's L2 initial point: a grid of bumps of random sign, ``‖δ‖₂ = ε``.

    Bumps of side ``⌊min(h, w)/5⌋`` (at least 1) tile the image from a small margin, each with
    a random sign per example and channel and a random orientation per example.
    """
    n, c, h, w = x.shape
    side = max(min(h, w) // 5, 1)
    delta = torch.zeros_like(x)
    top0, left0 = max((h - 5 * side) // 2, 0), max((w - 5 * side) // 2, 0)
    for top in range(top0, h - side + 1, side):
        for left in range(left0, w - side + 1, side):
            bump = windows.bumps(n, side).view(n, 1, side, side) * _signs((n, c, 1, 1), x)
            delta[:, :, top : top + side, left : left + side] += bump
    return _rescaled(x, delta, eps, lo, hi)


def _l2_proposal(
    x: torch.Tensor,
    current: torch.Tensor,
    frac: float,
    eps: float,
    lo: float,
    hi: float,
    windows: _Windows,
) -> torch.Tensor:
    """The paper's L2 update (its Algorithm 3), per example and channel.

    Two random windows W1, W2 per example. Per channel, the perturbation's mass on W1 ∪ W2 plus
    an equal share of the unused budget ``ε² − ‖δ‖₂²`` goes into W1 as ``ρ·η + δ_W1/‖δ_W1‖``
    rescaled (ρ a random sign, η the unit bump at a random orientation); W2 outside W1 is
    zeroed, so ``‖δ‖₂ = ε`` before clipping to the bounds.
    """
    m, c, h, w = x.shape
    side = max(round(math.sqrt(frac * h * w)), 3)
    side = min(side + (side % 2 == 0), h, w)
    nu = (current - x).view(m, c, h * w)
    first = windows.index(m, side)
    second = windows.index(m, side)
    both = torch.zeros(m, h * w, dtype=torch.bool, device=x.device)
    both.scatter_(1, first, True).scatter_(1, second, True)

    squares = nu.square()
    unused = (eps**2 - squares.sum(dim=(1, 2))).clamp_(min=0)  # (m,)
    available = squares.mul_(both[:, None, :]).sum(dim=2).add_(unused[:, None] / c).sqrt_()

    index = first[:, None, :].expand(m, c, side * side)
    old = nu.gather(2, index)
    old = old.div_(_norm(old).clamp_(min=_TINY))
    new = old.add_(windows.bumps(m, side)[:, None, :] * _signs((m, c, 1), x))
    new = new.mul_(available[:, :, None] / _norm(new).clamp_(min=_TINY))
    delta = nu.masked_fill(both[:, None, :], 0.0).scatter_(2, index, new)
    return _rescaled(x, delta.view(m, c, h, w), eps, lo, hi)


def _norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm over the last dimension, kept."""
    return torch.linalg.vector_norm(t, dim=-1, keepdim=True)


def _rescaled(x: torch.Tensor, delta: torch.Tensor, eps: float, lo: float, hi: float):
    """``x + ε·δ/‖δ‖₂`` per example, clipped to the bounds."""
    norms = torch.linalg.vector_norm(delta.flatten(1), dim=1).clamp_(min=_TINY)
    return delta.mul_((eps / norms)[:, None, None, None]).add_(x).clamp_(lo, hi)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """The memory format of a batch: channels_last when a 4-D batch is laid out so (and not
    also contiguous, as a batch with one channel or one pixel is both), else contiguous."""
    channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
    if channels_last and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
