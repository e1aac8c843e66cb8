"""How fast is robench, on the same model, examples and budget as the libraries people use?

Five sections (``--sections``, all by default):

evaluation
    Robust accuracy of one model at L∞ ε (default 0.1) on the first ``--n`` test images
    (default 1000), PGD-20 (``--steps``) with step α = 2.5·ε/20 (``--alpha``) and a random
    start, six ways (Madry et al.'s MNIST protocol: ``--steps 40 --alpha 0.01``):

    - robench: ``robench.evaluation.evaluate`` with [FGSM, PGD-20] and ``cascade=True``,
      which scores with the runner's own engine (``robench.scoring.Scorer``): exactly what
      ``robench run`` runs with ``[evaluation] cascade = true`` (as ``cifar.toml`` sets) and
      ``batch_size = --batch``, the other settings at their defaults: per budget FGSM first on
      every example (the clean-misclassified ones too, for the robust ≤ clean check), then
      early-stopping PGD-20 on the examples FGSM left robust, each attack seeded with its cell
      seed (``robench.reproducibility.cell_seed``, from the round's seed);
    - robench bf16+cl: the same with ``precision="bf16"`` (gradients under bfloat16 autocast;
      early stops confirmed and examples scored in fp32) on a channels_last copy of the model
      and images: ``[evaluation] precision = "bf16"`` and ``channels_last = true``;
    - robench PGD: ``evaluate(model, x, y, [PGD-20])``, PGD alone with every setting at its
      default (what a user gets out of the box; the memory format robench's choice,
      ``robench.precision.channels_last_pays``);
    - robench PGD NCHW: the same with ``channels_last=False``, the layout as given (the
      default before robench chose the layout);
    - torchattacks: ``torchattacks.PGD(model, eps, alpha, steps=20, random_start=True)`` on
      every example, then the accuracy on the adversarial examples, as a torchattacks user would;
    - torchattacks bf16+cl: the same call inside ``torch.autocast(bfloat16)`` on the
      channels_last copy, scored in fp32: what a torchattacks user could wrap around it
      (torchattacks has no such option), to show how much of robench's lead is precision;
    - ART: ``ProjectedGradientDescent(max_iter=20, num_random_init=1)`` on a
      ``PyTorchClassifier``, every example;
    - Foolbox: ``LinfPGD(steps=20, abs_stepsize=α, random_start=True)``, every example.

    All in batches of ``--batch`` (500 on the CPU, 2000 on CUDA), the model in eval mode with its
    parameters frozen (``requires_grad`` False) for every tool alike (robench does that itself).
    robench counts an example robust when it is classified correctly clean and under every
    attack; the others report their accuracy on the adversarial examples, where a clean-
    misclassified example that PGD happens to turn correct would count (rarely: it can only
    raise their figure by a hair, never lower it).
    It is done for two models trained here with a fixed seed on the first ``--train-examples``
    (default 20000) training images of a seeded shuffle: an undefended one (``standard``, one
    epoch) and an adversarially trained one (``fast-at``: FGSM-RS at ``--train-eps``, two
    epochs). The first is where early stopping pays; on the second most examples stay robust
    and every PGD step is taken, so its speed-up is the honest floor. Speed-up = tool's time /
    robench's time (``ratio_or_speedup``: robench in fp32; ``speedup_vs_fast``: in bf16+cl;
    ``speedup_vs_pgd_only``: robench PGD). ``--tools`` times a subset of the rows.

    ``--dataset cifar10`` (the CIFAR-10 files or the mirror under the data root, ``--n`` test
    images drawn with a fixed seed) with ``--model cifar-cnn`` (default) or
    ``preact-resnet18`` gives the CIFAR protocol: ``--eps 0.0313725 --alpha 0.00784314
    --steps 20`` (PGD-20, step 2/255, ε = 8/255).
autoattack
    robench's ``autoattack`` against ``torchattacks.AutoAttack`` and ART's ``AutoAttack`` on
    the same two models and ε, on the first ``--aa-n`` images (``speed_autoattack.py`` says
    exactly what each tool runs); target ≥ 3× faster than torchattacks at ≤ its robust accuracy.
adapter
    robench's ``art.ProjectedGradientDescent`` and ``foolbox.LinfPGD`` adapters (through
    ``robench.attack.craft``) against the same library attack called directly, on the
    undefended model and the same examples in one batch: PGD-20 without random start, as in
    ``benchmarks/adapter_overhead.py``, whose functions this reuses. Overhead = adapter's time /
    direct time − 1.
training
    One epoch (batch 128, Adam) of ``standard``, ``fast-at`` (FGSM-RS) and ``pgd-at`` (PGD-10)
    training of a fresh model on the same ``--train-examples`` images, in fp32 and in bf16 +
    channels_last (``[training] precision = "bf16"``, ``channels_last = true``): images per
    second and the epoch time as a multiple of standard training's in the same setting.
contract
    The cost of the attack contract, which checks the model by value on every attack call
    (``robench.attack.craft``: a copy of the weights and buffers before, a comparison and the
    structure check after). On the benchmark's model (freshly built: the cost does not depend on
    the weights) with a batch of ``--batch`` test images: the check alone
    (``robench.attack.attack_mode`` around nothing), PGD-20 (no early stop, every step taken)
    run directly under eval mode with frozen parameters, and the same attack through ``craft``;
    overhead = craft's time / the direct run's − 1, and the check alone as a share of the direct
    run. Then on PreAct ResNet-18 (11.2M parameters; random 3×32×32 images in batches of
    ``--contract-batch``, 32 on the CPU, 512 on CUDA): the check alone against one
    forward-backward pass, the unit of an attack's cost, and as a share of a PGD-20 call
    (20 of them). It trains nothing: ``--sections contract`` takes a minute on a CPU.

Every time is the median of ``--repeats`` runs (default 5), the tools interleaved so that drift
in the machine's load hits them alike, after one warm-up run of each outside the timings (on
CUDA, synchronised before and after each). Time on an otherwise idle machine: on a busy CPU,
torch's worker threads wait on each other and small runs can slow down a hundredfold. The
robust accuracies are the mean over the timed runs. The targets (``target``/``target_met`` columns):

- evaluation: ≥ 3× faster than torchattacks, and not slower than ART or Foolbox, at a robust
  accuracy no higher than theirs (robench's attacks must be at least as strong), robench in
  either setting against the library as its users call it (fp32). Each run draws its own
  random starts (from the same seed for every tool of a round; robench reseeds each attack
  with a cell seed derived from it, and draws them only for the examples FGSM left robust),
  so robust accuracies vary from run to run
  (``robust_accuracy_sd``, in points): the comparison is of means, without tolerance;
- adapter: within 10 % of the library called directly;
- training: an FGSM-RS epoch ≤ 2.5× a standard one, a PGD-10 epoch ≤ 8×, in each setting;
- contract: the check costs at most 5 % of a PGD-20 call.

bfloat16 is fast on GPUs and on CPUs with native support (AVX-512 BF16, AMX); elsewhere it is
emulated, and its rows show that.

Prints a table and writes ``results/speed.csv`` (``-o``) with the device and the versions of
robench, torch, torchattacks, ART and Foolbox. MNIST is read from the data root when it is
there, else scikit-learn's bundled digits are used (with ``small-cnn`` instead of
``mnist-cnn``). torchattacks is a development extra (``pip install -e ".[dev]"``); without it
its rows are skipped with a note. ::

    python benchmarks/speed.py --data-root ../shared/data [--device cuda] [--checkpoint-dir ckpt]
    python benchmarks/speed.py --n 64 --repeats 1 --train-examples 256 -o /tmp/speed.csv  # smoke
    python benchmarks/speed.py --sections contract -o /tmp/contract.csv  # the contract alone
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from robench import provenance
from robench.attack import attack_mode, craft
from robench.attacks.fgsm import FGSM
from robench.attacks.pgd import PGD
from robench.config import default_data_root
from robench.dataset import Data, DatasetInfo
from robench.defense import TrainContext
from robench.evaluation import evaluate, predict
from robench.registry import get_registry
from robench.reproducibility import seed_everything
from robench.runner import resolve_device
from robench.specs import AttackSpec
from robench.threat import ThreatModel
from robench.training import TrainingConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder: adapter_overhead.py
from adapter_overhead import _adapter, _direct_art, _direct_foolbox, art_classifier
from speed_autoattack import autoattack_rows

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("evaluation", "autoattack", "adapter", "training", "contract")
FAST_ROBENCH = "robench bf16+cl"
PGD_ONLY = "robench PGD"
NCHW = "robench PGD NCHW"
FAST_TA = "torchattacks bf16+cl"
SEED = 0
STEPS = 20
TRAIN_BATCH = 128
#: evaluation: robench must be this many times faster than each tool (at ≤ its robust accuracy)
SPEEDUP_TARGET = {"torchattacks": 3.0, "ART": 1.0, "Foolbox": 1.0}
#: adapter: largest overhead over the library called directly
ADAPTER_TARGET = 0.10
#: training: largest epoch time as a multiple of standard training's
TRAINING_TARGET = {"fast-at": 2.5, "pgd-at": 8.0}
#: contract: the largest cost of the model check, as a share of a PGD-20 call
CONTRACT_TARGET = 0.05
#: contract: runs of the (fast) model check timed, at least
CONTRACT_RUNS = 20
#: contract: the heavy model, and the shape and statistics of its (random) images
RESNET = "preact-resnet18"
CIFAR_INFO = DatasetInfo(
    "cifar10-shaped", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
)
VERSIONS = (
    "robench",
    "torch",
    "torchattacks",
    "adversarial-robustness-toolbox",
    "foolbox",
    "robench-art",
    "robench-foolbox",
)

Fn = Callable[[], float]
#: the model each dataset's rows use unless --model says otherwise
DEFAULT_MODEL = {"mnist": "mnist-cnn", "digits": "small-cnn", "cifar10": "cifar-cnn"}


# --- data, models, training -------------------------------------------------------------------


def load_data(data_root: Path, which: str) -> tuple[str, Data, Data, DatasetInfo]:
    """MNIST if it is under the data root (or ``which`` says so), else the bundled digits."""
    registry = get_registry()
    names = ("mnist", "digits") if which == "auto" else (which,)
    for name in names:
        offline = {"download": False} if name in ("mnist", "cifar10") else {}
        ds = registry.get("dataset", name).cls(**offline)
        try:
            ds.check(data_root)
        except Exception as exc:
            if which != "auto":
                raise SystemExit(f"dataset {name!r}: {exc}") from None
            print(f"note: {name} not found under {data_root}; trying the next dataset")
            continue
        return name, ds.load("train", data_root), ds.load("test", data_root), ds.info(data_root)
    raise SystemExit("no dataset available")


class Trainer:
    """Builds and trains the benchmark's model with robench's defenses, from a fixed seed."""

    def __init__(
        self,
        dataset: str,
        train: Data,
        info: DatasetInfo,
        device: torch.device,
        n_train: int,
        model: str | None = None,
    ) -> None:
        self.registry = get_registry()
        self.model_name = model or DEFAULT_MODEL[dataset]
        self.dataset, self.train, self.info, self.device = dataset, train, info, device
        self.n_train = min(n_train, len(train))

    def make_attack(self, spec: AttackSpec):
        entry = self.registry.get("attack", spec.name)
        return entry.cls(ThreatModel(spec.norm, spec.eps, self.info.bounds), **spec.params)

    def defense(self, kind: str, eps: float) -> tuple[Any, dict[str, Any]]:
        """``standard``, ``fast-at`` or ``pgd-at``, with the training defaults it needs; the
        presets are spelled through ``adversarial`` where they are not registered."""
        registry = self.registry
        if kind == "standard":
            return registry.get("defense", "standard").cls(), {}
        if ("defense", kind) in registry:
            return registry.get("defense", kind).cls(eps=eps), {}
        if kind == "fast-at":
            attack = {"name": "fgsm", "eps": eps, "random_start": True, "rel_step": 1.25}
            extra = {"schedule": "cyclic"}
        else:
            attack, extra = {"name": "pgd", "eps": eps, "steps": 10, "random_start": True}, {}
        return registry.get("defense", "adversarial").cls(attack=attack), extra

    def fresh_model(self) -> nn.Module:
        seed_everything(SEED)
        return self.registry.get("model", self.model_name).cls().build(self.info)

    def fitter(
        self, kind: str, eps: float, epochs: int, n: int | None = None, fast: bool = False
    ) -> tuple[nn.Module, Callable[[], nn.Module]]:
        """A fresh model and the call that trains it (to time it without the building); with
        ``fast``, in bf16 and channels_last."""
        defense, extra = self.defense(kind, eps)
        if fast:
            extra |= {"precision": "bf16", "channels_last": True}
        cfg = TrainingConfig(
            epochs=epochs,
            batch_size=TRAIN_BATCH,
            optimizer="adam",
            lr=1e-3,
            train_examples=n or self.n_train,
            **extra,
        )
        ctx = TrainContext(
            training=cfg,
            device=self.device,
            seed=SEED,
            info=self.info,
            make_attack=self.make_attack,
        )
        model = self.fresh_model()
        return model, lambda: defense.fit(model, self.train, ctx).to(self.device).eval()

    def trained(self, kind: str, eps: float, epochs: int, cache: Path | None) -> nn.Module:
        """A model trained with ``kind``, loaded from ``cache`` when it was saved there."""
        tag = f"{kind}-eps{eps:g}" if kind != "standard" else kind
        name = f"{self.dataset}-{self.model_name}-{tag}-{epochs}ep-n{self.n_train}-seed{SEED}.pt"
        path = cache / name if cache else None
        if path is not None and path.is_file():
            model = self.fresh_model()
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            print(f"loaded {path}")
            return model.to(self.device).eval()
        model, fit = self.fitter(kind, eps, epochs)
        seconds, model = timed(fit, self.device)
        print(
            f"trained {self.model_name} with {tag}, {epochs} epoch(s) on {self.n_train} images: "
            f"{seconds:.1f} s"
        )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
        return model


# --- timing -----------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Wall time of ``fn()`` (synchronised on CUDA) and its result."""
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warm_up: bool = True
) -> dict[str, tuple[float, list[Any]]]:
    """Per label: the median time over ``repeats`` interleaved runs and the runs' results,
    after one warm-up run of each (unless the caller warmed them up). Every run starts from the
    same seeds as the others of its round."""
    for fn in fns.values() if warm_up else ():
        seed_everything(SEED)
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    results: dict[str, list[Any]] = {k: [] for k in fns}
    for r in range(repeats):
        for label, fn in fns.items():
            seed_everything(SEED + 1 + r)
            seconds, out = timed(fn, device)
            times[label].append(seconds)
            results[label].append(out)
    return {k: (statistics.median(times[k]), results[k]) for k in fns}


# --- evaluation -------------------------------------------------------------------------------


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    return (predict(model, x, batch) == y).float().mean().item()


def channels_last(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """A copy of ``model`` and ``x`` in channels_last memory format (4-d images only)."""
    if x.dim() != 4:
        return model, x
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    return fast, x.contiguous(memory_format=torch.channels_last)


def robench_eval(
    model,
    x,
    y,
    eps,
    alpha,
    batch,
    bounds,
    fast: bool = False,
    steps: int = STEPS,
    pgd_only: bool = False,
    layout: bool | None = None,
) -> Fn:
    """robench's evaluate(): by default FGSM → PGD in a cascade; ``pgd_only``: PGD alone with
    every other setting at its default; ``layout``: evaluate()'s ``channels_last`` (None:
    robench's choice); ``fast``: bf16 on a channels_last copy."""
    pgd = PGD(ThreatModel("linf", eps, bounds), steps=steps, step_size=alpha, random_start=True)
    attacks = [pgd] if pgd_only else [FGSM(ThreatModel("linf", eps, bounds)), pgd]
    precision = "bf16" if fast else "fp32"
    if fast:
        model, x = channels_last(model, x)

    def run() -> float:
        # robench run with [evaluation] cascade = true (unless pgd_only), batch_size = batch
        # (and for the fast row precision = "bf16", channels_last = true); the round's seed as
        # the training seed
        return evaluate(
            model,
            x,
            y,
            attacks,
            batch_size=batch,
            cascade=not pgd_only,
            precision=precision,
            channels_last=layout,
            seed=torch.initial_seed(),
        ).robust_accuracy

    return run


def torchattacks_eval(
    model, x, y, eps, alpha, batch, bounds, fast: bool = False, steps: int = STEPS
) -> Fn:
    """torchattacks' PGD; with ``fast``, on a channels_last copy and under bf16 autocast
    (a wrapper a user could write: torchattacks has no such option), scored in fp32."""
    import torchattacks

    if fast:
        model, x = channels_last(model, x)
    attack = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    autocast = functools.partial(torch.autocast, x.device.type, torch.bfloat16, enabled=fast)

    def run() -> float:
        correct = torch.zeros((), dtype=torch.long, device=x.device)
        for xb, yb in zip(x.split(batch), y.split(batch), strict=True):
            with autocast():
                adv = attack(xb, yb)
            with torch.no_grad():
                correct += (model(adv).argmax(1) == yb).sum()
        return int(correct) / len(y)

    return run


def art_eval(model, x, y, eps, alpha, batch, bounds, steps: int = STEPS) -> Fn:
    from art.attacks.evasion import ProjectedGradientDescent

    classifier = art_classifier(model, x, bounds)
    attack = ProjectedGradientDescent(
        classifier,
        norm=np.inf,
        eps=eps,
        eps_step=alpha,
        max_iter=steps,
        num_random_init=1,
        batch_size=batch,
        verbose=False,
    )

    def run() -> float:
        x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
        adv = attack.generate(x=x_np, y=y_np)
        return float((classifier.predict(adv, batch_size=batch).argmax(1) == y_np).mean())

    return run


def foolbox_eval(model, x, y, eps, alpha, batch, bounds, steps: int = STEPS) -> Fn:
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=bounds, device=x.device)
    attack = fb.attacks.LinfPGD(steps=steps, abs_stepsize=alpha, random_start=True)

    def run() -> float:
        robust = torch.zeros((), dtype=torch.long, device=x.device)
        for xb, yb in zip(x.split(batch), y.split(batch), strict=True):
            _, _, success = attack(fmodel, xb, yb, epsilons=eps)
            robust += (~success).sum()
        return int(robust) / len(y)

    return run


WHAT = {
    "robench": "robench run, cascade = true: FGSM → PGD-{steps}, early stop",
    FAST_ROBENCH: "the same, bf16 gradients (fp32 verdicts), channels_last",
    PGD_ONLY: "evaluate() with PGD-{steps} alone, every setting at its default",
    NCHW: "the same, channels_last = false (NCHW: the default before the layout rule)",
    "torchattacks": "PGD-{steps}, random start, all examples",
    FAST_TA: "the same under bf16 autocast, channels_last (a wrapper, not an option)",
    "ART": "ProjectedGradientDescent-{steps}, 1 random init, all",
    "Foolbox": "LinfPGD-{steps}, random start, all examples",
}
TOOLS = tuple(WHAT)


def what(tool: str, steps: int, device: torch.device) -> str:
    """The row's description; robench's bf16 row says when bf16 ran as fp32 (no native bf16:
    robench.precision.fastest)."""
    from robench import precision

    text = WHAT[tool].format(steps=steps)
    if tool == FAST_ROBENCH and not precision.bf16_native(device):
        text = "the same, channels_last (bf16 asked, fp32 used: no native bfloat16)"
    return text


def evaluation_rows(label, model, x, y, args, bounds, has_torchattacks) -> list[dict[str, Any]]:
    """One row per tool: its time, robust accuracy, and its time as a multiple of robench's in
    fp32 (``ratio_or_speedup``) and in bf16 + channels_last (``speedup_vs_fast``). A target is
    met when robench, in either setting, is that much faster at no higher robust accuracy."""
    eps, alpha, batch = args.eps, args.alpha, args.batch
    makers = {
        "robench": robench_eval,
        FAST_ROBENCH: functools.partial(robench_eval, fast=True),
        PGD_ONLY: functools.partial(robench_eval, pgd_only=True),
        NCHW: functools.partial(robench_eval, pgd_only=True, layout=False),
        "torchattacks": torchattacks_eval,
        FAST_TA: functools.partial(torchattacks_eval, fast=True),
        "ART": art_eval,
        "Foolbox": foolbox_eval,
    }
    if not has_torchattacks:
        del makers["torchattacks"], makers[FAST_TA]
    makers = {tool: make for tool, make in makers.items() if tool in args.tools}
    fns = {
        tool: make(model, x, y, eps, alpha, batch, bounds, steps=args.steps)
        for tool, make in makers.items()
    }
    clean = 100 * accuracy(model, x, y, batch)
    out = interleaved(fns, args.repeats, args.device)
    ours = {
        tool: (out[tool][0], 100 * statistics.fmean(out[tool][1]))
        for tool in ("robench", FAST_ROBENCH, PGD_ONLY)
        if tool in out
    }
    rows = []
    for tool, (seconds, accs) in out.items():
        acc = 100 * statistics.fmean(accs)
        row = {
            "section": "evaluation",
            "model": label,
            "tool": tool,
            "what": what(tool, args.steps, args.device),
            "n": len(y),
            "eps": eps,
            "alpha": alpha,
            "seconds": seconds,
            "robust_accuracy": acc,
            "robust_accuracy_sd": 100 * statistics.stdev(accs) if len(accs) > 1 else None,
            "clean_accuracy": clean,
            "ratio_or_speedup": seconds / ours["robench"][0] if "robench" in ours else None,
            "speedup_vs_fast": seconds / ours[FAST_ROBENCH][0] if FAST_ROBENCH in ours else None,
            "speedup_vs_pgd_only": seconds / ours[PGD_ONLY][0] if PGD_ONLY in ours else None,
        }
        if tool in SPEEDUP_TARGET:
            need = SPEEDUP_TARGET[tool]
            faster = f"≥{need:g}× faster than" if need != 1 else "not slower than"
            met = [
                seconds / ours_s >= need and ours_acc <= acc + 1e-6  # float means
                for ours_s, ours_acc in ours.values()
            ]
            row |= {
                "target": f"robench (any of its rows) {faster} {tool} at ≤ its robust accuracy",
                "target_met": _yes(any(met)),
            }
        rows.append(row)
    return rows


# --- adapters ---------------------------------------------------------------------------------


def adapter_rows(label, model, x, y, args) -> list[dict[str, Any]]:
    eps, step = args.eps, args.alpha
    art_params = {"max_iter": STEPS, "eps_step": step, "num_random_init": 0}
    fb_params = {"steps": STEPS, "abs_stepsize": step, "random_start": False}
    fns = {
        ("ART", "ProjectedGradientDescent"): _direct_art(model, x, y, eps, STEPS, step),
        ("robench → ART", "art.ProjectedGradientDescent"): _adapter(
            model, x, y, "art.ProjectedGradientDescent", art_params, eps
        ),
        ("Foolbox", "LinfPGD"): _direct_foolbox(model, x, y, eps, STEPS, step),
        ("robench → Foolbox", "foolbox.LinfPGD"): _adapter(
            model, x, y, "foolbox.LinfPGD", fb_params, eps
        ),
    }

    def scored(fn):
        def run() -> float:
            adv = fn()
            adv = torch.as_tensor(adv).to(x.device)
            return accuracy(model, adv, y, args.batch)

        return run

    out = interleaved({k: scored(fn) for k, fn in fns.items()}, args.repeats, args.device)
    rows = []
    direct_s = 0.0
    for (tool, what), (seconds, accs) in out.items():
        row = {
            "section": "adapter",
            "model": label,
            "tool": tool,
            "what": f"{what}-{STEPS}, no random start, 1 batch",
            "n": len(y),
            "eps": eps,
            "alpha": step,
            "seconds": seconds,
            "robust_accuracy": 100 * statistics.fmean(accs),
        }
        if tool.startswith("robench"):
            ratio = seconds / direct_s
            library = tool.split("→ ")[1]
            row |= {
                "ratio_or_speedup": ratio,
                "overhead_pct": 100 * (ratio - 1),
                "target": f"within {ADAPTER_TARGET:.0%} of {library} called directly",
                "target_met": _yes(ratio - 1 <= ADAPTER_TARGET),
            }
        else:
            direct_s = seconds
            row["ratio_or_speedup"] = 1.0
        rows.append(row)
    return rows


# --- training ---------------------------------------------------------------------------------


def training_rows(trainer: Trainer, args) -> list[dict[str, Any]]:
    """One epoch of each kind of training, in fp32 and in bf16 + channels_last; each time as a
    multiple of standard training's in the same setting."""
    eps = args.train_eps
    kinds = {
        "standard": "standard: clean examples",
        "fast-at": "fast-at: FGSM-RS",
        "pgd-at": "pgd-at: PGD-10",
    }
    settings = {"fp32": False, "bf16+cl": True}
    warm = min(trainer.n_train, 2 * TRAIN_BATCH)
    for kind in kinds:  # warm-up on two batches: first-call costs out of the timings
        for fast in settings.values():
            trainer.fitter(kind, eps, 1, warm, fast)[1]()

    def fit(kind: str, fast: bool):
        def run() -> None:
            _, go = trainer.fitter(kind, eps, 1, fast=fast)  # building a model is cheap next to it
            go()

        return run

    fns = {(k, s): fit(k, fast) for s, fast in settings.items() for k in kinds}
    out = interleaved(fns, args.repeats, args.device, warm_up=False)
    n = trainer.n_train
    rows = []
    for (kind, setting), (seconds, _) in out.items():
        ratio = seconds / out[("standard", setting)][0]
        row = {
            "section": "training",
            "model": trainer.model_name,
            "tool": "robench" if setting == "fp32" else f"robench {setting}",
            "what": f"{kinds[kind]}, 1 epoch, batch {TRAIN_BATCH}, {setting}",
            "n": n,
            "eps": 0.0 if kind == "standard" else eps,
            "seconds": seconds,
            "ratio_or_speedup": ratio,
            "images_per_s": n / seconds,
        }
        if kind in TRAINING_TARGET:
            row["target"] = f"≤ {TRAINING_TARGET[kind]:g}× standard"
            row["target_met"] = _yes(ratio <= TRAINING_TARGET[kind])
        rows.append(row)
    return rows


# --- the attack contract ---------------------------------------------------------------------


def _frozen(model: nn.Module, device: torch.device) -> nn.Module:
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _check_alone(model: nn.Module, runs: int, device: torch.device) -> float:
    """Median time of the contract's model check around nothing (snapshot, compare, restore)."""

    def check() -> None:
        with attack_mode(model):
            pass

    check()  # warm-up
    return statistics.median(timed(check, device)[0] for _ in range(runs))


def _contract_row(label: str, model: nn.Module, n: int, args, **fields: Any) -> dict[str, Any]:
    params = sum(p.numel() for p in model.parameters())
    row = {"section": "contract", "model": f"{label} ({params / 1e6:.2g}M params)", "n": n}
    row |= {"eps": args.eps, "alpha": args.alpha} if label != RESNET else {}
    return row | fields


def contract_rows(trainer: Trainer, x: torch.Tensor, y: torch.Tensor, args) -> list[dict]:
    """The model check's cost on the benchmark's model, against PGD-20 called directly and
    through ``craft``, and on PreAct ResNet-18 against one forward-backward pass."""
    device, runs = args.device, max(CONTRACT_RUNS, args.repeats)
    x, y = x[: args.batch], y[: args.batch]
    model = _frozen(trainer.fresh_model(), device)
    threat = ThreatModel("linf", args.eps, trainer.info.bounds)
    attack = PGD(threat, steps=STEPS, step_size=args.alpha, random_start=True, early_stop=False)

    def direct() -> torch.Tensor:  # what craft does, less the check and the projection
        with torch.enable_grad():
            return attack.run(model, x.clone(), y)

    out = interleaved(
        {"direct": direct, "craft": lambda: craft(attack, model, x, y).x_adv},
        args.repeats,
        device,
    )
    direct_s, craft_s = out["direct"][0], out["craft"][0]
    check_s = _check_alone(model, runs, device)
    pgd = f"PGD-{STEPS}, no early stop, 1 batch"
    name, n = trainer.model_name, len(y)
    target = f"check ≤ {CONTRACT_TARGET:.0%} of a PGD-{STEPS} call"
    rows = [
        _contract_row(
            name,
            model,
            n,
            args,
            tool="robench contract",
            what=f"model check alone (copy + compare), share of {pgd} direct",
            seconds=check_s,
            ratio_or_speedup=check_s / direct_s,
            overhead_pct=100 * check_s / direct_s,
            target=target,
            target_met=_yes(check_s / direct_s <= CONTRACT_TARGET),
        ),
        _contract_row(
            name,
            model,
            n,
            args,
            tool="PGD run() directly",
            what=f"{pgd}: eval, frozen parameters, no check",
            seconds=direct_s,
            ratio_or_speedup=1.0,
        ),
        _contract_row(
            name,
            model,
            n,
            args,
            tool="robench craft",
            what=f"{pgd} through craft (check + projection)",
            seconds=craft_s,
            ratio_or_speedup=craft_s / direct_s,
            overhead_pct=100 * (craft_s / direct_s - 1),
        ),
    ]

    batch = args.contract_batch
    resnet = _frozen(get_registry().get("model", RESNET).cls().build(CIFAR_INFO), device)
    gen = torch.Generator().manual_seed(SEED)
    xr = torch.rand(batch, *CIFAR_INFO.shape, generator=gen).to(device).requires_grad_(True)
    yr = torch.randint(0, CIFAR_INFO.num_classes, (batch,), generator=gen).to(device)

    def forward_backward() -> torch.Tensor:
        loss = nn.functional.cross_entropy(resnet(xr), yr)
        return torch.autograd.grad(loss, xr)[0]

    fb_s = interleaved({"fb": forward_backward}, args.repeats, device)["fb"][0]
    check_s = _check_alone(resnet, runs, device)
    share = check_s / (STEPS * fb_s)
    rows += [
        _contract_row(
            RESNET,
            resnet,
            batch,
            args,
            tool="robench contract",
            what=f"model check alone (copy + compare), share of PGD-{STEPS} = {STEPS} passes",
            seconds=check_s,
            ratio_or_speedup=share,
            overhead_pct=100 * share,
            target=target,
            target_met=_yes(share <= CONTRACT_TARGET),
        ),
        _contract_row(
            RESNET,
            resnet,
            batch,
            args,
            tool="forward-backward",
            what="one input-gradient pass, random 3×32×32 images",
            seconds=fb_s,
            ratio_or_speedup=1.0,
        ),
    ]
    return rows


# --- main -------------------------------------------------------------------------------------


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def _has_torchattacks() -> bool:
    try:
        import torchattacks  # noqa: F401
    except ImportError:
        print('note: torchattacks is not installed (pip install -e ".[dev]"): its rows are skipped')
        return False
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=default_data_root())
    ap.add_argument("--dataset", choices=("auto", "mnist", "digits", "cifar10"), default="auto")
    ap.add_argument(
        "--model", default=None, help="model (default: mnist-cnn, small-cnn, cifar-cnn)"
    )
    ap.add_argument(
        "--tools",
        default=",".join(TOOLS),
        help="evaluation section: the rows to time (comma-separated)",
    )
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    ap.add_argument("--n", type=int, default=1000, help="test images to evaluate on")
    ap.add_argument("--eps", type=float, default=0.1, help="L∞ budget")
    ap.add_argument("--alpha", type=float, default=None, help="PGD step (default 2.5·ε/steps)")
    ap.add_argument(
        "--steps", type=int, default=STEPS, help="evaluation section: PGD steps (default 20)"
    )
    ap.add_argument("--train-eps", type=float, default=None, help="AT budget (default: --eps)")
    ap.add_argument("--batch", type=int, default=None, help="eval batch (500 CPU, 2000 CUDA)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--train-examples", type=int, default=20000)
    ap.add_argument("--checkpoint-dir", type=Path, default=None, help="cache trained models")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    ap.add_argument("--aa-n", type=int, default=500, help="autoattack: test images")
    ap.add_argument("--aa-repeats", type=int, default=1, help="autoattack: timed runs per tool")
    ap.add_argument(
        "--aa-art-n", type=int, default=50, help="autoattack: images for ART's (0: skip it)"
    )
    ap.add_argument(
        "--contract-batch", type=int, default=None, help="ResNet batch (32 CPU, 512 CUDA)"
    )
    ap.add_argument("-o", "--output", type=Path, default=REPO / "results" / "speed.csv")
    args = ap.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    if set(args.tools) - set(TOOLS):
        ap.error(f"unknown tools {sorted(set(args.tools) - set(TOOLS))}; choose from {TOOLS}")
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    args.device = resolve_device(args.device)
    args.alpha = args.alpha if args.alpha is not None else 2.5 * args.eps / args.steps
    args.train_eps = args.train_eps if args.train_eps is not None else args.eps
    args.batch = args.batch or (2000 if args.device.type == "cuda" else 500)
    args.contract_batch = args.contract_batch or (512 if args.device.type == "cuda" else 32)
    return args


COLUMNS = [
    "section",
    "model",
    "tool",
    "what",
    "n",
    "eps",
    "alpha",
    "seconds",
    "robust_accuracy",
    "robust_accuracy_sd",
    "clean_accuracy",
    "ratio_or_speedup",
    "speedup_vs_fast",
    "speedup_vs_pgd_only",
    "overhead_pct",
    "images_per_s",
    "target",
    "target_met",
]


def _table(rows: list[dict[str, Any]], args: argparse.Namespace, where: str) -> pd.DataFrame:
    """The rows as ``results/speed.csv`` holds them, with the settings, device and versions."""
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    df["repeats"] = args.repeats
    df["device"] = where
    df["versions"] = provenance.versions_line(VERSIONS)
    return df


def _partial(rows: list[dict[str, Any]], args: argparse.Namespace, where: str) -> None:
    """The rows so far, to ``OUTPUT.partial.csv``: a long run stopped midway keeps them."""
    path = args.output.with_name(args.output.stem + ".partial.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    _table(rows, args, where).to_csv(path, index=False)


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    device = args.device
    dataset, train, test, info = load_data(args.data_root, args.dataset)
    trainer = Trainer(dataset, train, info, device, args.train_examples, args.model)
    if dataset == "cifar10":  # the mirror's test split is ordered by class: a seeded draw
        idx = torch.randperm(len(test.y), generator=torch.Generator().manual_seed(SEED))
        x, y = test.x[idx[: args.n]].to(device), test.y[idx[: args.n]].to(device)
    else:  # the first images, as the published protocols take them
        x, y = test.x[: args.n].to(device), test.y[: args.n].to(device)
    where = provenance.device_label(device)
    print(f"{dataset}: {len(y)} test images, {trainer.n_train} training images; {where}")

    rows: list[dict[str, Any]] = []
    if {"evaluation", "autoattack", "adapter"} & set(args.sections):
        models = {
            f"{trainer.model_name} standard": trainer.trained(
                "standard", 0.0, 1, args.checkpoint_dir
            )
        }
        if {"evaluation", "autoattack"} & set(args.sections):
            models[f"{trainer.model_name} fast-at ε={args.train_eps:g}"] = trainer.trained(
                "fast-at", args.train_eps, 2, args.checkpoint_dir
            )
        for model in models.values():  # frozen for every tool alike, as robench's attacks do
            for p in model.parameters():
                p.requires_grad_(False)
        if "evaluation" in args.sections:
            has_ta = _has_torchattacks()
            for label, model in models.items():
                rows += evaluation_rows(label, model, x, y, args, info.bounds, has_ta)
                _partial(rows, args, where)
        if "autoattack" in args.sections:
            has_ta = _has_torchattacks()
            for label, model in models.items():
                rows += autoattack_rows(label, model, x, y, args, info.bounds, has_ta)
                _partial(rows, args, where)
        if "adapter" in args.sections:
            label, model = next(iter(models.items()))
            rows += adapter_rows(label, model, x, y, args)
    if "training" in args.sections:
        rows += training_rows(trainer, args)
    if "contract" in args.sections:
        rows += contract_rows(trainer, x, y, args)

    df = _table(rows, args, where)
    shown = df.drop(columns=["alpha", "repeats", "device", "versions"]).round(
        {
            "seconds": 3,
            "robust_accuracy": 2,
            "robust_accuracy_sd": 2,
            "clean_accuracy": 1,
            "ratio_or_speedup": 2,
            "speedup_vs_fast": 2,
            "speedup_vs_pgd_only": 2,
            "overhead_pct": 2,
            "images_per_s": 0,
        }
    )
    shown = shown.astype(object).where(shown.notna(), "")
    print(f"L∞ ε = {args.eps:g}, PGD step α = {args.alpha:g}; AT ε = {args.train_eps:g}")
    with pd.option_context("display.width", 250, "display.max_colwidth", 60):
        print(shown.to_string(index=False))
    print(f"versions: {df['versions'].iloc[0] if len(df) else ''}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.output, index=False)
    args.output.with_name(args.output.stem + ".partial.csv").unlink(missing_ok=True)
    print(f"written to {args.output}")
    return df


if __name__ == "__main__":
    main()
