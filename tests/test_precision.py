"""Attacks in bfloat16 (``[evaluation] precision = "bf16"``) and channels_last evaluation: the
gradient passes run under autocast, every verdict is the model's own full-precision one."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

import robench
from robench import precision
from robench.attacks import pgd as pgd_module
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


class NearLiar(nn.Module):
    """``inner``, but in gradient passes the top two logits trade places when they are closer
    than half the slack (values only: the gradients stay true), as a reduced precision might."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.slack = pgd_module.MARGIN_SLACK / 2
        self.example_passes = self.swaps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.inner(x)
        if not torch.is_grad_enabled():
            return logits
        self.example_passes += len(x)
        top = logits.detach().topk(2, dim=1)
        gap = top.values[:, 0] - top.values[:, 1]
        close = gap < self.slack * logits.detach().abs().amax(dim=1)
        self.swaps += int(close.sum())
        lie = logits.detach().clone()
        rows = close.nonzero().flatten()
        lie[rows, top.indices[rows, 0]] = top.values[rows, 1]
        lie[rows, top.indices[rows, 1]] = top.values[rows, 0]
        return logits + (lie - logits.detach())


def test_reduced_precision_catches_what_the_model_misclassifies_by_a_hair(monkeypatch, trained):
    """Logits that are a little off near the boundary neither stop PGD early nor hide an example
    the model itself misclassifies: the early-stopped result is the full-precision one."""
    model, x, y, bounds = trained
    pgd = [PGD(ThreatModel("linf", 0.1, bounds), steps=10)]

    def robust(net: nn.Module, reduced: bool) -> torch.Tensor:
        torch.manual_seed(0)
        with monkeypatch.context() as m:
            m.setattr(precision, "reduced", lambda device_type: reduced)
            return evaluate(net, x, y, pgd, batch_size=64).robust

    truthful = NearLiar(model)
    truthful.slack = 0.0  # never lies
    honest = robust(truthful, False)
    monkeypatch.setattr(pgd_module, "MARGIN_SLACK", 0.5)  # a wide slack, a big lie: many cases
    liar, blind = NearLiar(model), NearLiar(model)
    assert torch.equal(robust(liar, True), honest)
    assert liar.swaps > 0
    # the same steps taken (up to a tie or two: a full-precision pass over a few rows may
    # round differently from one over the whole batch)
    assert abs(liar.example_passes - truthful.example_passes) <= 0.02 * truthful.example_passes
    # without the slack, the examples the lie hides near the boundary keep costing steps
    monkeypatch.setattr(pgd_module, "MARGIN_SLACK", 0.0)
    robust(blind, True)
    assert blind.example_passes > 1.1 * liar.example_passes


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


def test_bf16_without_native_support_runs_in_fp32(monkeypatch, tmp_path, trained):
    """No setting may make evaluation slower than fp32: emulated bf16 is, so bf16 asked on a
    device without it runs in fp32 (the same cells as an fp32 run), and says so."""
    monkeypatch.setattr(precision, "bf16_native", lambda device: False)
    runs, provs = {}, {}
    for prec in ("fp32", "bf16"):
        config = tiny_config(tmp_path)  # one folder (tmp_path/out): bf16's cells are fp32's
        config["evaluation"] |= {"sanity": False, "precision": prec}
        runs[prec] = robench.run(config, quiet=True)
        provs[prec] = pd.read_json(tmp_path / "out" / "results.json", typ="series")
    assert list(runs["bf16"]["accuracy"]) == list(runs["fp32"]["accuracy"])
    assert provs["bf16"]["cells"]["computed"] == 0
    assert provs["bf16"]["evaluation_settings"] == {
        "asked": {"precision": "bf16", "channels_last": None},
        "used": {"precision": "fp32", "channels_last": None},
        "why": "precision 'bf16' asked, fp32 used: no native bfloat16 on this cpu",
    }
    assert "evaluation_settings" not in provs["fp32"]
    model, x, y, bounds = trained
    attack = [PGD(ThreatModel("linf", 0.1, bounds), steps=3)]
    with pytest.warns(RuntimeWarning, match="fp32 used"):
        bf16 = evaluate(model, x, y, attack, precision="bf16")
    assert torch.equal(bf16.robust, evaluate(model, x, y, attack).robust)


def test_bf16_brings_channels_last_unless_the_table_says_otherwise():
    from robench.schema import EvaluationConfig

    used, why = precision.fastest(EvaluationConfig(precision="bf16"), "cpu")
    assert used.channels_last and "channels_last" in why
    kept, why = precision.fastest(EvaluationConfig(precision="bf16", channels_last=False), "cpu")
    assert not kept.channels_last and why is None
    assert precision.fastest(EvaluationConfig(), "cpu") == (EvaluationConfig(), None)


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


def _weight_layouts(model: nn.Module) -> tuple[list[bool], torch.utils.hooks.RemovableHandle]:
    """Per forward pass of ``model``'s first convolution with several input channels (where
    the two layouts differ), whether its weight is in channels_last memory format."""
    seen: list[bool] = []
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)

    def hook(module, inputs):
        seen.append(not module.weight.is_contiguous())

    return seen, conv.register_forward_pre_hook(hook)


def test_a_convolutional_model_on_a_cpu_is_evaluated_in_channels_last(trained):
    """Unset, the memory format is robench's choice: on a CPU, convolutions and pooling are
    faster in channels_last, so evaluate() runs the model so, and hands it back in its own
    layout with its own values; the outcomes are the given layout's (float sums reordered)."""
    model, x, y, bounds = trained
    before = {k: (v.clone(), v.stride()) for k, v in model.state_dict().items()}
    attack = [PGD(ThreatModel("linf", 0.1, bounds), steps=5)]
    seen, handle = _weight_layouts(model)
    try:
        fast = evaluate(model, x, y, attack)
        assert seen and all(seen)
        assert all(model.state_dict()[k].stride() == s for k, (_, s) in before.items())
        assert all(torch.equal(model.state_dict()[k], v) for k, (v, _) in before.items())
        seen.clear()
        given = evaluate(model, x, y, attack, channels_last=False)
        assert seen and not any(seen)
    finally:
        handle.remove()
    assert torch.equal(fast.clean, given.clean)
    assert abs(int(fast.robust.sum()) - int(given.robust.sum())) <= 1
    assert 0 < int(given.robust.sum()) < int(given.clean.sum())  # the attack bites


def test_the_layout_robench_chooses_keeps_the_cells_keys(tmp_path):
    """A run with channels_last unset says in its provenance which layout each model was
    evaluated in, and a run with channels_last = false reuses every cell of it (robench's
    choice of layout is not part of a cell's key)."""
    config = tiny_config(tmp_path)
    config["evaluation"] |= {"sanity": False}
    robench.run(config, quiet=True)
    prov = pd.read_json(tmp_path / "out" / "results.json", typ="series")
    assert prov["evaluation_memory_format"] == {"standard": "channels_last"}
    config["evaluation"]["channels_last"] = False
    robench.run(config, quiet=True)
    prov = pd.read_json(tmp_path / "out" / "results.json", typ="series")
    assert prov["cells"]["computed"] == 0
