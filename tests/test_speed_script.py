"""benchmarks/speed.py runs end to end on tiny sizes and writes a sane CSV."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

from robench import precision

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
    speed.main([*argv, "--contract-batch", "2", "--aa-n", "16", "--aa-art-n", "4"])

    df = pd.read_csv(out)
    assert set(df["section"]) == {"evaluation", "autoattack", "adapter", "training", "contract"}
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
    tools = {"robench", "robench bf16+cl", "robench PGD", "robench PGD NCHW", "ART", "Foolbox"}
    tools |= {"torchattacks", "torchattacks bf16+cl"} if has_ta else set()
    for _, per_model in ev.groupby("model"):
        assert set(per_model["tool"]) == tools
        for tool in ("robench", "robench bf16+cl", "robench PGD", "robench PGD NCHW"):
            ours = per_model[per_model["tool"] == tool].iloc[0]
            assert ours["robust_accuracy"] <= ours["clean_accuracy"]
        ratios = ["ratio_or_speedup", "speedup_vs_fast", "speedup_vs_pgd_only"]
        assert (per_model[ratios] > 0).all().all()
        targets = per_model.dropna(subset=["target"])
        assert set(targets["tool"]) == tools - {
            "robench",
            "robench bf16+cl",
            "robench PGD",
            "robench PGD NCHW",
            "torchattacks bf16+cl",
        }

    aa = df[df["section"] == "autoattack"]
    aa_tools = {"robench", "robench steps=10", "ART"}
    aa_tools |= {"torchattacks"} if has_ta else set()
    aa_tools |= {"robench bf16+cl"} if precision.bf16_native("cpu") else set()
    for _, per_model in aa.groupby("model"):
        assert set(per_model["tool"]) == aa_tools
        ours = per_model.set_index("tool")
        assert ours.loc["robench", "robust_accuracy"] <= ours.loc["robench", "clean_accuracy"]
        assert ours.loc["ART", "n"] == 4 and ours.loc["robench", "n"] == 16
        assert set(per_model.dropna(subset=["target"])["tool"]) == ({"torchattacks"} & aa_tools)
    assert aa["model"].nunique() == 2

    adapter = df[df["section"] == "adapter"]
    assert len(adapter) == 4
    assert adapter["overhead_pct"].notna().sum() == 2

    training = df[df["section"] == "training"]
    assert len(training) == 6 and (training["images_per_s"] > 0).all()
    standard = training[training["what"].str.startswith("standard")]
    assert len(standard) == 2  # fp32 and bf16+cl, each the unit of its setting
    assert all(math.isclose(r, 1.0) for r in standard["ratio_or_speedup"])


def test_speed_script_contract_section_alone(tmp_path: Path, one_thread) -> None:
    speed = _load_script()
    out = tmp_path / "contract.csv"
    argv = ["--data-root", str(tmp_path / "no-data"), "--device", "cpu", "--sections", "contract"]
    argv += ["--n", "8", "--batch", "8", "--repeats", "1", "--contract-batch", "2", "-o", str(out)]
    speed.main(argv)

    df = pd.read_csv(out)
    assert set(df["section"]) == {"contract"}
    assert (df["seconds"] > 0).all()
    assert df["model"].str.startswith("small-cnn").sum() == 3  # digits: check, direct, craft
    assert df["model"].str.startswith("preact-resnet18").sum() == 2  # check, forward-backward
    checks = df[df["tool"] == "robench contract"]
    assert len(checks) == 2 and set(checks["target_met"]) <= {"yes", "no"}
    # the check's share of an attack call, in percent of it
    assert all(map(math.isclose, checks["overhead_pct"], 100 * checks["ratio_or_speedup"]))
    assert (checks["overhead_pct"] > 0).all()
    craft = df[df["tool"] == "robench craft"].iloc[0]
    assert math.isclose(craft["overhead_pct"], 100 * (craft["ratio_or_speedup"] - 1))
