"""How long does a benchmark take on 1, 4 or 8 GPUs with ``--executor ray``? On paper.

The Ray executor (:mod:`robench.rayexec`) submits one training task per model (defense × seed,
in the run's order) at the start and one evaluation task per model when its training (and its
transfer sources') has finished; each task holds one GPU (the defaults of ``train_gpus`` and
``eval_gpus`` on a GPU cluster), and Ray starts queued tasks in submission order as GPUs free
up. This script replays that policy on task costs and prints the makespan for each GPU count,
with the lower bound max(total / GPUs, longest training + evaluation).

Task costs come from one of two places:

``--costs RUN_DIR``: **measured**, from a finished run of the same benchmark (its
    ``results.csv``: each model's ``train_seconds`` and the ``seconds`` of its cells, whose sum
    is the evaluation task). A model of a seed the run lacks costs what seed 0's did.
otherwise: **a cost model**, in units of one plain training pass (forward + backward with weight
    gradients) over one image of the defense's model, converted to seconds by ``--unit``:

    - training, per image and epoch: standard 1; FGSM mixed (clean + adversarial pass and one
      input gradient) 8/3; Fast AT 5/3; PGD-k AT (2k + 3)/3 (``../shared/reference.md``'s cost
      model: published PGD-7 came in at 6.9×); TRADES and MART (k KL steps, a clean forward,
      a training pass on clean and adversarial) (2k + 7)/3;
    - evaluation, per image: an input-gradient step 2/3, a forward pass 1/3; per budget FGSM 1
      step on every image, then (cascade) on the fraction ``--robust`` still robust: PGD-20,
      AutoAttack (APGD-CE 100 + APGD-T 9 × 100 steps, FAB-T 9 × 100 steps at 1 unit each,
      Square 5000 forward passes), FMN-100; the sanity attacks (PGD-20 at ε 0.5; per budget
      noise, Square-500 and APGD-CE 3 × 100) on every image;
    - ``--unit``: seconds per unit for PreActResNet-18 on the GPU; the default, 0.576 ms, is
      Wong et al.'s published Fast AT (15 epochs of 50,000 images in 12 min, mixed precision:
      5/3 units per image and epoch); smaller models cost ``--small`` of that per unit
      (default 0.05: a GPU runs a tiny CNN far below its peak).

The cost model's numbers are estimates, printed with every task so they can be checked; a GPU
run of the benchmark (``benchmarks/gpu.sh``) gives the measured costs for ``--costs``.

    python benchmarks/makespan.py benchmarks/cifar.toml --seeds 0,1,2 --gpus 1,4,8
    python benchmarks/makespan.py benchmarks/cifar.toml --costs results/cifar10 --gpus 1,4,8
"""

from __future__ import annotations

import argparse
import heapq
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from robench.config import Benchmark, load_benchmark
from robench.runner import model_grid, transfer_sources

#: training cost per image and epoch, in plain training passes, by defense plugin
TRAIN_PASSES = {
    "standard": lambda p: 1.0,
    "mixed": lambda p: 8 / 3,
    "fast-at": lambda p: 5 / 3,
    "adversarial": lambda p: (2 * p.get("attack", {}).get("steps", 10) + 3) / 3,
    "pgd-at": lambda p: (2 * p.get("steps", 10) + 3) / 3,
    "trades": lambda p: (2 * p.get("steps", 10) + 7) / 3,
    "mart": lambda p: (2 * p.get("steps", 10) + 7) / 3,
}
GRAD, FORWARD = 2 / 3, 1 / 3
#: AutoAttack (standard) on one image that stays robust: APGD-CE, APGD-T, FAB-T, Square
AA_UNITS = 100 * GRAD + 900 * GRAD + 900 * 1.0 + 5000 * FORWARD
#: per-image evaluation units of each attack plugin on the images it runs on
ATTACK_UNITS = {"fgsm": GRAD, "autoattack": AA_UNITS}
BIG_MODELS = ("preact-resnet18",)


@dataclass
class Task:
    kind: str  # "train" or "eval"
    label: str
    seed: int
    seconds: float


def model_costs(bench: Benchmark, args) -> dict[tuple[str, int], tuple[float, float]]:
    """``{(defense, seed): (train seconds, eval seconds)}`` from the cost model."""
    n_train = args.train_images
    n_eval = bench.evaluation.n_examples or 10_000
    out = {}
    for d, seed in model_grid(bench):
        model = (d.model or bench.model).entry.name
        unit = args.unit * (1.0 if model in BIG_MODELS else args.small)
        params = d.params.model_dump(mode="json")
        passes = TRAIN_PASSES[d.entry.name](params) if d.entry.cls.trains else 0.0
        train = passes * d.training.epochs * n_train * unit
        robust = args.robust if d.entry.name not in ("standard", "mixed") else args.robust_weak
        per_image = 0.0
        for a in bench.attacks:
            for _ in a.eps:
                if a.entry.name == "fgsm":
                    per_image += GRAD
                elif a.entry.name == "pgd":
                    per_image += robust * a.params.steps * GRAD
                elif a.entry.name == "autoattack":
                    per_image += robust * AA_UNITS
                else:  # FMN and other minimisation attacks: run once, scored at every ε
                    per_image += robust * getattr(a.params, "steps", 100) * GRAD / len(a.eps)
        budgets = {e for a in bench.attacks for e in a.eps}
        per_image += 20 * GRAD + len(budgets) * (FORWARD + 500 * FORWARD + 300 * GRAD)
        out[(d.label, seed)] = (train, per_image * n_eval * unit)
    return out


def measured_costs(bench: Benchmark, run_dir: Path) -> dict[tuple[str, int], tuple[float, float]]:
    """``{(defense, seed): (train seconds, eval seconds)}`` from a finished run's results.csv."""
    df = pd.read_csv(run_dir / "results.csv")
    seen = {
        (label, int(seed)): (float(g["train_seconds"].max()), float(g["seconds"].sum()))
        for (label, seed), g in df.groupby(["defense", "train_seed"])
    }
    out = {}
    for d, seed in model_grid(bench):
        cost = seen.get((d.label, seed)) or seen.get((d.label, 0))
        if cost is None:
            raise SystemExit(f"{run_dir}/results.csv has no cells of defense {d.label!r}")
        out[(d.label, seed)] = cost
    return out


def makespan(bench: Benchmark, costs: dict, gpus: int) -> float:
    """Replay the Ray executor's submission order on ``gpus`` GPUs, one task per GPU."""
    grid = [(d.label, seed) for d, seed in model_grid(bench)]
    sources = transfer_sources(bench)
    queue: list[Task] = [Task("train", *m, costs[m][0]) for m in grid]
    trained: set[tuple[str, int]] = set()
    waiting = set(grid)
    free, clock, running = gpus, 0.0, []  # running: heap of (end, n, task)
    n = 0
    while queue or running:
        while free and queue:
            task = queue.pop(0)
            heapq.heappush(running, (clock + task.seconds, n, task))
            n, free = n + 1, free - 1
        clock, _, done = heapq.heappop(running)
        free += 1
        if done.kind == "train":
            trained.add((done.label, done.seed))
        for at in grid:  # evaluation tasks whose models (and transfer sources) are trained
            needs = {at} | {(s, at[1]) for s in sources}
            if at in waiting and needs <= trained:
                waiting.discard(at)
                queue.append(Task("eval", *at, costs[at][1]))
    return clock


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("benchmark", type=Path)
    ap.add_argument("--seeds", default=None, help="training seeds, e.g. 0,1,2 (default: file's)")
    ap.add_argument("--gpus", default="1,4,8")
    ap.add_argument("--costs", type=Path, default=None, help="a finished run's folder")
    ap.add_argument("--unit", type=float, default=12 * 60 / (15 * 50_000 * 5 / 3))
    ap.add_argument("--small", type=float, default=0.05)
    ap.add_argument("--train-images", type=int, default=50_000)
    ap.add_argument("--robust", type=float, default=0.5, help="robust fraction after FGSM (AT)")
    ap.add_argument("--robust-weak", type=float, default=0.1, help="… for standard / mixed")
    ap.add_argument("-o", "--output", type=Path, default=None, help="CSV of the makespans")
    args = ap.parse_args(argv)
    overrides = [f"seeds=[{args.seeds}]"] if args.seeds else []
    bench = load_benchmark(args.benchmark, check_data=False, overrides=overrides)
    grid = [(d.label, seed) for d, seed in model_grid(bench)]
    if args.costs is not None:
        costs, source = measured_costs(bench, args.costs), f"measured in {args.costs}"
    else:
        costs, source = model_costs(bench, args), f"cost model, {args.unit * 1e3:.3f} ms/unit"
    print(f"{bench.name}: {len(grid)} models ({source}); task costs in minutes:")
    for label in dict.fromkeys(lab for lab, _ in grid):
        train, ev = costs[(label, next(s for lab, s in grid if lab == label))]
        print(f"  {label:24s} train {train / 60:7.1f}  eval {ev / 60:6.1f}")
    total = sum(t + e for t, e in costs.values())
    longest = max(t + e for t, e in costs.values())
    rows, one = [], makespan(bench, costs, 1)
    for g in (int(x) for x in args.gpus.split(",")):
        span = makespan(bench, costs, g)
        bound = max(total / g, longest)
        rows.append(
            {
                "benchmark": bench.name,
                "models": len(grid),
                "gpus": g,
                "makespan_h": round(span / 3600, 2),
                "lower_bound_h": round(bound / 3600, 2),
                "speedup": round(one / span, 2),
                "costs": source,
            }
        )
        print(
            f"{g} GPU{'s' if g > 1 else ' '}: makespan {span / 3600:6.2f} h "
            f"(lower bound {bound / 3600:.2f} h, speed-up {rows[-1]['speedup']:.2f}×)"
        )
    if args.output:
        pd.DataFrame(rows).to_csv(args.output, index=False)


if __name__ == "__main__":
    main()
