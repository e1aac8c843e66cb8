"""The ART adapter plugin (plugins/robench-art): registration, validation, the estimator cache,
attacks and preprocessing defenses with real ART on the scikit-learn digits."""

from __future__ import annotations

import gc
import inspect
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import robench
from robench.attack import craft
from robench.cli import main
from robench.config import load_benchmark
from robench.defense import TrainContext
from robench.errors import ConfigError
from robench.registry import build_registry
from robench.reproducibility import eval_subset
from robench.threat import TOLERANCE, ThreatModel
from robench.training import TrainingConfig

from .helpers import tiny_config, validate_with_attack

pytest.importorskip("art", reason="adversarial-robustness-toolbox is not installed")
robench_art = pytest.importorskip("robench_art", reason="plugins/robench-art is not installed")

from robench_art import estimator  # noqa: E402
from robench_art.attacks import applies_to_pytorch, classify, make_attack_class  # noqa: E402
from robench_art.catalogue import BUDGETED, EXCLUDED, MINIMISING  # noqa: E402
from robench_art.defenses import median_filter  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

REGISTRY = build_registry()
ART_ATTACKS = {e.name: e for e in REGISTRY.entries("attack") if e.name.startswith("art.")}


def _evasion_classes() -> dict[str, type]:
    import art.attacks.evasion as evasion
    from art.attacks.attack import EvasionAttack

    return {
        name: c
        for name in dir(evasion)
        if inspect.isclass(c := getattr(evasion, name)) and issubclass(c, EvasionAttack)
    }


@pytest.fixture(scope="module")
def digits():
    ds = REGISTRY.get("dataset", "digits").cls()
    info = ds.info(None)
    return info, ds.load("train", None), eval_subset(ds.load("test", None), 120, seed=0)


def _small_cnn(info, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return REGISTRY.get("model", "small-cnn").cls().build(info)


@pytest.fixture(scope="module")
def trained(digits):
    info, train, test = digits
    cfg = TrainingConfig(epochs=4, lr=3e-3)
    ctx = TrainContext(cfg, torch.device("cpu"), 0, info, lambda spec: None)
    model = REGISTRY.get("defense", "standard").cls().fit(_small_cnn(info), train, ctx)
    return model.eval(), test


def _attack(name: str, norm: str, eps: float, **params):
    return REGISTRY.get("attack", name).cls(ThreatModel(norm, eps), **params)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


# --- registration -------------------------------------------------------------------------------


def test_every_catalogued_attack_is_registered_by_robench_art():
    evasion = _evasion_classes()
    catalogued = {**BUDGETED, **MINIMISING}
    expected = {n for n in catalogued if n in evasion and classify(n, evasion[n]) is not None}
    assert {"ProjectedGradientDescent", "CarliniL2Method", "DeepFool", "HopSkipJump"} <= expected
    assert {f"art.{n}" for n in expected} <= set(ART_ATTACKS)
    for name in expected:
        entry, spec = ART_ATTACKS[f"art.{name}"], catalogued[name]
        assert (entry.distribution, entry.plugin) == ("robench-art", "art")
        assert entry.cls.minimizes == spec.minimizes and entry.cls.norms == spec.norms
        assert entry.description.startswith(f"ART's {name} (")
    assert ART_ATTACKS["art.BasicIterativeMethod"].cls.norms == ("linf",)
    assert ART_ATTACKS["art.CarliniLInfMethod"].cls.norms == ("linf",)
    assert ART_ATTACKS["art.HopSkipJump"].cls.norms == ("linf", "l2")


def test_excluded_attacks_are_not_registered_and_every_art_attack_is_accounted_for():
    assert all(isinstance(r, str) and r for r in EXCLUDED.values())
    assert not {f"art.{n}" for n in EXCLUDED} & set(ART_ATTACKS)
    assert {"SaliencyMapMethod", "CarliniL0Method", "ElasticNet", "AdversarialPatch"} <= set(
        EXCLUDED
    )
    for name, cls in _evasion_classes().items():
        accounted = (
            f"art.{name}" in ART_ATTACKS
            or name in EXCLUDED
            or not applies_to_pytorch(cls)
            or name in BUDGETED.keys() | MINIMISING.keys()  # needs an optional package
        )
        assert accounted, f"ART's {name} is neither adapted nor excluded: classify it"


def test_defenses_are_registered_and_exclusions_have_reasons():
    defenses = {e.name: e for e in REGISTRY.entries("defense") if e.name.startswith("art.")}
    assert set(defenses) == {"art.JpegCompression", "art.FeatureSqueezing", "art.SpatialSmoothing"}
    assert all(e.distribution == "robench-art" for e in defenses.values())
    assert all(reason for reason in robench_art.EXCLUDED_DEFENCES.values())
    assert "TotalVarMin" in robench_art.EXCLUDED_DEFENCES


def test_robench_list_attributes_art_attacks_to_robench_art():
    result = CliRunner().invoke(main, ["list", "--kind", "attack"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    i = next(i for i, x in enumerate(lines) if x.split()[:1] == ["art.ProjectedGradientDescent"])
    assert "(L∞/L2, fixed ε)" in lines[i]
    heading = next(x for x in reversed(lines[:i]) if not x.startswith("    "))
    assert heading == "  robench-art 0.1.0 (art):"


def test_importing_the_plugin_does_not_import_art():
    code = "import sys, robench_art; assert 'art' not in sys.modules, 'ART imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_attack_unknown_to_the_catalogue_is_adapted_only_if_it_takes_eps(trained):
    from art.attacks.evasion import DeepFool, FastGradientMethod

    newer = type("BrandNewGradientAttack", (FastGradientMethod,), {})
    spec = classify("BrandNewGradientAttack", newer)
    assert spec is not None and spec.norms == ("linf", "l2") and not spec.minimizes
    cls = make_attack_class("BrandNewGradientAttack", newer, spec)
    assert cls.name == "art.BrandNewGradientAttack"
    model, test = trained
    crafted = craft(cls(ThreatModel("l2", 0.5)), model, test.x[:8], test.y[:8])
    assert crafted.n_violations == 0 and not torch.equal(crafted.x_adv, test.x[:8])
    assert classify("NoBudgetAttack", type("NoBudgetAttack", (DeepFool,), {})) is None
    tf = type("SomeAttackTensorFlowV2", (FastGradientMethod,), {})
    assert classify("SomeAttackTensorFlowV2", tf) is None


# --- validation ---------------------------------------------------------------------------------


def test_an_unknown_parameter_is_a_config_error_naming_the_field(tmp_path):
    config = tiny_config(
        tmp_path, attacks=[{"name": "art.ProjectedGradientDescent", "eps": 0.1, "max_iterr": 5}]
    )
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.max_iterr: .*did you mean 'max_iter'"):
        load_benchmark(config, check_data=False)


def test_an_unsupported_norm_is_a_config_error(tmp_path):
    config = tiny_config(
        tmp_path, attacks=[{"name": "art.CarliniL2Method", "norm": "linf", "eps": 0.1}]
    )
    with pytest.raises(ConfigError, match=r"attacks\[0\]\.norm: .*does not support norm 'linf'"):
        load_benchmark(config, check_data=False)


def test_validate_reports_a_misspelled_key_in_one_line(tmp_path):
    result = validate_with_attack(
        tmp_path, 'name = "art.ProjectedGradientDescent"\neps = 0.1\nmax_iterr = 5\n'
    )
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "attacks[0].max_iterr" in lines[0]
    assert "did you mean 'max_iter'" in lines[0]


def test_adapter_defaults_batch_size_and_step():
    params = ART_ATTACKS["art.ProjectedGradientDescent"].cls.Params
    assert params().batch_size is None and params().eps_step is None
    assert {"estimator", "eps", "norm", "targeted", "verbose"}.isdisjoint(params.model_fields)
    attack = _attack("art.ProjectedGradientDescent", "linf", 0.3)
    kwargs = attack.art_kwargs(batch_size=50)
    assert kwargs["batch_size"] == 50 and kwargs["eps_step"] == pytest.approx(0.1)
    assert kwargs["targeted"] is False and kwargs["verbose"] is False


# --- the estimator ------------------------------------------------------------------------------


def test_the_model_is_wrapped_once_and_the_art_attack_built_once(monkeypatch, digits):
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    counts = {"classifier": 0, "pgd": 0}

    def counting(cls, key):
        original = cls.__init__

        def init(self, *args, **kwargs):
            counts[key] += 1
            original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", init)

    counting(PyTorchClassifier, "classifier")
    counting(ProjectedGradientDescent, "pgd")
    info, _, test = digits
    model = _small_cnn(info).eval()
    pgd = _attack("art.ProjectedGradientDescent", "linf", 0.1, max_iter=2)
    fgm = _attack("art.FastGradientMethod", "l2", 0.5)
    for xb, yb in zip(test.x[:60].split(20), test.y[:60].split(20), strict=True):
        craft(pgd, model, xb, yb)
        craft(fgm, model, xb, yb)
    assert counts == {"classifier": 1, "pgd": 1}
    craft(_attack("art.ProjectedGradientDescent", "linf", 0.2, max_iter=2), model, xb, yb)
    assert counts == {"classifier": 1, "pgd": 2}  # a new robench attack: a new ART attack
    craft(pgd, model, test.x[:40], test.y[:40])  # larger than the batch it was built for
    assert counts == {"classifier": 1, "pgd": 3}
    other = _small_cnn(info, seed=1).eval()
    craft(pgd, other, xb, yb)
    assert counts == {"classifier": 2, "pgd": 4}
    # the cache holds models weakly: a dropped model leaves it
    assert other in estimator._CLASSIFIERS
    gc.collect()  # whatever earlier tests left for the collector goes first
    n = len(estimator._CLASSIFIERS)
    del other
    gc.collect()
    assert len(estimator._CLASSIFIERS) == n - 1


def test_float64_models_are_attacked_in_their_dtype(trained):
    model, test = trained
    x, y = test.x[:32].double(), test.y[:32]
    model.double()
    try:
        crafted = craft(_attack("art.FastGradientMethod", "linf", 0.1), model, x, y)
        clean, robust = _accuracy(model, x, y), _accuracy(model, crafted.x_adv, y)
    finally:
        model.float()
    x_adv = crafted.x_adv
    assert x_adv.dtype == torch.float64 and crafted.n_violations == 0
    assert ((x_adv - x).abs().amax(dim=(1, 2, 3)) <= 0.1 + TOLERANCE).all()
    assert robust < clean
    # where ART (in float32) changed nothing, the caller's float64 values are kept exactly
    unchanged = x_adv.float() == x.float()
    assert unchanged.any() and torch.equal(x_adv[unchanged], x[unchanged])


def test_art_attacks_print_no_progress_and_write_no_files(tmp_path, monkeypatch, capfd, trained):
    model, test = trained
    monkeypatch.chdir(tmp_path)
    x, y = test.x[:8], test.y[:8]
    for name in ("art.GeoDA", "art.UniversalPerturbation", "art.AutoAttack", "art.DeepFool"):
        if name in ART_ATTACKS:
            cls = ART_ATTACKS[name].cls
            for norm in cls.norms:
                eps = 0.3 if norm == "linf" else 2.0
                craft(cls(ThreatModel(norm, eps), **cls.example_params), model, x, y)
    out, err = capfd.readouterr()
    assert "it/s" not in out + err and "%|" not in out + err  # no tqdm bars
    assert list(tmp_path.iterdir()) == []  # GeoDA caches its DCT basis elsewhere


# --- attacks on a trained model -----------------------------------------------------------------


def test_pgd_lowers_the_accuracy_of_a_trained_model(trained):
    model, test = trained
    clean = _accuracy(model, test.x, test.y)
    attack = _attack("art.ProjectedGradientDescent", "linf", 0.2, max_iter=10)
    crafted = craft(attack, model, test.x, test.y)
    assert crafted.n_violations == 0
    assert clean > 0.85 and _accuracy(model, crafted.x_adv, test.y) < clean - 0.5


@pytest.mark.slow
def test_a_minimisation_attack_runs_once_and_is_monotone_in_eps(tmp_path, monkeypatch):
    from art.attacks.evasion import DeepFool

    calls = []
    generate = DeepFool.generate

    def counting(self, *args, **kwargs):
        calls.append(1)
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(DeepFool, "generate", counting)
    eps = [0.1, 0.3, 0.6, 1.2]
    config = tiny_config(
        tmp_path,
        attacks=[{"name": "art.DeepFool", "norm": "l2", "eps": eps, "max_iter": 20}],
        evaluation={"n_examples": 80, "batch_size": 1000},
    )
    df = robench.run(config, quiet=True)
    rows = df[df["kind"] == "attack"].sort_values("eps")
    # one batch, one run of the attack for every ε: on the clean-correct examples, then (a
    # part of its own, robench.scoring) on the clean-misclassified ones
    clean = df[df["kind"] == "clean"]["accuracy"].item()
    assert len(calls) == 1 + (clean < 1)
    assert list(rows["eps"]) == eps and (rows["status"] == "ok").all()
    assert (rows["n_violations"] == 0).all()
    acc = list(rows["accuracy"])
    assert acc == sorted(acc, reverse=True), "robust accuracy must not grow with ε"
    assert acc[-1] < df[df["kind"] == "clean"]["accuracy"].item() - 0.3


# --- preprocessing defenses ---------------------------------------------------------------------


def _wrapped(name: str, info, **params) -> nn.Module:
    defense = REGISTRY.get("defense", name).cls(**params)
    return defense.wrap(_small_cnn(info), info.bounds).eval()


def _input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(F.cross_entropy(model(x), y), x)[0]


@pytest.mark.parametrize("name", ["art.JpegCompression", "art.FeatureSqueezing"])
def test_piecewise_constant_defenses_have_zero_true_gradient_and_a_bpda_one(name, digits):
    info, _, test = digits
    x, y = test.x[:16], test.y[:16]
    true = _wrapped(name, info)
    assert torch.count_nonzero(_input_gradient(true, x, y)) == 0
    bpda = _wrapped(name, info, gradient="bpda")
    grad = _input_gradient(bpda, x, y)
    assert torch.count_nonzero(grad) > 0
    # ART's estimate is the straight-through identity: the model's gradient at preprocess(x)
    with torch.no_grad():
        squeezed = bpda.preprocess(x)
    torch.testing.assert_close(grad, _input_gradient(bpda.model, squeezed, y))
    with torch.no_grad():
        assert torch.equal(true(x), bpda(x))  # the same forward pass


def test_spatial_smoothing_true_gradient_is_autograd_through_arts_median(digits):
    from art.defences.preprocessor import SpatialSmoothing

    info, _, test = digits
    x, y = test.x[:16], test.y[:16]
    true = _wrapped("art.SpatialSmoothing", info)
    bpda = _wrapped("art.SpatialSmoothing", info, gradient="bpda")
    bpda.model.load_state_dict(true.model.state_dict())
    with torch.no_grad():
        assert torch.equal(true(x), bpda(x))
    grad = _input_gradient(true, x, y)
    assert torch.count_nonzero(grad) > 0
    assert not torch.allclose(grad, _input_gradient(bpda, x, y))
    g = torch.Generator().manual_seed(0)
    for window in (2, 3, 4, 5):
        z = torch.rand(3, 2, 5, 7, generator=g)
        ref, _ = SpatialSmoothing(window_size=window, channels_first=True)(z.numpy())
        assert torch.equal(median_filter(z, window), torch.from_numpy(ref))


@pytest.mark.parametrize(
    "name", ["art.JpegCompression", "art.FeatureSqueezing", "art.SpatialSmoothing"]
)
@pytest.mark.parametrize("gradient", ["true", "bpda"])
def test_wrapped_defense_works_on_any_batch_dtype_and_mode(name, gradient, digits):
    info, _, test = digits
    model = _wrapped(name, info, gradient=gradient)
    x = test.x[:7]
    with torch.no_grad():
        assert torch.equal(model(x), model(x))  # deterministic in eval
        assert torch.allclose(model(x[:1]), model(x)[:1], atol=1e-5)
        model.double()
        out = model(x.double())
        assert out.dtype == torch.float64 and out.shape == (7, info.num_classes)
        model.float().train()
        assert model(x).shape == (7, info.num_classes)
    assert model.model.training  # the wrapped model follows the wrapper's mode


@pytest.mark.slow
def test_end_to_end_run_with_an_art_defense_and_attacks(tmp_path):
    config = tiny_config(
        tmp_path,
        defenses=[
            {"name": "art.JpegCompression", "label": "jpeg"},
            {"name": "art.JpegCompression", "label": "jpeg-bpda", "gradient": "bpda"},
        ],
        attacks=[
            {"name": "art.ProjectedGradientDescent", "eps": [0.1, 0.2], "max_iter": 5},
            {"name": "art.DeepFool", "norm": "l2", "eps": [0.5, 1.0], "max_iter": 10},
        ],
        evaluation={"n_examples": 60, "batch_size": 64},
    )
    df = robench.run(config, quiet=True)
    assert (df["status"] == "ok").all(), df[df["status"] != "ok"]["error"].tolist()
    assert (df["n_violations"].fillna(0) == 0).all()
    assert set(df["attack_name"].dropna()) >= {"art.ProjectedGradientDescent", "art.DeepFool"}

    def acc(defense: str, attack: str, eps: float) -> float:
        row = df[(df["defense"] == defense) & (df["attack"] == attack) & (df["eps"] == eps)]
        return row["accuracy"].item()

    clean = df[df["kind"] == "clean"].set_index("defense")["clean_accuracy"]
    assert (clean > 0.7).all()
    # zero true gradient: gradient attacks cannot move (gradient masking, for checks to catch)
    assert acc("jpeg", "art.ProjectedGradientDescent", 0.2) == clean["jpeg"]
    # the BPDA variant of the same defense is broken by the same attack
    assert acc("jpeg-bpda", "art.ProjectedGradientDescent", 0.2) < clean["jpeg-bpda"] - 0.3
