"""Does robench's AutoAttack agree with torchattacks' on the same models and examples?

For each model and L∞ budget below, on the same ``--n`` test examples (a seeded draw), it runs:

- ``torchattacks.AutoAttack(version="standard")`` (the port the reference names; its
  components keep torchattacks' defaults: APGD, APGD-T and FAB-T with **10** iterations, Square
  with 5000 queries) and robench's ``autoattack`` configured the same way (``steps = 10``):
  the agreement target is ±0.5 points;
- each component alone, on every clean-correct example, against its torchattacks counterpart
  with the same settings: robench's ``apgd`` (CE) vs ``APGD(loss="ce")``, ``apgd-t`` vs
  ``APGDT``, ``fab`` (targeted) vs ``FAB(multi_targeted=True)``, ``square`` vs ``Square``
  (target ±1 point);
- with ``--attacks ...,autoattack-paper``, robench's ``autoattack`` as the paper defines it
  (``steps = 100``, robench's default), which is what robench's benchmarks report.

The models are those of the shipped benchmarks, trained by robench with their settings (seed 0):
the NSL CNN ``nsl-base`` and ``pgd-at`` of ``benchmarks/mnist.toml`` on exact MNIST at
ε = 0.1 and 0.3, and the CIFAR CNN ``cnn-standard`` of ``benchmarks/cifar.toml`` on the CIFAR-10
mirror at ε = 8/255 (the mirror's test images are JPEG copies: not comparable to published
CIFAR-10 numbers). Each is trained through ``robench.run`` into ``--work`` (default
``results/autoattack-agreement``), whose model store makes a second run reuse them; models
already trained by a run of the benchmark itself (``results/mnist/models``, ...) are linked in
first, so nothing is trained twice.

Robust accuracy = classified correctly clean and on the attack's output, for every tool (so a
clean-misclassified example never counts). Writes ``results/autoattack-agreement.csv`` (``-o``)
with the time each tool took and the versions. torchattacks is a development extra
(``pip install -e ".[dev]"``). ::

    python benchmarks/autoattack_agreement.py --data-root ../shared/data
    python benchmarks/autoattack_agreement.py --data-root ../shared/data --n 100 --models mnist-base
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

import robench
from robench import provenance
from robench.config import default_data_root, read_toml
from robench.evaluation import evaluate, predict
from robench.registry import get_registry
from robench.threat import ThreatModel

REPO = Path(__file__).resolve().parent.parent
VERSIONS = ("robench", "torch", "torchattacks")
#: agreement targets, in points
TARGET_AUTOATTACK, TARGET_COMPONENT = 0.5, 1.0


@dataclass(frozen=True)
class Spec:
    """One trained model of a shipped benchmark, scored at ``eps``."""

    name: str
    benchmark: str
    defense: str
    eps: tuple[float, ...]


SPECS = (
    Spec("mnist-base", "mnist.toml", "nsl-base", (0.1, 0.3)),
    Spec("mnist-pgd-at", "mnist.toml", "pgd-at", (0.1, 0.3)),
    Spec("cifar-cnn", "cifar.toml", "cnn-standard", (8 / 255,)),
)


def trained(spec: Spec, data_root: Path, work: Path) -> tuple[nn.Module, Any, Any]:
    """The benchmark's model of ``spec.defense`` (seed 0), trained or reused through
    ``robench.run``; returns the model (eval mode), the test split and the DatasetInfo."""
    path = REPO / "benchmarks" / spec.benchmark
    config = read_toml(path)
    out = work / spec.benchmark.removesuffix(".toml")
    _link_models(path.parent / config["output_dir"], out)
    defense = next(d for d in config["defenses"] if d.get("label", d["name"]) == spec.defense)
    config |= {
        "output_dir": str(out),
        "seeds": [0],
        "defenses": [{**defense, "seeds": [0]}],
        "attacks": [{"name": "fgsm", "eps": list(spec.eps)}],
        "evaluation": {**config.get("evaluation", {}), "n_examples": 100, "sanity": False},
    }
    df = robench.run(config, data_root=data_root, quiet=True)
    key = df.loc[df["kind"] == "clean", "model_key"].item()
    registry = get_registry()
    model_name = defense.get("model", config["model"])["name"]
    ds_cfg = dict(config["dataset"])
    ds = registry.get("dataset", ds_cfg.pop("name")).cls(**ds_cfg)
    info = ds.info(data_root)
    model = registry.get("model", model_name).cls().build(info)
    from safetensors.torch import load_file

    model.load_state_dict(load_file(out / "models" / f"{key}.safetensors"))
    return model.eval(), ds.load("test", data_root), info


def _link_models(source: Path, out: Path) -> None:
    """Hard-link (or copy) the models a run of the benchmark stored into ``out``'s store."""
    src, dst = source / "models", out / "models"
    if not src.is_dir():
        return
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix in (".safetensors", ".json") and not (dst / f.name).exists():
            try:
                os.link(f, dst / f.name)
            except OSError:
                (dst / f.name).write_bytes(f.read_bytes())


def seeded_examples(test: Any, n: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """``n`` test examples drawn with seed 0 (the CIFAR mirror is ordered by class)."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(test.y), generator=g)[:n]
    return test.x[idx].to(device), test.y[idx].to(device)


def _robust(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, clean: torch.Tensor) -> float:
    return 100 * (clean & (predict(model, x_adv, len(x_adv)) == y)).float().mean().item()


def torchattacks_runs(model, x, y, eps, batch) -> dict[str, Any]:
    """torchattacks' AutoAttack and its components, as a torchattacks user calls them."""
    import torchattacks as ta

    n_classes = int(model(x[:1]).shape[1])
    return {
        "autoattack": ta.AutoAttack(model, norm="Linf", eps=eps, n_classes=n_classes, seed=0),
        "apgd-ce": ta.APGD(model, norm="Linf", eps=eps, loss="ce", seed=0),
        "apgd-t": ta.APGDT(model, norm="Linf", eps=eps, n_classes=n_classes, seed=0),
        "fab-t": ta.FAB(
            model, norm="Linf", eps=eps, multi_targeted=True, n_classes=n_classes, seed=0
        ),
        "square": ta.Square(model, norm="Linf", eps=eps, n_queries=5000, seed=0),
    }


def robench_attacks(eps: float, bounds: tuple[float, float]) -> dict[str, Any]:
    """robench's attacks with torchattacks' settings (10 iterations), and the paper's AA."""
    reg = get_registry()
    threat = ThreatModel("linf", eps, bounds)

    def make(name: str, **params: Any):
        return reg.get("attack", name).cls(threat, **params)

    return {
        "autoattack": make("autoattack", steps=10),
        "apgd-ce": make("apgd", steps=10, loss="ce"),
        "apgd-t": make("apgd-t", steps=10),
        "fab-t": make("fab", steps=10, targeted=True),
        "square": make("square", n_queries=5000),
        "autoattack-paper": make("autoattack"),
    }


def score(spec: Spec, eps: float, model, x, y, info, args) -> list[dict[str, Any]]:
    """The rows of one model at one budget: robench's and torchattacks' attacks."""
    rows: list[dict[str, Any]] = []
    clean = predict(model, x, args.batch) == y
    base = {
        "model": spec.name,
        "defense": spec.defense,
        "eps": eps,
        "n": len(y),
        "clean_accuracy": 100 * clean.float().mean().item(),
    }
    ours = robench_attacks(eps, info.bounds)
    theirs = torchattacks_runs(model, x, y, eps, args.batch) if args.torchattacks else {}
    for what, attack in ours.items():
        if what not in args.attacks:
            continue
        t0 = time.perf_counter()
        ev = evaluate(
            model, x, y, [(what, attack)], batch_size=args.batch, attack_misclassified=False
        )
        seconds = time.perf_counter() - t0
        (out,) = ev.outcomes.values()
        row = base | {
            "attack": what,
            "tool": "robench",
            "robust_accuracy": 100 * out.robust.float().mean().item(),
            "seconds": seconds,
            "fooled_by": ", ".join(f"{k} {v}" for k, v in out.fooled_by),
        }
        rows.append(row)
        print(
            f"  {spec.name} ε={eps:.4g} {what:32s} robench      {row['robust_accuracy']:6.2f}% "
            f"{seconds:8.1f} s"
        )
        if what not in theirs:
            continue
        atk = theirs[what]
        torch.manual_seed(0)
        t0 = time.perf_counter()
        idx = clean.nonzero().flatten()  # every tool attacks the clean-correct examples
        x_adv = x.clone()
        for chunk in idx.split(args.batch):
            x_adv[chunk] = atk(x[chunk], y[chunk]).detach()
        seconds = time.perf_counter() - t0
        ta_row = base | {
            "attack": what,
            "tool": "torchattacks",
            "robust_accuracy": _robust(model, x_adv, y, clean),
            "seconds": seconds,
            "fooled_by": "",
        }
        rows.append(ta_row)
        diff = row["robust_accuracy"] - ta_row["robust_accuracy"]
        target = TARGET_AUTOATTACK if what == "autoattack" else TARGET_COMPONENT
        row |= {"diff_points": diff, "target_points": target, "agrees": abs(diff) <= target}
        print(
            f"  {spec.name} ε={eps:.4g} {what:32s} torchattacks {ta_row['robust_accuracy']:6.2f}% "
            f"{seconds:8.1f} s   diff {diff:+.2f} (target ±{target:g})"
        )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=default_data_root())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--n", type=int, default=500, help="test examples per model")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--models", default=",".join(s.name for s in SPECS))
    ap.add_argument(
        "--attacks",
        default="autoattack,apgd-ce,apgd-t,fab-t,square",
        help="which rows (comma-separated); autoattack-paper adds robench's autoattack with "
        "the paper's 100 steps (what the benchmarks report)",
    )
    ap.add_argument("--work", type=Path, default=REPO / "results" / "autoattack-agreement")
    ap.add_argument(
        "-o", "--output", type=Path, default=REPO / "results" / "autoattack-agreement.csv"
    )
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.attacks = {a.strip() for a in args.attacks.split(",") if a.strip()}
    args.device = torch.device(args.device)
    try:
        import torchattacks  # noqa: F401

        args.torchattacks = True
    except ImportError:
        print("torchattacks is not installed (pip install -e '.[dev]'): robench rows only")
        args.torchattacks = False
    return args


def main(argv: list[str] | None = None) -> pd.DataFrame:
    args = parse_args(argv)
    where, versions = provenance.device_label(args.device), provenance.versions_line(VERSIONS)
    rows: list[dict[str, Any]] = []
    df = pd.DataFrame()
    for spec in SPECS:
        if spec.name not in args.models:
            continue
        model, test, info = trained(spec, args.data_root, args.work)
        model = model.to(args.device)
        for p in model.parameters():
            p.requires_grad_(False)
        x, y = seeded_examples(test, args.n, args.device)
        for eps in spec.eps:
            rows += [r | {"dataset": info.name} for r in score(spec, eps, model, x, y, info, args)]
            # written after every budget: an interrupted run keeps what it measured
            df = pd.DataFrame(rows)
            df["device"], df["versions"] = where, versions
            args.output.parent.mkdir(parents=True, exist_ok=True)
            df.to_csv(args.output, index=False)
    print(f"written to {args.output}")
    return df


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
