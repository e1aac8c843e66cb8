"""Attacks in bfloat16 (``[evaluation] precision = "bf16"``) and channels_last evaluation: the
gradient passes run under autocast, every verdict is the model's own full-precision one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import robench
from robench import precision
from robench.attacks.fgsm import FGSM
from robench.attacks.pgd import PGD
from robench.evaluation import evaluate
from robench.registry import build_registry
from robench.reproducibility import eval_subset
from robench.threat import ThreatModel

from .helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

REGISTRY = build_registry()


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained on 600 digits, with 150 test digits."""
    ds = REGISTRY.get("dataset", "digits").cls()
    info = ds.info(None)
    train = eval_subset(ds.load("train", None), 600, seed=0)
    test = eval_subset(ds.load("test", None), 150, seed=0)
    torch.manual_seed(0)
    model = REGISTRY.get("model", "small-cnn").cls().build(info)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for xb, yb in zip(train.x.split(64), train.y.split(64), strict=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
    return model.eval(), test.x, test.y, info.bounds


class Recording(nn.Module):
    """``inner``, noting for each forward pass whether it ran under CPU autocast and with
    gradients; with ``lie``, a pass under autocast claims class 0 for every example."""

    def __init__(self, inner: nn.Module, lie: bool = False) -> None:
        super().__init__()
        self.inner, self.lie = inner, lie
        self.passes: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        autocast = torch.is_autocast_enabled("cpu")
        self.passes.append((autocast, torch.is_grad_enabled()))
        logits = self.inner(x)
        if self.lie and autocast:
            logits = logits + torch.tensor([100.0] + [0.0] * 9, device=x.device)
        return logits


def attacks(bounds, eps: float = 0.15, **pgd):
    threat = ThreatModel("linf", eps, bounds)
    return [FGSM(threat), PGD(threat, steps=10, **pgd)]


def test_bf16_gradients_and_full_precision_verdicts(trained):
    model, x, y, bounds = trained
    spy = Recording(model)
    bf16 = evaluate(spy, x, y, attacks(bounds), batch_size=64, precision="bf16")
    gradient = [autocast for autocast, grad in spy.passes if grad]
    verdicts = [autocast for autocast, grad in spy.passes if not grad]
    assert gradient and all(gradient)  # every gradient pass in bf16
    assert verdicts and not any(verdicts)  # scoring and early-stop checks in fp32
    fp32 = evaluate(model, x, y, attacks(bounds), batch_size=64)
    assert torch.equal(bf16.clean, fp32.clean)
    assert fp32.robust_accuracy < fp32.clean_accuracy - 0.2  # the attacks bite
    assert abs(bf16.robust_accuracy - fp32.robust_accuracy) <= 0.05


def test_an_early_stop_needs_the_full_precision_verdict(monkeypatch, trained):
    """A bf16 pass that calls every example misclassified must not stop PGD (it would return
    its random starts: robust ≈ clean); it goes on stepping until the model itself is fooled."""
    model, x, y, bounds = trained
    keep = y != 0  # examples of class 0 would really be "correct" under the lie
    x, y = x[keep], y[keep]
    pgd = [PGD(ThreatModel("linf", 0.15, bounds), steps=10)]
    out = evaluate(Recording(model, lie=True), x, y, pgd, batch_size=64, precision="bf16")
    assert out.robust_accuracy < out.clean_accuracy - 0.2
    plain = Recording(model, lie=True)  # an fp32 evaluation never autocasts: no lie told
    assert evaluate(plain, x, y, pgd, batch_size=64).clean_accuracy == out.clean_accuracy
    assert not any(autocast for autocast, _ in plain.passes)
    # without the confirmation the lie would stop PGD at once
    monkeypatch.setattr(precision, "reduced", lambda device_type: False)
    fooled = evaluate(Recording(model, lie=True), x, y, pgd, batch_size=64, precision="bf16")
    assert fooled.robust_accuracy > out.clean_accuracy - 0.1


def test_attack_precision_is_scoped_and_checked():
    assert not precision.reduced("cpu")
    with precision.attack_precision("bf16"):
        assert precision.reduced("cpu")
        with precision.attack_precision("fp32"):
            assert not precision.reduced("cpu")
        assert precision.reduced("cpu")
    assert not precision.reduced("cpu")
    with pytest.raises(ValueError, match="'fp32' or 'bf16'"), precision.attack_precision("fp16"):
        pass


def test_bf16_on_a_device_without_it_warns(monkeypatch):
    monkeypatch.setattr(precision, "bf16_native", lambda device: False)
    with pytest.warns(RuntimeWarning, match=r"\[evaluation\].*emulated"):
        precision.warn_if_slow("bf16", "cpu", "[evaluation]")


def test_a_benchmark_evaluates_in_bf16_and_channels_last(tmp_path):
    runs = {}
    for fast in (False, True):
        config = tiny_config(tmp_path / str(fast))
        config["evaluation"] |= {"sanity": False, "precision": "bf16" if fast else "fp32"}
        config["evaluation"]["channels_last"] = fast
        runs[fast] = robench.run(config, quiet=True).set_index(["kind", "attack", "eps"])
    slow, fast = runs[False], runs[True]
    assert (fast["status"] == "ok").all()
    assert (
        fast.loc[("clean", "clean", 0.0), "accuracy"]
        == slow.loc[("clean", "clean", 0.0), "accuracy"]
    )
    diff = (fast["accuracy"] - slow["accuracy"]).abs()
    assert diff.max() <= 0.06, diff
    assert (fast.xs("attack")["accuracy"] < fast.loc[("clean", "clean", 0.0), "accuracy"]).all()


def test_evaluation_precision_is_validated(tmp_path):
    from robench.errors import ConfigError

    config = tiny_config(tmp_path)
    config["evaluation"]["precision"] = "fp16"
    with pytest.raises(ConfigError, match="precision"):
        robench.run(config, quiet=True)
