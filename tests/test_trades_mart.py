"""TRADES and MART: their losses are the released code's, their inner attacks maximise what they
should under the attack contract, they make a model more robust than plain training of the same
budget, and they run through the config layer and a benchmark like any defense."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robench
from robench.attack import craft
from robench.config import load_benchmark
from robench.defense import TrainContext
from robench.defenses.mart import cross_entropy_of, mart_loss
from robench.defenses.trades import EpsRamp, ascend, kl_to, trades_loss
from robench.errors import ConfigError
from robench.registry import build_registry
from robench.reproducibility import eval_subset
from robench.threat import ThreatModel
from robench.training import TrainingConfig
from tests.helpers import tiny_config
from tests.test_training_resume import assert_bitwise_equal, interrupted_then_resumed
from tests.test_training_resume import train as train_resumably

pytestmark = pytest.mark.usefixtures("one_thread")

REGISTRY = build_registry(entry_points=False)
#: the training and scoring budget of the robustness comparison (digits are 8×8 in [0, 1])
EPS = 0.15


@pytest.fixture(scope="module")
def digits():
    ds = REGISTRY.get("dataset", "digits").cls()
    info = ds.info(None)
    return info, eval_subset(ds.load("train", None), 400, seed=0), ds.load("test", None)


def make_ctx(info, **training) -> TrainContext:
    def make_attack(spec):
        entry = REGISTRY.get("attack", spec.name)
        return entry.cls(ThreatModel(spec.norm, spec.eps, info.bounds), **spec.params)

    cfg = TrainingConfig(**{"epochs": 5, "lr": 3e-3, **training})
    return TrainContext(cfg, torch.device("cpu"), 0, info, make_attack)


def fit(name: str, info, train, model: nn.Module | None = None, **params) -> nn.Module:
    if model is None:
        torch.manual_seed(0)
        model = REGISTRY.get("model", "small-cnn").cls().build(info)
    return REGISTRY.get("defense", name).cls(**params).fit(model, train, make_ctx(info))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


def pgd_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = EPS) -> float:
    pgd = REGISTRY.get("attack", "pgd").cls(ThreatModel("linf", eps), steps=10)
    torch.manual_seed(1)
    return accuracy(model, craft(pgd, model, x, y).x_adv, y)


@pytest.fixture(scope="module")
def trained(digits):
    """Four models of one budget (5 epochs on 400 digits, inner attacks of 3 steps at ε 0.15)."""
    info, train, _ = digits
    return {
        "standard": fit("standard", info, train),
        "trades": fit("trades", info, train, eps=EPS, steps=3),
        "trades-beta-0": fit("trades", info, train, eps=EPS, steps=3, beta=0.0),
        "mart": fit("mart", info, train, eps=EPS, steps=3),
    }


# --- robustness -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["trades", "mart"])
def test_they_learn_and_are_more_robust_than_standard_training(trained, digits, name):
    _, _, test = digits
    assert accuracy(trained[name], test.x, test.y) > 0.75  # chance is 0.1
    standard = pgd_accuracy(trained["standard"], test.x, test.y)
    robust = pgd_accuracy(trained[name], test.x, test.y)
    # measured: standard ≈ 0.16, TRADES ≈ 0.53, MART ≈ 0.52 under PGD-10 at ε 0.15
    assert robust > standard + 0.15, (name, robust, standard)


def test_trades_without_its_kl_term_is_standard_training(trained, digits):
    _, _, test = digits
    plain, standard = trained["trades-beta-0"], trained["standard"]
    for a, b in zip(plain.parameters(), standard.parameters(), strict=True):
        assert torch.equal(a, b)
    assert pgd_accuracy(trained["trades"], test.x, test.y) > pgd_accuracy(plain, test.x, test.y)


# --- the losses -------------------------------------------------------------------------------


def _released_trades(logits, logits_adv, y, beta):
    """The released trades.py's loss (criterion_kl = KLDivLoss(size_average=False))."""
    kl = nn.KLDivLoss(reduction="sum")
    robust = kl(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1)) / len(y)
    return F.cross_entropy(logits, y) + beta * robust


def _released_mart(logits, logits_adv, y, beta):
    """The released mart.py's loss."""
    adv_probs = F.softmax(logits_adv, dim=1)
    tmp1 = torch.argsort(adv_probs, dim=1)[:, -2:]
    new_y = torch.where(tmp1[:, -1] == y, tmp1[:, -2], tmp1[:, -1])
    loss_adv = F.cross_entropy(logits_adv, y) + F.nll_loss(
        torch.log(1.0001 - adv_probs + 1e-12), new_y
    )
    nat_probs = F.softmax(logits, dim=1)
    true_probs = torch.gather(nat_probs, 1, y.unsqueeze(1)).squeeze()
    kl = nn.KLDivLoss(reduction="none")(torch.log(adv_probs + 1e-12), nat_probs).sum(dim=1)
    return loss_adv + beta * (kl * (1.0000001 - true_probs)).sum() / len(y)


@pytest.mark.parametrize(
    ("ours", "released", "beta"),
    [(trades_loss, _released_trades, 6.0), (mart_loss, _released_mart, 5.0)],
    ids=["trades", "mart"],
)
def test_the_losses_are_the_released_code_s_values_and_gradients(ours, released, beta):
    gen = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(32, 10, generator=gen)).requires_grad_(True)
    logits_adv = (logits.detach() + torch.randn(32, 10, generator=gen)).requires_grad_(True)
    y = torch.randint(0, 10, (32,), generator=gen)
    y[:8] = logits.detach()[:8].argmax(dim=1)  # some correct, some misclassified
    a = ours(logits, logits_adv, y, beta)
    b = released(logits, logits_adv, y, beta)
    torch.testing.assert_close(a, b)
    grads_a = torch.autograd.grad(a, [logits, logits_adv])
    grads_b = torch.autograd.grad(b, [logits, logits_adv])
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb)
    # the KL's direction matters: KL(adversarial ‖ clean) gives another value
    if ours is trades_loss:
        swapped = released(logits_adv, logits, y, beta) - F.cross_entropy(logits_adv, y)
        assert not torch.isclose(a - F.cross_entropy(logits, y), swapped)


# --- the inner attacks ------------------------------------------------------------------------


def _released_inner_attack(model, x, y, loss: str, eps: float, step: float, steps: int):
    """The released trades.py / mart.py L∞ inner loop (model in eval mode)."""
    x_adv = x.detach() + 0.001 * torch.randn(x.shape)
    for _ in range(steps):
        x_adv.requires_grad_()
        with torch.enable_grad():
            if loss == "kl":
                kl = nn.KLDivLoss(reduction="sum")
                value = kl(F.log_softmax(model(x_adv), dim=1), F.softmax(model(x), dim=1))
            else:
                value = F.cross_entropy(model(x_adv), y)
        grad = torch.autograd.grad(value, [x_adv])[0]
        x_adv = x_adv.detach() + step * torch.sign(grad.detach())
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps)
        x_adv = torch.clamp(x_adv, 0.0, 1.0)
    return x_adv


@pytest.mark.parametrize("loss", ["kl", "ce"])
def test_the_linf_inner_attacks_are_the_released_code_s(trained, digits, loss):
    _, _, test = digits
    model, x, y = trained["standard"], test.x[:128], test.y[:128]
    make_loss = kl_to if loss == "kl" else cross_entropy_of(y)
    torch.manual_seed(3)
    ours = ascend(model, x, make_loss, ThreatModel("linf", 0.1), 10, 0.007)
    torch.manual_seed(3)
    released = _released_inner_attack(model.eval(), x, y, loss, 0.1, 0.007, 10)
    assert torch.equal(ours, released)
    assert (ours - x).abs().max() <= 0.1 + 1e-6 and ours.min() >= 0 and ours.max() <= 1


def _kl(model, x, x_adv) -> torch.Tensor:
    with torch.no_grad():
        p = F.softmax(model(x), dim=1)
        return F.kl_div(F.log_softmax(model(x_adv), dim=1), p, reduction="none").sum(dim=1)


def _ce(model, x_adv, y) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x_adv), y, reduction="none")


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 0.8)])
def test_the_inner_attacks_raise_their_loss_inside_the_budget(trained, digits, norm, eps):
    _, _, test = digits
    model, x, y = trained["standard"], test.x[:128], test.y[:128]
    threat = ThreatModel(norm, eps)
    torch.manual_seed(0)
    noise = threat.project(x + eps * torch.randn_like(x).sign(), x)  # a random point of the ball
    alpha = 2.5 * eps / 10
    x_kl = ascend(model, x, kl_to, threat, 10, alpha)
    x_ce = ascend(model, x, cross_entropy_of(y), threat, 10, alpha)
    for x_adv in (x_kl, x_ce):
        assert (threat.excess(x_adv, x) <= 1e-6).all()  # in the ε-ball and in [0, 1]
    few_steps = ascend(model, x, kl_to, threat, 2, alpha)
    assert _kl(model, x, x_kl).mean() > 2 * _kl(model, x, few_steps).mean()
    assert _kl(model, x, x_kl).mean() > 5 * _kl(model, x, noise).mean()
    assert _ce(model, x_ce, y).mean() > 2 * _ce(model, noise, y).mean()
    assert torch.equal(ascend(model, x, kl_to, ThreatModel(norm, 0.0), 10, alpha), x)


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )


def test_crafting_changes_no_weight_buffer_mode_or_gradient(digits):
    _, train, _ = digits
    model = _bn_model().train()
    with torch.no_grad():
        model(train.x[:64])  # batch-norm statistics away from their initial values
    before = {k: v.clone() for k, v in model.state_dict().items()}
    y = train.y[:64]
    for make_loss in (kl_to, cross_entropy_of(y)):
        ascend(model, train.x[:64], make_loss, ThreatModel("linf", 0.2), 5, 0.05)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)  # running stats included
        assert all(m.training for m in model.modules())
        assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize(("name", "steps"), [("trades", 3), ("mart", 2)])
def test_they_craft_in_eval_mode_and_train_on_clean_and_adversarial_batches(digits, name, steps):
    info, train, _ = digits
    model = _bn_model()
    modes: list[bool] = []
    model[1].register_forward_pre_hook(lambda module, args: modes.append(module.training))
    ctx = make_ctx(info, epochs=1, batch_size=100)  # 4 batches
    trained = REGISTRY.get("defense", name).cls(eps=0.1, steps=steps).fit(model, train, ctx)
    assert modes.count(True) == 2 * 4  # the clean and the adversarial batch, in train mode
    assert modes.count(False) >= steps * 4  # every inner step in eval mode
    assert trained is model and not model.training
    assert int(model[1].num_batches_tracked) == 2 * 4  # only the training passes count


# --- ε warm-up and resume ---------------------------------------------------------------------


def test_eps_warmup_ramps_the_budget_and_a_relative_step_follows_it(digits):
    info, train, _ = digits
    ctx = make_ctx(info, epochs=2, batch_size=100)  # 400 examples: 8 batches, 4 of them ramping
    ramp = EpsRamp(0.2, 0.5, ctx, train)
    assert [next(ramp) for _ in range(8)] == pytest.approx([0.05, 0.1, 0.15, 0.2] + [0.2] * 4)
    params = REGISTRY.get("defense", "trades").cls.Params
    assert params(eps=0.2, steps=10).alpha(0.1) == pytest.approx(0.025)  # 2.5·ε/steps
    assert params(eps=0.2, rel_step=0.5).alpha(0.1) == pytest.approx(0.05)
    assert params(eps=0.2, step_size="2/255").alpha(0.1) == pytest.approx(2 / 255)


def test_an_interrupted_trades_training_with_warmup_resumes_bitwise(tmp_path, digits):
    info, train, _ = digits
    data = eval_subset(train, 192, seed=0)
    params = {"eps": 0.1, "steps": 2, "eps_warmup": 0.5}
    whole, _ = train_resumably(info, data, "trades", params)
    model, *_ = interrupted_then_resumed(
        info, data, tmp_path / "x.resume.pt", 1, defense="trades", params=params
    )
    assert_bitwise_equal(model, whole)


# --- configuration and the runner ------------------------------------------------------------


@pytest.mark.parametrize(
    ("defense", "expected"),
    [
        ({"name": "trades", "eps": 0.1, "beta": -1}, "defenses[0].beta: "),
        ({"name": "mart", "eps": 0.1, "beta": -0.5}, "defenses[0].beta: "),
        ({"name": "trades", "eps": 0.1, "steps": 0}, "defenses[0].steps: "),
        ({"name": "mart", "eps": 0.1, "steps": 0}, "defenses[0].steps: "),
        ({"name": "trades", "eps": 0.1, "norm": "l3"}, "defenses[0].norm: "),
        ({"name": "mart", "eps": 0.1, "norm": "l1"}, "defenses[0].norm: "),
        ({"name": "trades"}, "defenses[0].eps: required"),
        ({"name": "mart", "eps": "8/0"}, "defenses[0].eps: "),
        ({"name": "trades", "eps": 0.1, "eps_warmup": 1.0}, "defenses[0].eps_warmup: "),
        (
            {"name": "trades", "eps": 0.1, "step_size": 0.01, "rel_step": 0.2},
            "give either step_size or rel_step",
        ),
        ({"name": "mart", "eps": 0.1, "betta": 5}, "defenses[0].betta: "),
    ],
)
def test_bad_parameters_are_one_line_config_errors(tmp_path, defense, expected):
    with pytest.raises(ConfigError) as info:
        load_benchmark(
            tiny_config(tmp_path, defenses=[defense]), registry=REGISTRY, check_data=False
        )
    message = str(info.value)
    assert expected in message and "\n" not in message, message


def test_fractions_and_norm_aliases_are_accepted(tmp_path):
    defenses = [
        {"name": "trades", "eps": "8/255", "step_size": "2/255", "norm": "Linf"},
        {"name": "mart", "eps": 0.5, "norm": "L2", "beta": 6},
    ]
    config = tiny_config(tmp_path, defenses=defenses)
    bench = load_benchmark(config, registry=REGISTRY, check_data=False)
    trades, mart = (d.params for d in bench.defenses)
    assert (trades.eps, trades.step_size, trades.norm) == (8 / 255, 2 / 255, "linf")
    assert (trades.beta, mart.beta, mart.norm, mart.steps) == (6.0, 6.0, "l2", 10)


def test_a_benchmark_with_trades_and_mart_runs_end_to_end(tmp_path):
    config = tiny_config(
        tmp_path,
        training={"epochs": 2, "lr": 3e-3},
        evaluation={"n_examples": 60, "batch_size": 60, "sanity": False},
        defenses=[
            {"name": "trades", "eps": 0.1, "steps": 2},
            {"name": "mart", "label": "mart-warm", "eps": 0.1, "steps": 2, "eps_warmup": 0.5},
        ],
        attacks=[{"name": "pgd", "eps": [0.1], "steps": 3}],
    )
    df = robench.run(config, registry=REGISTRY, quiet=True)
    assert (df["status"] == "ok").all()
    assert set(df["defense"]) == {"trades", "mart-warm"}
    names = df.drop_duplicates("defense").set_index("defense")["defense_name"]
    assert names["trades"] == "trades" and names["mart-warm"] == "mart"
    clean = df[df["kind"] == "clean"].set_index("defense")["accuracy"]
    assert (clean > 0.3).all()  # two epochs on the digits: well above chance
