"""benchmarks/speed.py runs end to end on tiny sizes and writes a sane CSV."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("speed_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_speed_script_tiny(tmp_path: Path, one_thread) -> None:
    pytest.importorskip("art")
    pytest.importorskip("foolbox")
    speed = _load_script()
    out = tmp_path / "speed.csv"
    # an empty data root: the script falls back to scikit-learn's bundled digits (small-cnn)
    argv = ["--data-root", str(tmp_path / "no-data"), "--device", "cpu", "--n", "32"]
    argv += ["--repeats", "1", "--train-examples", "128", "--batch", "16", "-o", str(out)]
    speed.main(argv)

    df = pd.read_csv(out)
    assert set(df["section"]) == {"evaluation", "adapter", "training"}
    assert (df["seconds"] > 0).all()
    acc = df["robust_accuracy"].dropna()
    assert len(acc) and acc.between(0, 100).all()
    assert df["clean_accuracy"].dropna().between(0, 100).all()
    assert set(df["target_met"].dropna()) <= {"yes", "no"}
    assert df["device"].nunique() == 1 and "cpu" in df["device"].iloc[0]
    assert "robench" in df["versions"].iloc[0]

    ev = df[df["section"] == "evaluation"]
    assert ev["model"].nunique() == 2  # undefended and adversarially trained
    has_ta = importlib.util.find_spec("torchattacks") is not None
    tools = {"robench", "robench bf16+cl", "ART", "Foolbox"}
    tools |= {"torchattacks", "torchattacks bf16+cl"} if has_ta else set()
    for _, per_model in ev.groupby("model"):
        assert set(per_model["tool"]) == tools
        for tool in ("robench", "robench bf16+cl"):
            ours = per_model[per_model["tool"] == tool].iloc[0]
            assert ours["robust_accuracy"] <= ours["clean_accuracy"]
        assert (per_model[["ratio_or_speedup", "speedup_vs_fast"]] > 0).all().all()
        targets = per_model.dropna(subset=["target"])
        assert set(targets["tool"]) == tools - {
            "robench",
            "robench bf16+cl",
            "torchattacks bf16+cl",
        }

    adapter = df[df["section"] == "adapter"]
    assert len(adapter) == 4
    assert adapter["overhead_pct"].notna().sum() == 2

    training = df[df["section"] == "training"]
    assert len(training) == 6 and (training["images_per_s"] > 0).all()
    standard = training[training["what"].str.startswith("standard")]
    assert len(standard) == 2  # fp32 and bf16+cl, each the unit of its setting
    assert all(math.isclose(r, 1.0) for r in standard["ratio_or_speedup"])
