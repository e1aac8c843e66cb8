"""What do robench's ART and Foolbox adapters cost over calling the libraries directly?

On one model and one batch, times each library's PGD called directly (its model wrapper built
once, outside the timing, as the adapter does) against the same attack through robench
(``robench.attack.craft``: the adapter, the attack contract and the projection). Runs are
interleaved and repeated; the median is reported. Prints a table and writes
``results/adapter_overhead.csv`` with the device and library versions.

    python benchmarks/adapter_overhead.py [--data-root ../shared/data] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from robench import provenance
from robench.attack import craft
from robench.config import default_data_root
from robench.registry import get_registry
from robench.runner import resolve_device
from robench.threat import ThreatModel

REPO = Path(__file__).resolve().parents[1]


def _batch(data_root: Path, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``n`` MNIST test images if they are under the data root, else the bundled digits."""
    registry = get_registry()
    for name, params in (("mnist", {"download": False}), ("digits", {})):
        ds = registry.get("dataset", name).cls(**params)
        try:
            ds.check(data_root)
        except Exception:
            continue
        test = ds.load("test", data_root)
        return test.x[:n], test.y[:n], name
    raise SystemExit("no dataset available")


def _model(dataset: str, device: torch.device) -> torch.nn.Module:
    registry = get_registry()
    info = registry.get("dataset", dataset).cls().info(default_data_root())
    torch.manual_seed(0)
    name = "mnist-cnn" if dataset == "mnist" else "small-cnn"
    return registry.get("model", name).cls().build(info).to(device).eval()


def art_classifier(model, x, bounds=(0.0, 1.0)):
    """ART's ``PyTorchClassifier`` for ``model``, built as an ART user would (not through
    robench's adapter): cross-entropy, the input shape and classes of ``x``, on x's device."""
    from art.estimators.classification import PyTorchClassifier

    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    return PyTorchClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=n_classes,
        clip_values=bounds,
        device_type="gpu" if x.is_cuda else "cpu",
    )


def _direct_art(model, x, y, eps, steps, step):
    from art.attacks.evasion import ProjectedGradientDescent

    attack = ProjectedGradientDescent(
        art_classifier(model, x),
        norm=np.inf,
        eps=eps,
        eps_step=step,
        max_iter=steps,
        num_random_init=0,
        batch_size=len(x),
        verbose=False,
    )
    x_np, y_np = x.cpu().numpy(), y.cpu().numpy()
    return lambda: attack.generate(x=x_np, y=y_np)


def _direct_foolbox(model, x, y, eps, steps, step):
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0.0, 1.0), device=x.device)
    attack = fb.attacks.LinfPGD(abs_stepsize=step, steps=steps, random_start=False)
    return lambda: attack(fmodel, x, y, epsilons=eps)[1]


def _adapter(model, x, y, name, params, eps):
    attack = get_registry().get("attack", name).cls(ThreatModel("linf", eps), **params)
    return lambda: craft(attack, model, x, y).x_adv


def _time(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", type=Path, default=default_data_root())
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("-o", "--output", type=Path, default=REPO / "results" / "adapter_overhead.csv")
    args = ap.parse_args()

    device = resolve_device(args.device)
    x, y, dataset = _batch(args.data_root, args.batch)
    x, y = x.to(device), y.to(device)
    model = _model(dataset, device)
    for p in model.parameters():  # as during robench's attacks, for a like-for-like timing
        p.requires_grad_(False)
    eps, steps, step = args.eps, args.steps, args.eps / 4

    pairs = {
        "ART ProjectedGradientDescent": (
            _direct_art(model, x, y, eps, steps, step),
            _adapter(
                model,
                x,
                y,
                "art.ProjectedGradientDescent",
                {"max_iter": steps, "eps_step": step, "num_random_init": 0},
                eps,
            ),
        ),
        "Foolbox LinfPGD": (
            _direct_foolbox(model, x, y, eps, steps, step),
            _adapter(
                model,
                x,
                y,
                "foolbox.LinfPGD",
                {"steps": steps, "abs_stepsize": step, "random_start": False},
                eps,
            ),
        ),
    }
    info = provenance.device_info(device)
    where = f"{info.get('gpu', info['cpu'])} ({device}, {info['torch_threads']} threads)"
    rows = []
    for label, (direct, adapter) in pairs.items():
        direct(), adapter()  # warm-up: first-call costs (wrapping, allocation) out of the timing
        d, a = [], []
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            d += _time(direct, 1)
            a += _time(adapter, 1)
        md, ma = statistics.median(d), statistics.median(a)
        rows.append(
            {
                "attack": label,
                "dataset": dataset,
                "batch": len(x),
                "steps": steps,
                "eps": eps,
                "direct_s": round(md, 4),
                "adapter_s": round(ma, 4),
                "overhead_pct": round(100 * (ma / md - 1), 1),
                "repeats": args.repeats,
                "device": where,
            }
        )
    df = pd.DataFrame(rows)
    versions = provenance.versions(("robench", "robench-art", "robench-foolbox"))
    df["versions"] = "; ".join(f"{k} {v}" for k, v in versions.items())
    print(df.drop(columns="versions").to_string(index=False))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.output, index=False)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
