"""benchmarks/gpu_cifar.py (the GPU script's CIFAR training figures) runs end to end on the CPU
at toy sizes and writes a sane CSV."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_cifar.py"


def test_gpu_cifar_script_runs_tiny_on_the_cpu(tmp_path, data_root):
    if not (data_root / "npz" / "cifar10-train-first4000.npz").is_file():
        pytest.skip(f"no CIFAR-10 pieces under {data_root}")
    spec = importlib.util.spec_from_file_location("gpu_cifar", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu.csv"
    args = ["--device", "cpu", "--data-root", str(data_root), "--train-images", "16"]
    args += ["--epochs", "2", "--eval-n", "4", "--pgd-steps", "1", "--precision", "fp32"]
    df = module.main([*args, "-o", str(out)])
    again = pd.read_csv(out)
    assert len(again) == len(df) == 4  # two recipes × two epochs
    assert list(again["recipe"]) == ["preact18-fast-at"] * 2 + ["preact18-pgd10-at"] * 2
    assert list(again["epoch"]) == [1, 2, 1, 2]
    assert (again["train_images"] == 16).all() and (again["eval_n"] == 4).all()
    assert (again["seconds_per_epoch"] > 0).all()
    assert (again["pgd1_accuracy"] <= again["clean_accuracy"]).all()
    assert {"projected_minutes_15_epochs", "projected_minutes_200_epochs"} <= set(again.columns)
    assert again["data"].str.contains("not comparable").all()
    assert again["device"].notna().all() and again["versions"].str.contains("torch").all()
