"""``benchmarks/speed.py``'s AutoAttack section: robench's ``autoattack`` against
``torchattacks.AutoAttack`` and ART's ``AutoAttack`` on the same model, examples and ε.

Tools (each on the first ``--aa-n`` test images, batches of ``--batch``, timed ``--aa-repeats``
times, default once: an AutoAttack run is long and nearly deterministic):

- robench: ``evaluate(model, x, y, [AutoAttack(threat)])``, what ``robench run`` runs for
  ``name = "autoattack"`` (the standard version as the paper defines it: APGD-CE, APGD-T and
  FAB-T with 100 iterations, 9 target classes, Square with 5000 queries), in fp32;
- robench steps=10: the same with ``steps = 10``, the configuration torchattacks' port runs;
- robench bf16+cl: the standard version with bf16 gradients (fp32 verdicts), channels_last
  (only on a device with native bfloat16: emulated, it is several times slower than fp32);
- torchattacks: ``torchattacks.AutoAttack(model, norm="Linf", eps=ε, version="standard",
  n_classes=10, seed=0)`` on every example, as its users call it (its components keep their
  defaults: 10 iterations);
- ART: ``art.attacks.evasion.AutoAttack`` with its default attack set (APGD-CE and APGD-DLR
  with 5 restarts each, DeepFool, Square; not the paper's ensemble), only on the first
  ``--aa-art-n`` images (it is far slower), its time scaled to ``--aa-n`` images (a note says
  so in ``what``).

Robust accuracy counts an example robust when it is classified correctly clean and after the
attack, for every tool. Target: robench ≥ 3× faster than torchattacks at a robust accuracy no
higher than torchattacks', on the undefended and on the adversarially trained model.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from robench import precision
from robench.evaluation import evaluate, predict
from robench.registry import get_registry
from robench.reproducibility import seed_everything
from robench.threat import ThreatModel

#: robench must be this many times faster than torchattacks (at ≤ its robust accuracy)
TARGET = 3.0

WHAT = {
    "robench": "autoattack standard (paper: 100 iterations, Square 5000), fp32",
    "robench steps=10": "autoattack with steps = 10 (torchattacks' configuration), fp32",
    "robench bf16+cl": "autoattack standard, bf16 gradients (fp32 verdicts), channels_last",
    "torchattacks": "AutoAttack(version='standard'): components at 10 iterations, Square 5000",
    "ART": "AutoAttack, ART's default set (APGD-CE/DLR ×5 restarts, DeepFool, Square)",
}


def _robust(model: nn.Module, x_adv: torch.Tensor, x, y, batch: int) -> float:
    clean = predict(model, x, batch) == y
    return 100 * (clean & (predict(model, x_adv, batch) == y)).float().mean().item()


def _robench(model, x, y, eps, bounds, batch, fast=False, **params):
    threat = ThreatModel("linf", eps, bounds)
    attack = get_registry().get("attack", "autoattack").cls(threat, **params)
    if fast and x.dim() == 4:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def run() -> float:
        ev = evaluate(
            model,
            x,
            y,
            [attack],
            batch_size=batch,
            precision="bf16" if fast else "fp32",
            seed=torch.initial_seed(),
        )
        return 100 * ev.robust_accuracy

    return run


def _torchattacks(model, x, y, eps, bounds, batch):
    import torchattacks

    attack = torchattacks.AutoAttack(
        model, norm="Linf", eps=eps, version="standard", n_classes=_classes(model, x), seed=0
    )

    def run() -> float:
        batches = zip(x.split(batch), y.split(batch), strict=True)
        adv = torch.cat([attack(xb, yb) for xb, yb in batches])
        return _robust(model, adv, x, y, batch)

    return run


def _classes(model: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


def _art(model, x, y, eps, bounds, batch):
    from adapter_overhead import art_classifier
    from art.attacks.evasion import AutoAttack

    classifier = art_classifier(model, x, bounds)
    attack = AutoAttack(classifier, norm=np.inf, eps=eps, eps_step=eps / 4, batch_size=batch)

    def run() -> float:
        adv = attack.generate(x=x.cpu().numpy(), y=y.cpu().numpy())
        return _robust(model, torch.from_numpy(adv).to(x.device), x, y, batch)

    return run


def autoattack_rows(label, model, x, y, args, bounds, has_torchattacks) -> list[dict[str, Any]]:
    """One row per tool for ``model`` on ``x[:aa_n]`` at ``args.eps``."""
    n = min(args.aa_n, len(y))
    x, y = x[:n], y[:n]
    eps, batch = args.eps, args.batch
    makers = {
        "robench": lambda: _robench(model, x, y, eps, bounds, batch),
        "robench steps=10": lambda: _robench(model, x, y, eps, bounds, batch, steps=10),
    }
    if precision.bf16_native(args.device):
        makers["robench bf16+cl"] = lambda: _robench(model, x, y, eps, bounds, batch, fast=True)
    else:  # emulated bfloat16 is several times slower than fp32: no figure worth its time
        print(f"  autoattack {label}: no bf16 row ({args.device} has no native bfloat16)")
    if has_torchattacks:
        makers["torchattacks"] = lambda: _torchattacks(model, x, y, eps, bounds, batch)
    n_art = min(args.aa_art_n, n)
    if n_art:
        makers["ART"] = lambda: _art(model, x[:n_art], y[:n_art], eps, bounds, batch)
    clean = 100 * (predict(model, x, batch) == y).float().mean().item()
    results: dict[str, tuple[float, list[float]]] = {}
    for tool, make in makers.items():
        fn = make()
        times, accs = [], []
        for r in range(args.aa_repeats if tool != "ART" else 1):
            seed_everything(r)
            start = _now(args.device)
            accs.append(fn())
            times.append(_now(args.device) - start)
        seconds = statistics.median(times) * (n / n_art if tool == "ART" else 1)
        results[tool] = (seconds, accs)
        print(f"  autoattack {label} ε={eps:g} {tool:18s} {seconds:8.1f} s  {accs[-1]:6.2f}%")
    ours_s = results["robench"][0]
    rows = []
    for tool, (seconds, accs) in results.items():
        acc = statistics.fmean(accs)
        what = WHAT[tool] + (f"; {n_art} images, time scaled to {n}" if tool == "ART" else "")
        row = {
            "section": "autoattack",
            "model": label,
            "tool": tool,
            "what": what,
            "n": n_art if tool == "ART" else n,
            "eps": eps,
            "seconds": seconds,
            "robust_accuracy": acc,
            "robust_accuracy_sd": statistics.stdev(accs) if len(accs) > 1 else None,
            "clean_accuracy": clean,
            "ratio_or_speedup": seconds / ours_s,
        }
        if tool == "torchattacks":
            met = [
                seconds / results[t][0] >= TARGET and statistics.fmean(results[t][1]) <= acc
                for t in ("robench", "robench bf16+cl")
                if t in results
            ]
            row |= {
                "target": f"robench's autoattack (fp32 or bf16) ≥{TARGET:g}× faster than "
                "torchattacks' at ≤ its robust accuracy",
                "target_met": "yes" if any(met) else "no",
            }
        rows.append(row)
    return rows


def _now(device: torch.device) -> float:
    """Wall time, after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
