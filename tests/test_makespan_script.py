"""benchmarks/makespan.py replays the Ray executor's order: checked on measured task costs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "makespan.py"


def _script():
    spec = importlib.util.spec_from_file_location("makespan_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def _bench(tmp_path: Path) -> Path:
    path = tmp_path / "b.toml"
    path.write_text(
        'name = "m"\nseeds = [0, 1]\n[dataset]\nname = "digits"\n[model]\nname = "small-cnn"\n'
        '[[defenses]]\nname = "standard"\nlabel = "a"\n'
        '[[defenses]]\nname = "standard"\nlabel = "b"\n'
        '[[attacks]]\nname = "fgsm"\neps = [0.1]\n'
        '[[attacks]]\nname = "fgsm"\nlabel = "from-a"\nsource = "a"\neps = [0.1]\n'
    )
    return path


def _run(tmp_path: Path, costs: dict[str, tuple[float, float]]) -> Path:
    """A results.csv of seed 0 only: each model's training and two cells (their sum: eval)."""
    rows = [
        {"defense": label, "train_seed": 0, "train_seconds": t, "seconds": e / 2}
        for label, (t, e) in costs.items()
        for _ in range(2)
    ]
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame(rows).to_csv(run / "results.csv", index=False)
    return run


def test_makespans_from_measured_costs(tmp_path, capsys):
    m = _script()
    bench = m.load_benchmark(_bench(tmp_path), check_data=False)
    run = _run(tmp_path, {"a": (100.0, 10.0), "b": (40.0, 30.0)})
    costs = m.measured_costs(bench, run)
    assert costs[("b", 1)] == (40.0, 30.0)  # seed 1 costs what seed 0 did
    assert m.makespan(bench, costs, 1) == 2 * (110 + 70)  # one GPU: every task in turn
    # four GPUs: the trainings at once; b's evaluation waits for a (its transfer source)
    assert m.makespan(bench, costs, 4) == 100 + 30
    # two GPUs: a0 (0..100) and b0 (0..40) train, then a1 (40..140) and b1 (100..140); the
    # evaluations queue behind them: a0 140..150, b0 140..170, a1 150..160, b1 160..190
    assert m.makespan(bench, costs, 2) == 190
    out = tmp_path / "makespan.csv"
    m.main([str(_bench(tmp_path)), "--costs", str(run), "--gpus", "1,2,4", "-o", str(out)])
    table = pd.read_csv(out)
    assert list(table["gpus"]) == [1, 2, 4]
    assert list(table["speedup"]) == [1.0, round(360 / 190, 2), round(360 / 130, 2)]
    assert "measured" in capsys.readouterr().out


def test_the_cost_model_prices_every_task(tmp_path):
    m = _script()
    bench = m.load_benchmark(_bench(tmp_path), check_data=False)
    args = m.argparse.Namespace(
        unit=1e-3, small=1.0, train_images=1000, robust=0.5, robust_weak=0.5
    )
    costs = m.model_costs(bench, args)
    assert set(costs) == {("a", 0), ("b", 0), ("a", 1), ("b", 1)}
    train, ev = costs[("a", 0)]
    assert train == 5 * 1000 * 1e-3  # standard: one pass per image and epoch, 5 epochs
    assert ev > 0
