"""CIFAR-10 adversarial training on PreActResNet-18: seconds per epoch and time to accuracy.

For each recipe of ``benchmarks/cifar.toml`` on PreActResNet-18 (``preact18-fast-at``: Fast AT,
FGSM-RS at 8/255; ``preact18-pgd10-at``: PGD-10 AT) it trains the file's model with the file's
training settings (optimizer, learning rate and schedule, batch, augmentation, precision,
memory format) through robench's own defenses, and records after every epoch:

- the epoch's training seconds (evaluation excluded) and images per second;
- clean accuracy and robust accuracy under PGD-50 (L∞ 8/255, step 2.5·ε/50, random start) on
  ``--eval-n`` test images, the time-to-accuracy curve.

The full CIFAR-10 training set cannot be had on the machines this project is built on: the
training images are the CIFAR-10 mirror's 4,000 exact ones (``npz/cifar10-train-first4000.npz``
under the data root) **tiled** to ``--train-images`` (default 50,000, one CIFAR-10 epoch), so an
epoch costs what a CIFAR-10 epoch costs, but the accuracies are those of a model that saw 4,000
distinct images, scored on the mirror's JPEG test copies: **not comparable to published CIFAR-10
numbers** (a column says so). From the mean epoch time it projects the wall time of each
published recipe (Fast AT: 15 epochs, published 12 min on a 2020 GPU, Wong et al. 2020; PGD-AT:
the file's epochs, and 200 epochs as in Rice et al. 2020).

With ``--epochs`` fewer than the recipe's, the learning-rate schedule is compressed into them (the
throughput does not depend on it). The evaluation after each epoch runs with the global random
generators saved and restored, so the training draws what it would draw without it. Writes
``--output`` (default ``results/gpu-cifar-training.csv``) with the device's name. ::

    python benchmarks/gpu_cifar.py --device cuda --data-root DATA
    # the CPU check of the script itself (seconds):
    python benchmarks/gpu_cifar.py --device cpu --train-images 16 --epochs 1 --eval-n 4 \\
        --pgd-steps 1 --precision fp32 -o /tmp/gpu-cifar.csv
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robench import provenance
from robench.attack import attack_mode
from robench.attacks.pgd import PGD
from robench.config import default_data_root, load_benchmark
from robench.dataset import Data
from robench.defense import TrainContext
from robench.evaluation import evaluate, predict
from robench.registry import get_registry
from robench.reproducibility import seed_everything
from robench.threat import ThreatModel

REPO = Path(__file__).resolve().parent.parent
CIFAR = REPO / "benchmarks" / "cifar.toml"
RECIPES = ("preact18-fast-at", "preact18-pgd10-at")
#: published epochs of each recipe, for the projected wall time
PUBLISHED_EPOCHS = {"preact18-fast-at": (15,), "preact18-pgd10-at": (200,)}
EPS = 8 / 255
SEED = 0
VERSIONS = ("robench", "torch", "torchvision")


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tiled(train: Data, n: int) -> Data:
    """``train`` repeated to ``n`` examples (in order; the training loop shuffles)."""
    reps = -(-n // len(train))
    return Data(train.x.repeat(reps, 1, 1, 1)[:n].contiguous(), train.y.repeat(reps)[:n])


class _SavedRandom:
    """Python's, NumPy's and torch's (CPU and CUDA) generators, restored on exit."""

    def __enter__(self) -> None:
        self.state = (
            random.getstate(),
            np.random.get_state(),
            torch.get_rng_state(),
            torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        )

    def __exit__(self, *exc: object) -> None:
        py, np_state, cpu, cuda = self.state
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def scores(model, x, y, bounds, args) -> tuple[float, float, float]:
    """Clean and PGD accuracy (in %) of ``model`` on ``(x, y)``, and the seconds it took."""
    _sync(args.device)
    start = time.perf_counter()
    with _SavedRandom(), attack_mode(model, "the evaluation"):
        clean = 100 * (predict(model, x, args.batch) == y).float().mean().item()
        pgd = PGD(ThreatModel("linf", EPS, bounds), steps=args.pgd_steps)
        ev = evaluate(model, x, y, [("pgd", pgd)], batch_size=args.batch)
        (out,) = ev.outcomes.values()
        robust = 100 * out.robust.float().mean().item()
    _sync(args.device)
    return clean, robust, time.perf_counter() - start


def recipe_rows(label: str, bench, train: Data, test: Data, info, args) -> list[dict[str, Any]]:
    """Train ``label``'s recipe for ``args.epochs`` epochs; one row per epoch."""
    registry = get_registry()
    d = next(d for d in bench.defenses if d.label == label)
    epochs = args.epochs or d.training.epochs
    update: dict[str, Any] = {"epochs": epochs, "train_examples": None}
    if args.precision:
        update["precision"] = args.precision
    cfg = d.training.model_copy(update=update)
    model_use = d.model or bench.model
    seed_everything(SEED)
    model = model_use.instantiate().build(info)
    defense = d.instantiate()

    def make_attack(spec):
        entry = registry.get("attack", spec.name)
        return entry.cls(ThreatModel(spec.norm, spec.eps, info.bounds), **spec.params)

    x_eval, y_eval = test.x[: args.eval_n].to(args.device), test.y[: args.eval_n].to(args.device)
    rows: list[dict[str, Any]] = []
    clock = {"start": 0.0, "eval": 0.0}

    def progress(epoch: int, total: int, loss: float) -> None:
        _sync(args.device)
        seconds = time.perf_counter() - clock["start"] - clock["eval"]
        clean, robust, eval_s = scores(model, x_eval, y_eval, info.bounds, args)
        clock["eval"] += eval_s
        per_epoch = seconds / epoch
        rows.append(
            {
                "recipe": label,
                "epoch": epoch,
                "epochs_run": total,
                "recipe_epochs": d.training.epochs,
                "train_images": len(train),
                "batch_size": cfg.batch_size,
                "precision": cfg.precision,
                "channels_last": cfg.channels_last,
                "loss": loss,
                "train_seconds_cumulative": seconds,
                "seconds_per_epoch": per_epoch,
                "images_per_s": len(train) / per_epoch,
                "clean_accuracy": clean,
                f"pgd{args.pgd_steps}_accuracy": robust,
                "eval_n": len(y_eval),
                "eval_seconds": eval_s,
                "data": "CIFAR-10 mirror: 4,000 exact training images tiled; JPEG test copies "
                "(not comparable to published CIFAR-10 numbers)",
            }
        )
        print(
            f"  {label} epoch {epoch}/{total}: {per_epoch:7.1f} s/epoch "
            f"({len(train) / per_epoch:7.0f} img/s), loss {loss:.3f}, clean {clean:5.1f} %, "
            f"PGD-{args.pgd_steps} {robust:5.1f} % (eval {eval_s:.1f} s)"
        )

    ctx = TrainContext(
        training=cfg,
        device=args.device,
        seed=SEED,
        info=info,
        make_attack=make_attack,
        progress=progress,
    )
    _sync(args.device)
    clock["start"] = time.perf_counter()
    defense.fit(model, train, ctx)
    mean = rows[-1]["seconds_per_epoch"] if rows else float("nan")
    for row in rows:
        row["mean_seconds_per_epoch"] = mean
        for n in (*PUBLISHED_EPOCHS.get(label, ()), d.training.epochs):
            row[f"projected_minutes_{n}_epochs"] = mean * n / 60
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=default_data_root())
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    ap.add_argument("--recipes", default=",".join(RECIPES), help="labels in cifar.toml")
    ap.add_argument("--train-images", type=int, default=50_000, help="the 4,000 tiled to this")
    ap.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    ap.add_argument("--eval-n", type=int, default=1000, help="test images scored per epoch")
    ap.add_argument("--pgd-steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=1000, help="evaluation batch")
    ap.add_argument(
        "--precision", choices=("fp32", "bf16"), default=None, help="default: the recipe's"
    )
    ap.add_argument(
        "-o", "--output", type=Path, default=REPO / "results" / "gpu-cifar-training.csv"
    )
    args = ap.parse_args(argv)
    args.device = _device(args.device)
    args.recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    return args


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    bench = load_benchmark(CIFAR, data_root=args.data_root)
    unknown = sorted(set(args.recipes) - {d.label for d in bench.defenses})
    if unknown:
        sys.exit(f"error: --recipes: no defense labelled {', '.join(unknown)} in {CIFAR}")
    dataset = bench.dataset.instantiate()
    info = dataset.info(args.data_root)
    train = tiled(dataset.load("train", args.data_root), args.train_images)
    test = dataset.load("test", args.data_root)
    g = torch.Generator().manual_seed(SEED)  # the mirror's test split is ordered by class
    order = torch.randperm(len(test), generator=g)
    test = Data(test.x[order], test.y[order])
    where = provenance.device_label(args.device)
    print(f"CIFAR-10 mirror: {len(train)} training images (4,000 tiled); {where}")
    rows: list[dict[str, Any]] = []
    for label in args.recipes:
        rows += recipe_rows(label, bench, train, test, info, args)
    df = pd.DataFrame(rows)
    provenance.write_measurements(df, args.output, args.device, VERSIONS)
    return df


if __name__ == "__main__":
    main()
