"""The ``checkpoint`` defense: a model trained elsewhere, scored from its weights on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import robench
from robench.api import Defense
from robench.cli import main
from robench.defenses.standard import StandardTraining
from robench.registry import build_registry

from .helpers import plugin_module, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

SAVED: dict[str, dict[str, torch.Tensor]] = {}


class Saving(Defense):
    """Standard training that keeps a copy of the trained weights (a test plugin)."""

    name = "saving-standard"

    def fit(self, model, train, ctx):
        trained = StandardTraining().fit(model, train, ctx)
        SAVED["weights"] = {k: v.detach().clone() for k, v in trained.state_dict().items()}
        return trained


@robench.hookimpl
def robench_register_defenses(register):
    register(Saving)


REGISTRY = build_registry(
    entry_points=False,
    plugins=[plugin_module("saving", robench_register_defenses=robench_register_defenses)],
)


def _config(tmp_path: Path, defense: dict, out: str) -> dict:
    # the same label, so every attack cell gets the same seed as in the trained run
    return tiny_config(tmp_path, output_dir=str(tmp_path / out), defenses=[defense])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    df = robench.run(
        _config(tmp, {"name": "saving-standard", "label": "model"}, "trained"),
        registry=REGISTRY,
        quiet=True,
    )
    weights = SAVED["weights"]
    save_file(weights, str(tmp / "model.safetensors"))
    torch.save(weights, tmp / "model.pt")
    torch.save({"epoch": 3, "state_dict": weights}, tmp / "wrapped.pt")
    torch.save({f"module.{k}": v for k, v in weights.items()}, tmp / "parallel.pt")
    return tmp, df


def _numbers(df: pd.DataFrame) -> pd.DataFrame:
    return df[["kind", "attack", "norm", "eps", "n_correct", "accuracy", "adv_accuracy"]]


@pytest.mark.parametrize("file", ["model.safetensors", "model.pt", "wrapped.pt", "parallel.pt"])
def test_a_saved_model_scores_exactly_as_when_it_was_trained(trained, file):
    tmp, reference = trained
    df = robench.run(
        _config(
            tmp, {"name": "checkpoint", "label": "model", "path": str(tmp / file)}, f"out-{file}"
        ),
        registry=REGISTRY,
        quiet=True,
    )
    assert (df["status"] == "ok").all(), df["error"]
    assert set(df["defense_name"]) == {"checkpoint"}
    pd.testing.assert_frame_equal(_numbers(df), _numbers(reference))


def test_a_relative_path_is_taken_from_the_benchmark_file(trained, tmp_path, monkeypatch):
    tmp, _ = trained
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "m.safetensors").write_bytes((tmp / "model.safetensors").read_bytes())
    bench = tmp_path / "bench.toml"
    bench.write_text(
        'name = "own"\n[dataset]\nname = "digits"\n[model]\nname = "small-cnn"\n'
        '[[defenses]]\nname = "checkpoint"\npath = "weights/m.safetensors"\n'
        '[[attacks]]\nname = "fgsm"\neps = [0.1]\n'
    )
    monkeypatch.chdir(tmp)  # not the benchmark's folder
    result = CliRunner().invoke(main, ["validate", str(bench)])
    assert result.exit_code == 0, result.output


def _bench(tmp_path: Path, path: str) -> Path:
    bench = tmp_path / "bench.toml"
    bench.write_text(
        f'name = "own"\noutput_dir = "out"\n[dataset]\nname = "digits"\n[model]\n'
        f'name = "small-cnn"\n[evaluation]\nn_examples = 40\n[[defenses]]\n'
        f'name = "checkpoint"\npath = "{path}"\n[[defenses]]\nname = "standard"\n'
        f'[[attacks]]\nname = "fgsm"\neps = [0.1]\n'
    )
    return bench


def test_a_missing_checkpoint_is_a_one_line_validation_error(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(_bench(tmp_path, "nowhere.pt"))])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"Error: {tmp_path / 'bench.toml'}: defenses[0].path: ")
    assert "checkpoint file not found" in line and "nowhere.pt" in line


def _bad_files(tmp_path: Path, trained_dir: Path) -> dict[str, tuple[Path, str]]:
    weights = torch.load(trained_dir / "model.pt", weights_only=True)
    files: dict[str, tuple[Path, str]] = {}
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    files["corrupt safetensors"] = (corrupt, "is not loadable")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((trained_dir / "model.pt").read_bytes()[:200])
    files["truncated torch file"] = (truncated, "is not loadable")

    marker = tmp_path / "EXECUTED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    payload = tmp_path / "payload.pt"
    torch.save({"state_dict": weights, "extra": Payload()}, payload)
    files["pickle carrying code"] = (payload, "refused: torch.load(weights_only=True)")
    wrong = dict(weights)
    first = next(iter(wrong))
    wrong["extra.weight"] = wrong.pop(first)
    renamed = tmp_path / "renamed.safetensors"
    save_file(wrong, str(renamed))
    files["wrong keys"] = (renamed, f"missing keys {first}; unexpected keys extra.weight")
    shaped = dict(weights)
    layer = next(k for k, v in weights.items() if v.dim() > 1 and v.shape[0] > 1)
    shaped[layer] = torch.zeros(1, *weights[layer].shape[1:])
    reshaped = tmp_path / "reshaped.safetensors"
    save_file(shaped, str(reshaped))
    files["wrong shape"] = (reshaped, f"{layer} has shape (1,")
    return files


def test_a_bad_checkpoint_fails_its_own_cells_in_one_line(trained, tmp_path):
    trained_dir, _ = trained
    for what, (path, expected) in _bad_files(tmp_path, trained_dir).items():
        out = tmp_path / path.stem
        result = CliRunner().invoke(
            main, ["run", str(_bench(tmp_path, str(path))), "-o", str(out), "-q"]
        )
        assert result.exit_code == 1, (what, result.output)
        df = pd.read_csv(out / "results.csv", keep_default_na=False)
        bad, good = df[df["defense"] == "checkpoint"], df[df["defense"] == "standard"]
        assert (bad["status"] == "error").all() and (good["status"] == "ok").all(), what
        error = bad.loc[bad["kind"] == "clean", "error"].item()
        assert "\n" not in error and expected in error, (what, error)
        skipped = bad.loc[bad["kind"] == "attack", "error"]
        assert skipped.str.startswith("not run: loading failed").all(), what
        assert "Traceback" not in result.output
    assert not (tmp_path / "EXECUTED").exists()
