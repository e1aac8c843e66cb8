"""The model store: trained models kept under the output folder by the key of their training
cell, reused by later runs, never read back half-written, corrupt or of another cell."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from pydantic import Field
from torch import nn

import robench
from robench.api import Defense, Params
from robench.config import load_benchmark
from robench.registry import build_registry
from robench.store import ModelStore, cell_key, short, training_cell

from .helpers import plugin_module, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

#: columns that measure time, not results
TIMING = ["seconds", "train_seconds"]


class Counted(Defense):
    """Plain training with label smoothing ``smoothing``; records every ``fit`` (a test
    plugin)."""

    name = "counted"
    fits: list[str] = []  # noqa: RUF012

    class Params(Params):
        smoothing: float = Field(0.0, ge=0, lt=1)

    def fit(self, model, train, ctx):
        type(self).fits.append(f"{self.params.smoothing}")
        smoothing = self.params.smoothing

        def loss(m, x, y):
            return nn.functional.cross_entropy(m(x), y, label_smoothing=smoothing)

        return ctx.train(model, train, loss)


class Wrapped(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, x):
        return self.inner(x.clamp(0, 1))


class WrapsWithoutRestore(Defense):
    """Returns a wrapper from ``fit`` but does not override ``restore`` (a test plugin)."""

    name = "wraps"
    fits = 0

    def fit(self, model, train, ctx):
        type(self).fits += 1
        return ctx.train(Wrapped(model), train, lambda m, x, y: ctx.cross_entropy(m(x), y))


@robench.hookimpl
def robench_register_defenses(register):
    register(Counted)
    register(WrapsWithoutRestore)


@pytest.fixture(scope="module")
def registry():
    plugin = plugin_module("store_plugins", robench_register_defenses=robench_register_defenses)
    return build_registry(entry_points=False, plugins=[plugin])


@pytest.fixture(autouse=True)
def _reset_counts():
    Counted.fits.clear()
    WrapsWithoutRestore.fits = 0


def _config(tmp_path, **overrides):
    base = {
        "training": {"epochs": 1, "lr": 3e-3},
        "evaluation": {"n_examples": 60, "batch_size": 64, "sanity": False},
        "defenses": [
            {"name": "counted", "label": "a"},
            {"name": "counted", "label": "b", "smoothing": 0.1},
        ],
        "attacks": [{"name": "fgsm", "eps": [0.1, 0.2]}],
    }
    return tiny_config(tmp_path, **(base | overrides))


def _results(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=TIMING).reset_index(drop=True)


def _models(df: pd.DataFrame) -> dict:
    with open(df.attrs["json"]) as fh:
        return json.load(fh)["models"]


def _cells(df: pd.DataFrame) -> dict:
    with open(df.attrs["json"]) as fh:
        return json.load(fh)["cells"]


def _run(config, registry, **kwargs):
    return robench.run(config, registry=registry, quiet=True, **kwargs)


def _n_stored(tmp_path) -> int:
    from robench.cellstore import CellStore

    with CellStore(tmp_path / "out") as cells:
        return len(cells)


def test_the_data_root_s_spelling_does_not_change_the_keys(tmp_path, registry, data_root):
    """The training data is keyed by value: real MNIST read through the data root spelt
    another way (a link elsewhere, another machine's mount) reuses every model and cell."""
    config = _config(
        tmp_path,
        dataset={"name": "mnist"},
        training={"epochs": 1, "lr": 3e-3, "train_examples": 256},
        defenses=[{"name": "counted", "label": "a"}],
    )
    first = _run(config, registry, data_root=data_root)
    link = tmp_path / "elsewhere"
    link.symlink_to(data_root.resolve(), target_is_directory=True)
    again = _run(config, registry, data_root=link)
    assert Counted.fits == ["0.0"] and _cells(again)["computed"] == 0
    pd.testing.assert_frame_equal(_results(again), _results(first))


def _forget_cells(tmp_path) -> None:
    """Drop the stored evaluation cells (robench.cellstore), so that a rerun must score the
    models again: it then reuses (or trains) them through the model store."""
    (tmp_path / "out" / "cells.sqlite").unlink()


def test_a_rerun_trains_nothing_and_gives_the_same_table(tmp_path, registry, capfd):
    first = _run(_config(tmp_path), registry)
    assert sorted(Counted.fits) == ["0.0", "0.1"]
    out = tmp_path / "out" / "models"
    keys = sorted(first["model_key"].unique())
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{k}.{ext}" for k in keys for ext in ("json", "safetensors")
    )
    sidecar = json.loads((out / f"{keys[0]}.json").read_text())
    assert short(sidecar["key"]) == keys[0] and len(sidecar["key"]) == 64
    assert sidecar["weights"] == f"{keys[0]}.safetensors"
    assert len(sidecar["epoch_losses"]) == 1 and sidecar["train_seconds"] > 0
    assert sidecar["cell"]["versions"]["robench"] == robench.__version__
    assert sidecar["device"]["device"] == "cpu" and "commit" in sidecar["git"]
    assert len(_models(first)["stored"]) == 2
    n_cells = int((first["kind"] != "worst-case").sum())
    assert _cells(first) | {"file": ""} == {"file": "", "computed": n_cells, "reused": 0}

    capfd.readouterr()
    again = robench.run(_config(tmp_path), registry=registry)
    assert sorted(Counted.fits) == ["0.0", "0.1"]  # nothing trained again
    pd.testing.assert_frame_equal(_results(again), _results(first))
    # the clean row says how long the reused model took to train
    clean = again[again["kind"] == "clean"].set_index("model_key")["train_seconds"]
    for key in keys:
        stored = json.loads((out / f"{key}.json").read_text())
        assert clean[key] == pytest.approx(stored["train_seconds"])
    # every cell was stored: nothing computed, and not even a model loaded
    assert _cells(again) | {"file": ""} == {"file": "", "computed": 0, "reused": n_cells}
    assert _models(again)["reused"] == [] and _models(again)["stored"] == []
    err = capfd.readouterr().err
    assert "its stored cells are reused" in err and "training" not in err
    assert f"cells: 0 computed, {n_cells} reused from" in err

    # without the cells, the models are scored again: reused from the model store
    _forget_cells(tmp_path)
    again = robench.run(_config(tmp_path), registry=registry)
    assert sorted(Counted.fits) == ["0.0", "0.1"]
    pd.testing.assert_frame_equal(_results(again), _results(first))
    err = capfd.readouterr().err
    assert f"a: reused {keys[0]} (trained " in err or f"a: reused {keys[1]} (trained " in err
    assert "training" not in err
    models = _models(again)
    assert sorted(short(k) for k in models["reused"]) == keys and models["stored"] == []


def test_adding_an_attack_trains_nothing_and_keeps_the_old_numbers(tmp_path, registry):
    first = _run(_config(tmp_path), registry)
    n_stored = _n_stored(tmp_path)
    more = [{"name": "fgsm", "eps": [0.1, 0.2]}, {"name": "pgd", "eps": [0.1, 0.3], "steps": 3}]
    again = _run(_config(tmp_path, attacks=more), registry)
    assert len(Counted.fits) == 2  # the first run's only
    # only the new cells ran: per defense, PGD at two budgets, each with its part on the
    # clean-misclassified examples (PGD is now each budget's most expensive attack), stored as
    # a cell of its own
    assert _cells(again)["computed"] == 2 * 2
    assert _n_stored(tmp_path) == n_stored + 2 * 2 * 2
    old = _results(again[again["attack"].isin(["clean", "fgsm"])])
    before = _results(first[first["kind"] != "worst-case"])
    # one attack per budget also attacks the clean-misclassified examples (robench.scoring): at
    # ε = 0.1 that is now PGD, so FGSM's adv_accuracy (and n_attacked) there change by design;
    # its robust accuracy does not
    by_design = ["adv_accuracy", "n_attacked"]
    pd.testing.assert_frame_equal(old.drop(columns=by_design), before.drop(columns=by_design))
    untouched = old["eps"] != 0.1
    pd.testing.assert_frame_equal(old[untouched], before[untouched])
    assert (again.loc[again["attack"] == "pgd", "status"] == "ok").all()


def test_changing_one_defense_retrains_that_defense_alone(tmp_path, registry):
    first = _run(_config(tmp_path), registry)
    changed = [
        {"name": "counted", "label": "a"},
        {"name": "counted", "label": "b", "smoothing": 0.2},
    ]
    again = _run(_config(tmp_path, defenses=changed), registry)
    assert Counted.fits == ["0.0", "0.1", "0.2"]
    a = lambda df: _results(df[df["defense"] == "a"])  # noqa: E731
    pd.testing.assert_frame_equal(a(again), a(first))
    keys = lambda df: df.groupby("defense")["model_key"].first()  # noqa: E731
    assert keys(again)["a"] == keys(first)["a"] and keys(again)["b"] != keys(first)["b"]
    assert len(list((tmp_path / "out" / "models").glob("*.safetensors"))) == 3


def test_fresh_trains_again_and_replaces_the_stored_model(tmp_path, registry):
    first = _run(_config(tmp_path), registry)
    sidecars = sorted((tmp_path / "out" / "models").glob("*.json"))
    created = [json.loads(p.read_text())["train_seconds"] for p in sidecars]
    again = _run(_config(tmp_path), registry, fresh=True)
    assert len(Counted.fits) == 4
    models = _models(again)
    assert models["fresh"] is True and models["reused"] == [] and len(models["stored"]) == 2
    assert sorted((tmp_path / "out" / "models").glob("*.json")) == sidecars
    assert [json.loads(p.read_text())["train_seconds"] for p in sidecars] != created
    # training is deterministic on the CPU: two trainings give the same table
    pd.testing.assert_frame_equal(_results(again), _results(first))


def test_the_cli_fresh_flag_trains_again(tmp_path):
    from robench.cli import main

    bench = tmp_path / "b.toml"
    bench.write_text(
        'name = "b"\noutput_dir = "out"\n[dataset]\nname = "digits"\n[model]\nname = "small-cnn"\n'
        "[training]\nepochs = 1\n[evaluation]\nn_examples = 30\nsanity = false\n"
        '[[defenses]]\nname = "standard"\n[[attacks]]\nname = "fgsm"\neps = [0.1]\n'
    )

    def models(*args: str) -> dict:
        res = CliRunner().invoke(main, ["run", str(bench), "-q", *args])
        assert res.exit_code == 0, res.output
        return json.loads((tmp_path / "out" / "results.json").read_text())["models"]

    first = models()
    assert len(first["stored"]) == 1 and first["reused"] == []
    _forget_cells(tmp_path)
    assert models()["reused"] == first["stored"]
    fresh = models("--fresh")
    assert fresh["fresh"] is True and fresh["stored"] == first["stored"] and fresh["reused"] == []


@pytest.mark.parametrize("lost", ["sidecar", "weights"])
def test_a_model_half_written_is_not_used(tmp_path, registry, capfd, lost):
    first = _run(_config(tmp_path), registry)
    key = first.loc[first["defense"] == "a", "model_key"].iloc[0]
    out = tmp_path / "out" / "models"
    (out / f"{key}.{'json' if lost == 'sidecar' else 'safetensors'}").unlink()
    _forget_cells(tmp_path)
    capfd.readouterr()
    again = robench.run(_config(tmp_path), registry=registry)
    assert Counted.fits == ["0.0", "0.1", "0.0"]  # defense a alone trained again
    pd.testing.assert_frame_equal(_results(again), _results(first))
    err = capfd.readouterr().err
    if lost == "weights":  # a sidecar naming a missing file: said so
        assert f"stored model {key} not used: its weights file {key}.safetensors is missing" in err
    assert (out / f"{key}.json").exists() and (out / f"{key}.safetensors").exists()
    assert _models(again)["stored"] and short(_models(again)["stored"][0]) == key


@pytest.mark.parametrize("damage", ["flipped", "garbage"])
def test_a_corrupt_stored_model_is_trained_again_with_a_note(tmp_path, registry, capfd, damage):
    first = _run(_config(tmp_path), registry)
    key = first.loc[first["defense"] == "a", "model_key"].iloc[0]
    weights, sidecar = ModelStore(tmp_path / "out").paths(_models(first)["stored"][0])
    assert weights.name == f"{key}.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "flipped":  # a bit flipped in a tensor: only the checksum can tell
        data[-3] ^= 0x10
        weights.write_bytes(bytes(data))
        expected = "is corrupt (its size or SHA-256 differs from the sidecar's)"
    else:  # not a safetensors file at all, though the sidecar's checksum says it is the one
        import hashlib

        weights.write_bytes(b"\x00" * 64)
        record = json.loads(sidecar.read_text())
        record |= {"bytes": 64, "sha256": hashlib.sha256(b"\x00" * 64).hexdigest()}
        sidecar.write_text(json.dumps(record))
        expected = "is not loadable"
    _forget_cells(tmp_path)
    capfd.readouterr()
    again = robench.run(_config(tmp_path), registry=registry)
    assert Counted.fits == ["0.0", "0.1", "0.0"]
    pd.testing.assert_frame_equal(_results(again), _results(first))
    lines = [line for line in capfd.readouterr().err.splitlines() if "not used" in line]
    assert len(lines) == 1 and expected in lines[0] and lines[0].endswith("training again")
    (note,) = _models(again)["not_used"]
    assert expected in note["why"]
    # stored again, whole: the next run reuses it
    _forget_cells(tmp_path)
    _run(_config(tmp_path), registry)
    assert len(Counted.fits) == 3


def test_weights_that_do_not_fit_the_restored_module_are_not_used(tmp_path, registry, capfd):
    config = _config(tmp_path, defenses=[{"name": "wraps"}])
    first = _run(config, registry)
    _forget_cells(tmp_path)
    capfd.readouterr()
    again = robench.run(config, registry=registry)
    assert WrapsWithoutRestore.fits == 2  # restore() gives the bare model: keys differ
    pd.testing.assert_frame_equal(_results(again), _results(first))
    (line,) = [line for line in capfd.readouterr().err.splitlines() if "not used" in line]
    assert "does not fit the model: missing keys" in line and line.endswith("training again")


def test_transfer_sources_work_with_reused_models(tmp_path):
    config = _config(
        tmp_path,
        defenses=[{"name": "standard", "label": "base"}, {"name": "fast-at", "eps": 0.1}],
        attacks=[{"name": "fgsm", "label": "from-base", "source": "base", "eps": [0.2]}],
    )
    first = robench.run(config, quiet=True)
    _forget_cells(tmp_path)
    again = robench.run(config, quiet=True)
    assert len(_models(again)["reused"]) == 2
    assert (again["status"] == "ok").all()
    pd.testing.assert_frame_equal(_results(again), _results(first))


def test_a_new_defense_crafts_on_a_source_whose_cells_were_all_stored(tmp_path):
    """The source defense's cells are all reused, so its model is loaded (from the model store)
    only when the new defense's transfer cell needs it."""
    defenses = [{"name": "standard", "label": "base"}, {"name": "fast-at", "eps": 0.1}]
    attacks = [{"name": "fgsm", "label": "from-base", "source": "base", "eps": [0.2]}]
    first = robench.run(_config(tmp_path, defenses=defenses, attacks=attacks), quiet=True)
    more = [*defenses, {"name": "standard", "label": "other", "training": {"lr": 5e-3}}]
    again = robench.run(_config(tmp_path, defenses=more, attacks=attacks), quiet=True)
    assert (again["status"] == "ok").all()
    assert len(_models(again)["reused"]) == 1 and len(_models(again)["stored"]) == 1
    assert _cells(again)["computed"] == 2  # the new defense's clean and transfer cells
    old = again[again["defense"] != "other"]
    pd.testing.assert_frame_equal(_results(old), _results(first))


def test_an_art_preprocessing_defense_round_trips_through_the_store(tmp_path):
    pytest.importorskip("art", reason="adversarial-robustness-toolbox is not installed")
    pytest.importorskip("robench_art", reason="plugins/robench-art is not installed")
    config = _config(
        tmp_path,
        defenses=[{"name": "art.FeatureSqueezing", "label": "squeeze", "bit_depth": 3}],
    )
    first = robench.run(config, quiet=True)
    (key,) = first["model_key"].unique()
    weights = ModelStore(tmp_path / "out").paths(_models(first)["stored"][0])[0]
    from safetensors.torch import load_file

    assert all(k.startswith("model.") for k in load_file(str(weights)))  # the wrapper's keys
    _forget_cells(tmp_path)
    again = robench.run(config, quiet=True)
    assert [short(k) for k in _models(again)["reused"]] == [key]
    pd.testing.assert_frame_equal(_results(again), _results(first))


#: a training split's digest (robench.cellkeys.examples_digest), as the runner passes it
DATA = "0" * 64


def _key(tmp_path, registry, **overrides) -> str:
    bench = load_benchmark(_config(tmp_path, **overrides), registry=registry, check_data=False)
    info = bench.dataset.instantiate().info(None)
    return cell_key(training_cell(bench, bench.defenses[0], 0, info, registry, DATA))


def test_the_key_covers_the_training_cell_and_the_versions(tmp_path, registry, monkeypatch):
    key = _key(tmp_path, registry)
    assert len(key) == 64 and key == _key(tmp_path, registry)
    # what is not part of the training cell: attacks, evaluation, labels, output folder
    attacks = [{"name": "fgsm", "eps": [0.1]}, {"name": "pgd", "eps": [0.3], "steps": 3}]
    assert _key(tmp_path, registry, attacks=attacks) == key
    assert _key(tmp_path, registry, evaluation={"n_examples": 30, "cascade": True}) == key
    relabelled = [{"name": "counted", "label": "renamed"}]
    assert _key(tmp_path, registry, defenses=relabelled) == key
    assert _key(tmp_path, registry, output_dir=str(tmp_path / "elsewhere")) == key
    # what is
    assert _key(tmp_path, registry, training={"epochs": 2, "lr": 3e-3}) != key
    assert _key(tmp_path, registry, model={"name": "small-cnn", "hidden": 32}) != key
    assert _key(tmp_path, registry, dataset={"name": "digits", "split_seed": 1}) != key
    smoothed = [{"name": "counted", "smoothing": 0.1}]
    assert _key(tmp_path, registry, defenses=smoothed) != key
    bench = load_benchmark(_config(tmp_path), registry=registry, check_data=False)
    info = bench.dataset.instantiate().info(None)
    d = bench.defenses[0]
    assert cell_key(training_cell(bench, d, 1, info, registry, DATA)) != key  # the seed
    newer = dataclasses.replace(d, entry=dataclasses.replace(d.entry, version="9.9"))
    assert cell_key(training_cell(bench, newer, 0, info, registry, DATA)) != key  # plugin version
    # the training data, by value
    assert cell_key(training_cell(bench, d, 0, info, registry, "other data")) != key
    monkeypatch.setattr(robench, "__version__", "9.9.9")
    assert _key(tmp_path, registry) != key


def test_the_key_covers_a_defense_inner_attack(tmp_path, registry):
    def key(attack: dict) -> str:
        return _key(tmp_path, registry, defenses=[{"name": "adversarial", "attack": attack}])

    fgsm = key({"name": "fgsm", "eps": 0.1})
    assert fgsm == key({"name": "fgsm", "eps": 0.1})
    assert fgsm != key({"name": "fgsm", "eps": 0.2})
    assert fgsm != key({"name": "pgd", "eps": 0.1, "steps": 3})


def test_store_writes_leave_no_temporary_files(tmp_path):
    from robench.store import weights_of

    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared)  # tied weights: storage shared
    store = ModelStore(tmp_path)
    store.save("ab" * 32, weights_of(model), {"train_seconds": 1.0})
    assert sorted(p.name for p in store.dir.iterdir()) == [
        f"{'ab' * 10}.json",
        f"{'ab' * 10}.safetensors",
    ]
    found, why = store.lookup("ab" * 32)
    assert why == "" and found is not None and found.train_seconds == 1.0
    loaded = store.load(found)
    assert torch.equal(loaded["0.weight"], shared.weight) and set(loaded) == set(model.state_dict())
    assert store.lookup("cd" * 32) == (None, "")


def test_cells_and_models_of_another_robench_version_are_not_mixed_in(
    tmp_path, registry, monkeypatch
):
    first = _run(_config(tmp_path), registry)
    n_cells = int((first["kind"] != "worst-case").sum())
    monkeypatch.setattr(robench, "__version__", "99.0.0")
    again = _run(_config(tmp_path), registry)
    assert len(Counted.fits) == 4  # both defenses trained again
    assert _cells(again)["computed"] == n_cells and _cells(again)["reused"] == 0
    assert set(again["model_key"]).isdisjoint(first["model_key"])
    # the same numbers: only the version differs
    pd.testing.assert_frame_equal(
        _results(again).drop(columns="model_key"), _results(first).drop(columns="model_key")
    )
