"""What robench's CPU rules buy, each native attack timed both ways, interleaved in one process,
on the same model, examples and seeds (``--compare``):

- ``chunks`` (default): chunked passes (``robench/chunks.py``): the whole batch in one pass
  (``ROBENCH_CPU_CHUNK_MB=0``) against chunks (the default);
- ``layout``: the memory format (``robench.precision.channels_last_pays``): the layout given
  (``evaluate(..., channels_last=False)``, NCHW) against robench's choice (the default:
  channels_last for these convolutional models on a CPU).

Models: the PGD-AT NSL CNN of ``benchmarks/mnist.toml`` at ε = 0.1 and the CIFAR CNN of
``benchmarks/cifar.toml`` at 8/255 (seed 0; trained, or reused, as
``benchmarks/autoattack_agreement.py`` does). Attacks (``--attacks``): Square (200 queries),
APGD-CE (50 steps), PGD-20 and FAB-T (one target class, 100 steps), through
``robench.evaluation.evaluate`` with one batch of ``--n`` images. Prints and writes (``-o``)
the best of ``--repeats`` times per mode, the speed-up and both robust accuracies::

    python benchmarks/chunking.py --data-root ../shared/data --threads 1 \
        --attacks square-200,apgd-ce-50,pgd-20
    python benchmarks/chunking.py --data-root ../shared/data --threads 1 --compare layout \
        -o results/layout.csv
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from autoattack_agreement import SPECS, seeded_examples, trained

from robench import provenance
from robench.config import default_data_root
from robench.evaluation import evaluate
from robench.registry import get_registry
from robench.threat import ThreatModel

REPO = Path(__file__).resolve().parent.parent
MODELS = {"mnist-pgd-at": 0.1, "cifar-cnn": 8 / 255}
ATTACKS = {
    "square-200": ("square", {"n_queries": 200}),
    "apgd-ce-50": ("apgd", {"steps": 50}),
    "pgd-20": ("pgd", {"steps": 20}),
    "fab-t-100": ("fab", {"steps": 100, "targeted": True, "n_target_classes": 1}),
}
#: per comparison, its two modes: the environment's ROBENCH_CPU_CHUNK_MB and evaluate()'s
#: channels_last for each
MODES: dict[str, tuple[tuple[str, str, bool | None], ...]] = {
    "chunks": (("whole", "0", False), ("chunks", "", False)),
    "layout": (("given", "", False), ("channels_last", "", None)),
}


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, default=default_data_root())
    ap.add_argument("--n", type=int, default=500, help="test images, one batch")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per mode (best kept)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated")
    ap.add_argument("--compare", choices=sorted(MODES), default="chunks")
    ap.add_argument("--work", type=Path, default=REPO / "results" / "autoattack-agreement")
    ap.add_argument("-o", "--output", type=Path, default=REPO / "results" / "chunking.csv")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    registry, rows = get_registry(), []
    for spec in SPECS:
        if spec.name not in args.models.split(","):
            continue
        eps = MODELS[spec.name]
        model, test, info = trained(spec, args.data_root, args.work)
        for p in model.parameters():
            p.requires_grad_(False)
        x, y = seeded_examples(test, args.n, torch.device("cpu"))
        threat = ThreatModel("linf", eps, info.bounds)
        for label in args.attacks.split(","):
            name, params = ATTACKS[label]
            attack = registry.get("attack", name).cls(threat, **params)
            (a, *_), (b, *_) = modes = MODES[args.compare]
            times: dict[str, list[float]] = {a: [], b: []}
            robust: dict[str, float] = {}
            for _ in range(args.repeats):
                for mode, budget, channels_last in modes:
                    os.environ["ROBENCH_CPU_CHUNK_MB"] = budget
                    t0 = time.perf_counter()
                    ev = evaluate(
                        model,
                        x,
                        y,
                        [(label, attack)],
                        batch_size=args.n,
                        channels_last=channels_last,
                    )
                    times[mode].append(time.perf_counter() - t0)
                    robust[mode] = 100 * ev.robust_accuracy
            os.environ.pop("ROBENCH_CPU_CHUNK_MB", None)
            row = {
                "model": spec.name,
                "eps": eps,
                "attack": label,
                "n": len(y),
                f"seconds_{a}": min(times[a]),
                f"seconds_{b}": min(times[b]),
                "speedup": min(times[a]) / min(times[b]),
                f"robust_{a}": robust[a],
                f"robust_{b}": robust[b],
            }
            rows.append(row)
            print(
                f"{spec.name} ε={eps:.4g} {label:11s} {a} {row[f'seconds_{a}']:7.1f} s  "
                f"{b} {row[f'seconds_{b}']:7.1f} s  {row['speedup']:.2f}×  robust "
                f"{row[f'robust_{a}']:.1f} / {row[f'robust_{b}']:.1f} %",
                flush=True,
            )
    df = pd.DataFrame(rows)
    df["repeats"] = args.repeats
    provenance.write_measurements(df, args.output, torch.device("cpu"), ("robench", "torch"))
    return df


if __name__ == "__main__":
    main()
