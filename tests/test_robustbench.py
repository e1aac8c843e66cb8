"""The robench-robustbench plugin: RobustBench zoo models scored from checkpoints on disk.

No download: each test writes a checkpoint in RobustBench's layout itself, for the zoo's
cheapest CIFAR-10 L∞ architecture (Ding2020MMA, a WideResNet-28-4 of 5.8M parameters).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

if importlib.util.find_spec("robustbench") is None:  # `import robustbench` fails in 1.1.1
    pytest.skip("robustbench is not installed", allow_module_level=True)
robench_robustbench = pytest.importorskip("robench_robustbench")

from robench_robustbench import zoo  # noqa: E402
from robench_robustbench.plugins import Pretrained, RobustBenchModel  # noqa: E402

import robench  # noqa: E402
from robench.cli import main  # noqa: E402
from robench.errors import ConfigError  # noqa: E402
from robench.registry import build_registry  # noqa: E402
from robench.reproducibility import eval_subset  # noqa: E402

from .helpers import plugin_module  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NAME = "Ding2020MMA"
N = 8
SCORED: dict[str, torch.nn.Module] = {}


class Spy(Pretrained):
    """``robustbench.pretrained`` that keeps the model it returns (a test plugin)."""

    name = "spy-pretrained"

    def fit(self, model, train, ctx):
        SCORED["model"] = super().fit(model, train, ctx)
        return SCORED["model"]


@robench.hookimpl
def robench_register_defenses(register):
    register(Spy)


REGISTRY = build_registry(
    entry_points=False,
    plugins=[
        robench_robustbench,
        plugin_module("spy", robench_register_defenses=robench_register_defenses),
    ],
)


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """A seeded initialisation of the zoo architecture, with non-trivial BN statistics."""
    torch.manual_seed(0)
    net = zoo.build(NAME, "cifar10", "Linf")
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def reference(weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    net = zoo.build(NAME, "cifar10", "Linf")
    net.load_state_dict(weights)
    return net.eval()


def save(model_dir: Path, obj: object, name: str = NAME) -> Path:
    """Save ``obj`` where RobustBench keeps the checkpoint of ``name``."""
    path = model_dir / "cifar10" / "Linf" / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def wrapped(weights: dict[str, torch.Tensor]) -> dict[str, object]:
    """As RobustBench's checkpoints often are: a dict, the state_dict saved from DataParallel."""
    return {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in weights.items()}}


def config(tmp_path: Path, model_dir: Path, **model) -> dict:
    return {
        "name": "rb",
        "seed": 0,
        "output_dir": str(tmp_path / "out"),
        "dataset": {"name": "cifar10"},
        "model": {
            "name": "robustbench",
            "model": NAME,
            "model_dir": str(model_dir),
            "download": False,
            **model,
        },
        "evaluation": {"n_examples": N, "batch_size": N, "sanity": False},
        "defenses": [{"name": "spy-pretrained", "label": f"{NAME} (RobustBench)"}],
        "attacks": [{"name": "fgsm", "eps": ["8/255"]}],
    }


def one_line_error(tmp_path: Path, cfg: dict, data_root: Path) -> str:
    with pytest.raises(ConfigError) as exc:
        robench.run(cfg, registry=REGISTRY, data_root=data_root, quiet=True)
    text = str(exc.value)
    assert "\n" not in text, text
    return text


def test_the_plugin_is_registered_through_its_entry_point():
    reg = build_registry()
    model, defense = reg.get("model", "robustbench"), reg.get("defense", "robustbench.pretrained")
    assert (model.plugin, model.distribution) == ("robustbench", "robench-robustbench")
    assert defense.cls.trains is False
    assert NAME in robench_robustbench.zoo_names("cifar10", "Linf")


def test_a_zoo_model_scores_exactly_its_checkpoint(tmp_path, weights, data_root):
    save(tmp_path / "zoo", wrapped(weights))
    df = robench.run(
        config(tmp_path, tmp_path / "zoo"), registry=REGISTRY, data_root=data_root, quiet=True
    )
    assert (df["status"] == "ok").all(), df["error"]
    assert set(df["kind"]) == {"clean", "attack", "worst-case"}

    ds = REGISTRY.get("dataset", "cifar10").cls()
    ev = eval_subset(ds.load("test", data_root), N, seed=0)
    ref = reference(weights)
    with torch.no_grad():
        expected = ref(ev.x)
    # the very weights of the file, by value (the run evaluates them in its own memory format)
    scored, file = SCORED["model"].state_dict(), ref.state_dict()
    assert scored.keys() == file.keys()
    assert all(torch.equal(scored[k], file[k]) for k in file)
    assert getattr(SCORED["model"], zoo.WEIGHTS_ATTR) == ("cifar10", "Linf", NAME)
    clean = df[df["kind"] == "clean"].iloc[0]
    assert clean["n_correct"] == int((expected.argmax(1) == ev.y).sum())


def test_a_plain_state_dict_loads_too(tmp_path, weights):
    save(tmp_path, weights)  # no wrapper, no prefix
    m = RobustBenchModel(model=NAME, model_dir=tmp_path, download=False)
    net = m.build(None)  # type: ignore[arg-type]  (build reads no dataset info)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), reference(weights)(x))


def test_an_unknown_zoo_name_is_a_one_line_validation_error(tmp_path, data_root):
    text = one_line_error(tmp_path, config(tmp_path, tmp_path, model="Ding2020MAM"), data_root)
    assert "model.model" in text or "model:" in text, text
    assert "unknown RobustBench cifar10 Linf model 'Ding2020MAM'" in text
    assert "did you mean 'Ding2020MMA'?" in text


def test_a_model_of_another_leaderboard_says_which(tmp_path, data_root):
    cfg = config(tmp_path, tmp_path, model="Hendrycks2020AugMix_WRN")  # cifar10 corruptions
    text = one_line_error(tmp_path, cfg, data_root)
    assert "it is a cifar10 corruptions" in text and "set dataset and threat_model" in text


def test_a_timm_hosted_zoo_model_is_refused_in_one_line(tmp_path, data_root):
    cfg = config(tmp_path, tmp_path, model="Debenedetti2022Light_XCiT-S12")
    text = one_line_error(tmp_path, cfg, data_root)
    assert "not supported by robench-robustbench" in text and "timm" in text


def test_a_missing_checkpoint_with_download_off_names_the_path(tmp_path, data_root):
    text = one_line_error(tmp_path, config(tmp_path, tmp_path / "empty"), data_root)
    path = tmp_path / "empty" / "cifar10" / "Linf" / f"{NAME}.pt"
    assert f"RobustBench checkpoint of {NAME!r} not found: {path}" in text


def test_the_dataset_shape_is_checked(tmp_path, weights):
    save(tmp_path, weights)
    cfg = config(tmp_path, tmp_path) | {"dataset": {"name": "digits"}}
    text = one_line_error(tmp_path, cfg, tmp_path)
    assert "takes 3×32×32 inputs, but dataset 'digits' has 1×8×8" in text


def test_a_checkpoint_carrying_code_is_refused(tmp_path, weights, data_root):
    marker = tmp_path / "EXECUTED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = save(tmp_path / "zoo", {**wrapped(weights), "extra": Payload()})
    df = robench.run(
        config(tmp_path, tmp_path / "zoo"), registry=REGISTRY, data_root=data_root, quiet=True
    )
    assert (df["status"] == "error").all()
    error = df.loc[df["kind"] == "clean", "error"].item()
    assert (
        "\n" not in error and f"checkpoint {path} refused: torch.load(weights_only=True)" in error
    )
    assert not marker.exists()


def test_a_benchmark_file_resolves_model_dir_and_pretrained_needs_the_weights(
    tmp_path, weights, data_root, monkeypatch
):
    save(tmp_path / "weights", wrapped(weights))
    bench = tmp_path / "bench.toml"
    bench.write_text(
        'name = "rb"\n[dataset]\nname = "cifar10"\n'
        f'[model]\nname = "robustbench"\nmodel = "{NAME}"\nmodel_dir = "weights"\n'
        "download = false\n"
        '[[defenses]]\nname = "robustbench.pretrained"\nlabel = "MMA (RobustBench)"\n'
        '[[attacks]]\nname = "fgsm"\neps = ["8/255"]\n'
    )
    monkeypatch.chdir(data_root)  # not the benchmark's folder
    result = CliRunner().invoke(main, ["validate", str(bench), "--data-root", str(data_root)])
    assert result.exit_code == 0, result.output

    # the defense refuses a model without RobustBench's weights (its cells fail, in one line)
    cfg = config(tmp_path, tmp_path / "weights", pretrained=False)
    cfg["defenses"] = [{"name": "robustbench.pretrained"}]
    cfg["evaluation"]["n_examples"] = 2
    df = robench.run(cfg, registry=REGISTRY, data_root=data_root, quiet=True)
    error = df.loc[df["kind"] == "clean", "error"].item()
    assert "has none: use it with a model table" in error and "\n" not in error


def test_a_missing_checkpoint_is_downloaded_with_robustbenchs_downloader(
    tmp_path, weights, monkeypatch
):
    calls = []

    def fake_download(gdrive_id, fname_save):  # what gdown would write
        calls.append(gdrive_id)
        torch.save(wrapped(weights), fname_save)

    monkeypatch.setattr(zoo.robustbench().utils, "download_gdrive_new", fake_download)
    net = RobustBenchModel(model=NAME, model_dir=tmp_path).build(None)  # type: ignore[arg-type]
    path = tmp_path / "cifar10" / "Linf" / f"{NAME}.pt"
    assert path.is_file() and len(calls) == 1
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), reference(weights)(x))
    RobustBenchModel(model=NAME, model_dir=tmp_path).build(None)  # type: ignore[arg-type]
    assert len(calls) == 1  # found on disk the second time


def test_a_failed_download_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    def offline(gdrive_id, fname_save):
        Path(fname_save).write_bytes(b"<html>partial")
        raise ConnectionError("Failed to establish a new connection\nmore detail")

    monkeypatch.setattr(zoo.robustbench().utils, "download_gdrive_new", offline)
    with pytest.raises(ConfigError) as exc:
        RobustBenchModel(model=NAME, model_dir=tmp_path).build(None)  # type: ignore[arg-type]
    text = str(exc.value)
    path = tmp_path / "cifar10" / "Linf" / f"{NAME}.pt"
    assert "\n" not in text
    assert f"could not download RobustBench model {NAME!r}" in text and str(path) in text
    assert "ConnectionError: Failed to establish a new connection" in text
    assert list(path.parent.iterdir()) == []
