"""``check_model``: the model contract (a module mapping [0, 1] images to logits)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robench.dataset import DatasetInfo
from robench.errors import ConfigError
from robench.model import Model
from robench.testing._common import check_params, check_registration, fail, raised

#: the shapes a model that accepts any input is built for: grey digits and an odd RGB shape
ANY_SHAPE = (
    DatasetInfo("tiny-grey", (1, 8, 8), 10, (0.3,), (0.38,)),
    DatasetInfo("tiny-odd", (3, 17, 21), 7, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)),
)
#: examples per forward pass
N = 3


def _infos(cls: type[Model], info: DatasetInfo | None) -> list[DatasetInfo]:
    """The datasets to build ``cls`` for: ``info``, its declared input shapes (10 classes), or
    :data:`ANY_SHAPE`."""
    if info is not None:
        return [info]
    if cls.input_shapes is None:
        return list(ANY_SHAPE)
    return [
        DatasetInfo(f"tiny-{'x'.join(map(str, s))}", s, 10, (0.45,) * s[0], (0.25,) * s[0])
        for s in cls.input_shapes
    ]


def check_model(
    cls: type[Model],
    /,
    *,
    info: DatasetInfo | None = None,
    normalizes: bool = True,
    **params: Any,
) -> None:
    """Hold the model class ``cls`` to robench's model contract; raise
    :class:`ContractViolation` (an ``AssertionError``) naming the model and what broke.

    ``params`` go to the constructor. For each input shape it declares (``input_shapes``), or
    for 1×8×8 with 10 classes and 3×17×21 with 7 classes if it takes any: ``check`` accepts
    the dataset and ``build`` returns a module whose output is (N, classes) finite logits (not
    probabilities), the same for two forward passes in eval mode, with a finite non-zero
    gradient with respect to the input (gradient attacks need one) and to its parameters (a
    defense trains it), and whose ``state_dict`` is complete: loaded into a module built from
    another seed, it gives the same logits (the store saves and loads models this way). A
    shape it does not declare is refused by ``check`` with a one-line ConfigError naming the
    dataset. ``info`` builds it for that dataset only (a model for one dataset's shape and
    classes, e.g. a zoo model that checks them itself). With ``normalizes`` (the default; off
    too when ``params`` has ``normalize=False``) the model must use the dataset's mean and
    std: robench passes [0, 1] images and leaves the normalisation to the model.
    """
    subject = check_registration("model", cls, Model)
    p = check_params(subject, cls, params)
    normalizes = normalizes and getattr(p, "normalize", True) is not False
    try:
        model = cls(p)
    except Exception as exc:
        raise raised(subject, "when constructed", exc) from exc
    built = 0
    for each in _infos(cls, info):
        try:
            model.check(each)
        except ConfigError as exc:
            if info is not None or cls.input_shapes is not None:
                raise fail(subject, f"refuses {each.name} ({each.shape}): {exc}", exc) from exc
            _one_line(subject, exc, each)
            continue
        except Exception as exc:
            raise raised(subject, f"in check() for {each.shape}", exc) from exc
        _check_built(subject, model, each, normalizes)
        built += 1
    if not built:
        raise fail(
            subject,
            "accepts none of the shapes 1×8×8 and 3×17×21: declare input_shapes, or pass "
            "check_model(..., info=DatasetInfo(...)) for the dataset it is made for",
        )
    if info is None and cls.input_shapes is not None:
        odd = DatasetInfo("tiny-odd", (2, 5, 7), 10, (0.5,) * 2, (0.2,) * 2)
        try:
            model.check(odd)
        except ConfigError as exc:
            _one_line(subject, exc, odd)
        else:
            raise fail(subject, "accepts 2×5×7 inputs, which its input_shapes do not list")


def _one_line(subject: str, exc: ConfigError, info: DatasetInfo) -> None:
    text = str(exc)
    if "\n" in text or info.name not in text:
        raise fail(
            subject,
            f"refuses {info.name} ({'×'.join(map(str, info.shape))}) with {text!r}: one line "
            "naming the dataset expected",
        )


def _build(subject: str, model: Model, info: DatasetInfo, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            net = model.build(info)
        except Exception as exc:
            raise raised(subject, f"in build() for {info.shape}", exc) from exc
    if not isinstance(net, nn.Module):
        raise fail(subject, f"build() returned {type(net).__name__}, not a torch.nn.Module")
    return net


def _logits(subject: str, net: nn.Module, x: torch.Tensor, where: str) -> torch.Tensor:
    try:
        return net(x)
    except Exception as exc:
        raise raised(subject, f"in forward ({where})", exc) from exc


def _check_built(subject: str, model: Model, info: DatasetInfo, normalizes: bool) -> None:
    shape, where = "×".join(map(str, info.shape)), f"{N}×{'×'.join(map(str, info.shape))}"
    net = _build(subject, model, info, seed=0).eval()
    x = torch.rand(N, *info.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, again = _logits(subject, net, x, where), _logits(subject, net, x, where)
    if not isinstance(out, torch.Tensor) or out.shape != (N, info.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise fail(subject, f"returned {got} for {where} images of {info.num_classes} classes")
    if not torch.isfinite(out).all():
        raise fail(subject, f"returned non-finite logits ({where})")
    if torch.allclose(out.sum(dim=1), torch.ones(N)) and (out >= 0).all():
        raise fail(subject, f"returns probabilities, not logits ({where})")
    if not torch.equal(out, again):
        raise fail(subject, f"gives different logits for the same input in eval mode ({where})")

    xg = x.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(_logits(subject, net, xg, where), torch.arange(N) % 2)
    try:
        (grad,) = torch.autograd.grad(loss, xg, allow_unused=True)
    except RuntimeError as exc:
        raise raised(subject, f"computing an input gradient ({where})", exc) from exc
    if grad is None or not torch.isfinite(grad).all() or not grad.abs().sum() > 0:
        raise fail(subject, f"has a zero or non-finite input gradient ({where}): attacks need it")

    other = _build(subject, model, info, seed=1).eval()
    try:
        other.load_state_dict(net.state_dict(), strict=True)
    except Exception as exc:
        raise raised(subject, f"loading its own state_dict ({shape})", exc) from exc
    with torch.no_grad():
        if not torch.equal(_logits(subject, other, x, where), out):
            raise fail(
                subject,
                f"gives other logits after its state_dict is loaded into a module built from "
                f"another seed ({where}): keep all state in parameters and buffers",
            )
    net.train()
    trainable = [q for q in net.parameters() if q.requires_grad]
    loss = nn.functional.cross_entropy(_logits(subject, net, x, where), torch.arange(N) % 2)
    grads = torch.autograd.grad(loss, trainable, allow_unused=True) if trainable else ()
    if not any(g is not None and g.abs().sum() > 0 for g in grads):
        raise fail(subject, f"has no parameter a loss gradient reaches ({where}): cannot train")
    if normalizes:
        stats = DatasetInfo(
            info.name,
            info.shape,
            info.num_classes,
            tuple(m + 0.2 for m in info.mean),
            tuple(2 * s for s in info.std),
        )
        renormed = _build(subject, model, stats, seed=0).eval()
        with torch.no_grad():
            if torch.equal(_logits(subject, renormed, x, where), out):
                raise fail(
                    subject,
                    "ignores the dataset's mean and std: robench passes [0, 1] images, so the "
                    "model normalises them itself (robench.api.Normalize; "
                    "check_model(..., normalizes=False) for a model that must not)",
                )


__all__ = ["ANY_SHAPE", "check_model"]
