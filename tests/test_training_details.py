"""Training details a CIFAR user checks: learning-rate schedules from torch's schedulers (the old
four give the learning rates they always gave; one-cycle and multi-step as the papers step
them), no weight decay on normalisation layers and biases, the best epoch on held-out examples
(Rice et al. 2020) through resume, one-line errors, and unchanged training-cell keys."""

from __future__ import annotations

import copy
import io
import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import lr_scheduler

import robench
from robench.config import load_benchmark
from robench.dataset import Data
from robench.errors import ConfigError
from robench.registry import build_registry
from robench.reproducibility import eval_subset, seed_everything
from robench.resume import EpochCheckpoints
from robench.store import training_cell
from robench.training import (
    TrainingConfig,
    make_optimizer,
    make_scheduler,
    param_groups,
    train_loop,
)
from tests.conftest import REPO
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

REGISTRY = build_registry(entry_points=False)
CPU = torch.device("cpu")


def legacy_factor(cfg: TrainingConfig, step: int, total: int) -> float:
    """The learning-rate multiplier of the hand-written schedule this module replaced, copied
    as it was (robench.training.lr_factor at 7676d4d): the reference the schedules must keep."""
    t = step / max(total, 1)
    warmup = cfg.warmup
    if cfg.schedule == "cyclic" and cfg.warmup == 0.0:
        warmup = 0.4
    if warmup > 0 and t < warmup:
        return (step + 1) / max(warmup * total, 1)
    rest = (t - warmup) / max(1 - warmup, 1e-12)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * rest))
    if cfg.schedule == "cyclic":
        return max(0.0, 1 - rest)
    return cfg.gamma ** sum(t >= m for m in cfg.milestones)


def lrs(cfg: TrainingConfig, per_epoch: int) -> tuple[list[float], lr_scheduler.LRScheduler]:
    """The learning rate of every optimizer step, as train_loop steps the scheduler."""
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr)
    sched = make_scheduler(opt, cfg, per_epoch)
    out = []
    for _ in range(per_epoch * cfg.epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out, sched


# --- learning-rate schedules -----------------------------------------------------------------

#: (settings, steps per epoch, whether the warm-up ends on a step: built from torch's standard
#: schedulers, else the old closed form in a LambdaLR); cifar.toml's two schedules among them
LEGACY = [
    ({"schedule": "constant"}, 7, True),
    ({"schedule": "constant", "warmup": 0.1}, 10, True),
    ({"schedule": "cosine", "lr": 0.1}, 391, True),  # cifar.toml's PGD-AT, 2 of its 30 epochs
    ({"schedule": "cosine", "warmup": 0.2}, 5, True),
    ({"schedule": "cosine", "warmup": 0.05}, 13, False),  # w·T = 3.25: between two steps
    ({"schedule": "cyclic", "lr": 0.2, "epochs": 15}, 391, True),  # cifar.toml's Fast AT
    ({"schedule": "cyclic", "warmup": 0.3}, 9, False),
    ({"schedule": "cyclic", "warmup": 0.01}, 9, True),  # a one-step ramp at factor 1
    ({"schedule": "step"}, 11, True),
    ({"schedule": "step", "milestones": (0.1, 0.33, 0.33, 0.9), "gamma": 0.5}, 6, True),
    ({"schedule": "step", "warmup": 0.25, "milestones": (0.1, 0.6)}, 4, True),  # one in it
    ({"schedule": "step", "warmup": 0.3}, 3, False),  # w·T = 1.8
]


@pytest.mark.parametrize(("settings", "per_epoch", "standard"), LEGACY)
def test_the_old_schedules_keep_their_learning_rates(settings, per_epoch, standard):
    cfg = TrainingConfig(**{"epochs": 2, "lr": 0.05, **settings})
    got, sched = lrs(cfg, per_epoch)
    total = per_epoch * cfg.epochs
    want = [cfg.lr * legacy_factor(cfg, s, total) for s in range(total)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert isinstance(sched, lr_scheduler.LambdaLR) != standard


def test_one_cycle_is_torchs_one_cycle_per_batch():
    cfg = TrainingConfig(schedule="one-cycle", epochs=5, lr=0.2)  # torch's defaults
    got, sched = lrs(cfg, 20)
    assert isinstance(sched, lr_scheduler.OneCycleLR)
    peak = max(range(100), key=got.__getitem__)
    assert peak == 29 and got[peak] == pytest.approx(0.2)  # pct_start 0.3 of 100 steps
    assert got[0] == pytest.approx(0.2 / 25)
    assert got[-1] == pytest.approx(0.2 / 25 / 1e4, rel=1e-3)
    assert all(a < b for a, b in itertools.pairwise(got[: peak + 1]))
    assert all(a > b for a, b in itertools.pairwise(got[peak:]))
    # Fast AT's CIFAR-10 triangle: linear from ~0 up to lr at half of training and back down
    fast = TrainingConfig(
        schedule="one-cycle", epochs=4, lr=0.2, warmup=0.5, one_cycle_anneal="linear",
        div_factor=1e6, final_div_factor=1.0,
    )  # fmt: skip
    got, _ = lrs(fast, 10)
    assert max(got) == pytest.approx(0.2) and got.index(max(got)) == 19
    steps = [b - a for a, b in itertools.pairwise(got)]
    assert steps[:19] == pytest.approx([steps[0]] * 19)  # a straight line up
    assert steps[19:] == pytest.approx([steps[-1]] * 20)  # and down
    assert got[0] < 1e-6 and got[-1] < 1e-6
    # a ramp of exactly one step (torch would divide 0 by 0): none, it starts at the peak
    got, _ = lrs(TrainingConfig(schedule="one-cycle", warmup=0.1, epochs=1, lr=0.2), 10)
    assert got[0] == pytest.approx(0.2) and got[1] < got[0]


def test_multi_step_drops_at_the_papers_epochs():
    # PGD-AT on CIFAR-10 (lr 0.1, × 0.1 after epochs 100 and 150 of 200), scaled down 10×
    cfg = TrainingConfig(schedule="multi-step", epochs=20, lr=0.1, milestone_epochs=(10, 15))
    got, sched = lrs(cfg, 3)
    assert isinstance(sched, lr_scheduler.MultiStepLR)
    per_epoch = [got[3 * e : 3 * e + 3] for e in range(20)]
    assert all(len(set(e)) == 1 for e in per_epoch)  # it changes between epochs only
    want = [0.1] * 10 + [0.01] * 5 + [0.001] * 5
    assert [e[0] for e in per_epoch] == pytest.approx(want)
    # a milestone past the end (a smoke-sized run of a paper's schedule) never applies
    short, _ = lrs(cfg.model_copy(update={"epochs": 2}), 3)
    assert short == pytest.approx([0.1] * 6)
    # with a warm-up, the ramp first, then the epochs' drops
    warm = TrainingConfig(
        schedule="multi-step", epochs=4, lr=0.1, milestone_epochs=(3,), warmup=0.25, gamma=0.5
    )
    got, _ = lrs(warm, 4)
    assert got == pytest.approx([0.025, 0.05, 0.075, 0.1] + [0.1] * 8 + [0.05] * 4)


@pytest.mark.parametrize(
    "settings",
    [
        {"schedule": "one-cycle"},
        {"schedule": "multi-step", "milestone_epochs": (2, 3), "warmup": 0.2},
        {"schedule": "cosine", "warmup": 0.2},
        {"schedule": "cyclic"},
    ],
)
def test_a_scheduler_saved_mid_way_resumes_its_learning_rates(settings):
    """What a resume file holds (torch.load with weights_only) restores every scheduler."""
    cfg = TrainingConfig(epochs=4, lr=0.1, **settings)
    whole, _ = lrs(cfg, 5)
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=cfg.lr, momentum=0.9)
    sched = make_scheduler(opt, cfg, 5)
    for _ in range(10):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt = torch.optim.SGD([p], lr=cfg.lr, momentum=0.9)
    sched = make_scheduler(opt, cfg, 5)
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    rest = []
    for _ in range(10):
        rest.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert rest == whole[10:]


# --- weight decay ----------------------------------------------------------------------------


def net() -> nn.Module:
    """Convolution, batch norm, layer norm, linear; every parameter away from 0 (a zero bias
    would look undecayed either way)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.LayerNorm(256),
        nn.Linear(256, 10),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(0.5, 1.5)
    return model


DECAYED = {
    (): {"0.weight", "0.bias", "1.weight", "1.bias", "4.weight", "4.bias", "5.weight", "5.bias"},
    ("norm",): {"0.weight", "0.bias", "5.weight", "5.bias"},
    ("bias",): {"0.weight", "1.weight", "4.weight", "5.weight"},
    ("norm", "bias"): {"0.weight", "5.weight"},
}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "adam"])
@pytest.mark.parametrize("no_decay", list(DECAYED))
def test_no_decay_leaves_norm_layers_and_biases_alone(optimizer, no_decay):
    """One step with zero gradients: only weight decay moves a parameter."""
    cfg = TrainingConfig(
        optimizer=optimizer, lr=0.1, momentum=0.0, weight_decay=0.5, no_decay=no_decay
    )
    model = net()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = make_optimizer(param_groups(model, cfg), cfg)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    moved = {k for k, p in model.named_parameters() if not torch.equal(p, before[k])}
    assert moved == DECAYED[no_decay]
    if optimizer != "adam":  # SGD and AdamW shrink by lr·wd; Adam's coupled decay is normalised
        for k in moved:
            want = before[k] * (1 - 0.05)
            assert torch.allclose(dict(model.named_parameters())[k], want, atol=1e-7)


def test_without_no_decay_the_optimizer_keeps_one_group():
    """The default keeps today's optimizer (and its state's layout in resume files)."""
    model = net()
    opt = make_optimizer(param_groups(model, TrainingConfig(weight_decay=0.1)), TrainingConfig())
    assert len(opt.param_groups) == 1
    groups = param_groups(model, TrainingConfig(no_decay=["bias", "norm"], weight_decay=0.1))
    assert [g.get("weight_decay") for g in groups] == [None, 0.0]


def test_train_loop_applies_no_decay():
    """Training with a zero loss: weight decay alone moves the weights, never the exempt."""
    model = net()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    x = torch.rand(40, 1, 8, 8)
    data = Data(x, torch.arange(40) % 10)
    cfg = TrainingConfig(
        epochs=1, batch_size=20, optimizer="sgd", lr=0.1, momentum=0.0, weight_decay=0.5,
        no_decay=["norm"],
    )  # fmt: skip
    train_loop(model, data, cfg, lambda m, xb, yb: 0 * m(xb).sum(), device=CPU, seed=0)
    for k, p in model.named_parameters():
        if k.startswith(("1.", "4.")):
            assert torch.equal(p, before[k]), k
        else:
            assert torch.allclose(p, before[k] * 0.95**2, atol=1e-7), k


# --- the best epoch on held-out examples -----------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    ds = REGISTRY.get("dataset", "digits").cls()
    info = ds.info(None)
    return info, eval_subset(ds.load("train", None), 360, seed=0)


class Sabotage:
    """A loss that descends for ``good`` epochs of batches, then ascends: later epochs are
    worse. Its batch counter is kept in the per-epoch checkpoints (resume-safe)."""

    def __init__(self, batches_per_epoch: int, good: int = 2) -> None:
        self.limit = batches_per_epoch * good
        self.calls = 0

    def __call__(self, model, x, y):
        self.calls += 1
        loss = F.cross_entropy(model(x), y)
        return loss if self.calls <= self.limit else -loss

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


BEST = {"held_out": 100, "eps": 0.05, "steps": 3}
EPOCHS = 5
BATCHES = 260 // 52  # 360 examples, 100 held out, batch size 52


def train_best(info, data, checkpoints=None, stop_after=None, **best):
    """Train a small CNN with the sabotaged loss and ``best_checkpoint``: the model, each
    epoch's weights (as progress saw them) and the best-epoch summary."""
    cfg = TrainingConfig(epochs=EPOCHS, batch_size=52, lr=3e-3, best_checkpoint={**BEST, **best})
    seed_everything(0)
    model = REGISTRY.get("model", "small-cnn").cls().build(info)
    loss = Sabotage(BATCHES)
    if checkpoints is not None:
        checkpoints.track("sabotage", loss)
    seen: dict[int, dict[str, torch.Tensor]] = {}
    summary: dict = {}

    def progress(epoch, epochs, value):
        if stop_after is not None and epoch > stop_after:
            raise KeyboardInterrupt
        seen[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    progress.best_epoch = summary.update
    model = train_loop(
        model, data, cfg, loss, device=CPU, seed=0, progress=progress, checkpoints=checkpoints
    )
    return model, seen, summary


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_best_epochs_weights_are_returned(digits):
    info, data = digits
    model, seen, summary = train_best(info, data)
    best = summary["epoch"]
    robust = [h["robust"] for h in summary["history"]]
    assert summary["epochs_trained"] == len(robust) == EPOCHS and summary["held_out"] == 100
    assert 1 <= best <= 2 < EPOCHS  # the ascent ruins the later epochs
    assert robust[best - 1] == max(robust) == summary["robust_accuracy"] > robust[-1]
    assert all(r <= c for r, c in ((h["robust"], h["clean"]) for h in summary["history"]))
    assert same(model.state_dict(), seen[best])
    assert not same(model.state_dict(), seen[EPOCHS])
    assert not model.training


def test_patience_stops_training_after_epochs_without_a_better_one(digits):
    info, data = digits
    model, seen, summary = train_best(info, data, patience=2)
    best = summary["epoch"]
    assert summary["epochs_trained"] == len(seen) == best + 2 < EPOCHS
    assert same(model.state_dict(), seen[best])


def test_a_resumed_training_still_returns_the_best_epoch(tmp_path, digits):
    info, data = digits
    whole, _, whole_summary = train_best(info, data)
    path, key = tmp_path / "x.resume.pt", "cd" * 32
    with pytest.raises(KeyboardInterrupt):  # killed after epoch 4 is checkpointed: best is past
        train_best(info, data, EpochCheckpoints(path, key), stop_after=4)
    notes: list[str] = []
    model, seen, summary = train_best(info, data, EpochCheckpoints(path, key, note=notes.append))
    assert notes == [f"resumed at epoch 4/{EPOCHS} from x.resume.pt"]
    assert list(seen) == [5]  # one epoch trained here; the best came from the file
    assert summary == whole_summary and summary["epoch"] < 4
    assert same(model.state_dict(), whole.state_dict())


def test_holding_out_every_example_is_a_one_line_error(digits):
    info, data = digits
    cfg = TrainingConfig(epochs=1, best_checkpoint={"held_out": 360, "eps": 0.1})
    model = REGISTRY.get("model", "small-cnn").cls().build(info)
    with pytest.raises(ValueError, match=r"^training\.best_checkpoint\.held_out: 360 held-out "):
        train_loop(model, data, cfg, lambda m, x, y: m(x).sum(), device=CPU, seed=0)


def test_the_model_sidecar_records_the_best_epoch(tmp_path):
    training = {"epochs": 3, "lr": 3e-3, "best_checkpoint": {"held_out": 100, "eps": 0.1}}
    config = tiny_config(
        tmp_path,
        training=training,
        evaluation={"n_examples": 30, "sanity": False},
        attacks=[{"name": "fgsm", "eps": [0.1]}],
    )
    robench.run(config, registry=REGISTRY, quiet=True)
    (sidecar,) = (tmp_path / "out" / "models").glob("*.json")
    record = json.loads(sidecar.read_text())
    best = record["best_epoch"]
    assert 1 <= best["epoch"] <= 3 and best["epochs_trained"] == 3 and len(best["history"]) == 3
    assert best["robust_accuracy"] == max(h["robust"] for h in best["history"])
    assert record["cell"]["training"]["best_checkpoint"]["held_out"] == 100


# --- configuration and keys ------------------------------------------------------------------

BASE = {
    "name": "t",
    "dataset": {"name": "digits"},
    "model": {"name": "small-cnn"},
    "training": {"epochs": 1},
    "defenses": [{"name": "standard"}],
    "attacks": [{"name": "fgsm", "eps": [0.1]}],
}

ERRORS = [
    ({"schedule": "multi-step"}, "training.milestone_epochs: schedule 'multi-step' needs"),
    (
        {"schedule": "multi-step", "milestone_epochs": [150, 100]},
        "training.milestone_epochs: must be strictly increasing",
    ),
    (
        {"schedule": "multi-step", "milestone_epochs": [0]},
        "training.milestone_epochs[0]: Input should be greater than or equal to 1",
    ),
    ({"milestone_epochs": [100]}, "training.milestone_epochs: applies to schedule 'multi-step'"),
    ({"schedule": "cosine", "div_factor": 10}, "training.div_factor: applies to schedule 'one-c"),
    ({"schedule": "one-cycle", "final_div_factor": 0.5}, "training.final_div_factor: Input"),
    ({"schedule": "one-cycle", "one_cycle_anneal": "cosine"}, "training.one_cycle_anneal: Inp"),
    ({"schedule": "onecycle"}, "training.schedule: Input should be 'constant', 'cosine', 'st"),
    ({"no_decay": ["bn"]}, "training.no_decay[0]: Input should be 'norm' or 'bias' (got 'bn')"),
    ({"best_checkpoint": {"held_out": 10}}, "training.best_checkpoint.eps: required but missing"),
    (
        {"best_checkpoint": {"eps": 0.1, "stepz": 3}},
        "training.best_checkpoint: no key 'stepz'; did you mean 'steps'?",
    ),
    ({"best_checkpoint": {"eps": "8/0"}}, "training.best_checkpoint.eps: a fraction's denomin"),
    ({"best_checkpoint": {"eps": 0.1, "held_out": 0}}, "training.best_checkpoint.held_out: Inp"),
    ({"best_checkpoint": {"eps": 0.1, "patience": True}}, "training.best_checkpoint.patience: "),
    ({"best_checkpoint": {"eps": 0.1, "norm": "l1"}}, "training.best_checkpoint.norm: Input s"),
    ({"best_checkpoint": 5}, "training.best_checkpoint: expected a table"),
]


@pytest.mark.parametrize(("settings", "expected"), ERRORS)
def test_bad_training_settings_are_one_line_errors(settings, expected):
    raw = copy.deepcopy(BASE)
    raw["training"].update(settings)
    with pytest.raises(ConfigError) as info:
        load_benchmark(raw, registry=REGISTRY, check_data=False)
    assert str(info.value).startswith(expected), str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("settings", "expected"), ERRORS)
def test_a_defense_s_own_bad_training_settings_name_the_defense(settings, expected):
    """The same settings in a defense's ``training`` table: the error names that table, also
    where a key of [training] is wrong only because of the defense's own settings."""
    raw = copy.deepcopy(BASE)
    raw["defenses"][0]["training"] = settings
    with pytest.raises(ConfigError) as info:
        load_benchmark(raw, registry=REGISTRY, check_data=False)
    assert str(info.value).startswith("defenses[0]." + expected), str(info.value)


def test_new_settings_load_from_a_benchmark():
    raw = copy.deepcopy(BASE)
    raw["training"].update(
        schedule="multi-step",
        milestone_epochs=[100, 150],
        no_decay="bias",
        best_checkpoint={"held_out": 500, "eps": "8/255", "step_size": "2/255"},
    )
    t = load_benchmark(raw, registry=REGISTRY, check_data=False).defenses[0].training
    assert t.milestone_epochs == (100, 150) and t.no_decay == ("bias",)
    assert t.best_checkpoint is not None and t.best_checkpoint.alpha == pytest.approx(2 / 255)


#: TrainingConfig().model_dump(mode="json") before the fields of this module existed: what
#: every stored model's training cell holds
OLD_DEFAULTS = {
    "epochs": 5,
    "batch_size": 64,
    "optimizer": "adam",
    "lr": 0.001,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 0.0,
    "schedule": "constant",
    "warmup": 0.0,
    "milestones": [0.5, 0.75],
    "gamma": 0.1,
    "augment": "none",
    "label_smoothing": 0.0,
    "train_examples": None,
    "precision": "fp32",
    "channels_last": False,
    "compile": False,
}


def test_existing_configurations_keep_their_training_cell_keys(data_root):
    assert TrainingConfig().key_record() == OLD_DEFAULTS
    # every shipped benchmark's defenses: their training records hold the old fields only
    registry = build_registry()  # with the plugins (ART, Foolbox) the benchmarks use
    for path in sorted((REPO / "benchmarks").glob("*.toml")):
        bench = load_benchmark(path, registry=registry, check_data=False)
        info = bench.dataset.instantiate().info(data_root)
        for d in bench.defenses:
            record = training_cell(bench, d, 0, info, registry, "data")["training"]
            assert set(record) == set(OLD_DEFAULTS), (path.name, d.label)
            dump = d.training.model_dump(mode="json")
            assert record == {k: v for k, v in dump.items() if k in OLD_DEFAULTS}
    # a new setting away from its default is part of the key; the same set spelt otherwise too
    record = TrainingConfig(no_decay=["norm", "bias"]).key_record()
    assert record == TrainingConfig(no_decay=["bias", "norm", "bias"]).key_record()
    assert record == {**OLD_DEFAULTS, "no_decay": ["bias", "norm"]}
