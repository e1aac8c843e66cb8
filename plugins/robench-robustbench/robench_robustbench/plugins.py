"""The ``robustbench`` model and the ``robustbench.pretrained`` defense."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from torch import nn

from robench.dataset import Data, DatasetInfo
from robench.defense import Defense, TrainContext
from robench.errors import ConfigError
from robench.model import Model
from robench.plugin import Params, benchmark_path
from robench_robustbench import zoo

DEFAULT_DIR = Path("~/.cache/robench/robustbench")


class RobustBenchModel(Model):
    """A RobustBench model-zoo model (its zoo name in `model`) with its published weights."""

    name = "robustbench"
    example_params = {"model": "Standard"}  # noqa: RUF012

    class Params(Params):
        # validated in this order: each check below reads the fields above it
        dataset: Literal["cifar10", "cifar100", "imagenet"] = Field(
            "cifar10", description="the RobustBench leaderboard the model is on"
        )
        threat_model: Literal["Linf", "L2", "corruptions"] = Field(
            "Linf", description="the leaderboard's threat model (Linf, L2 or corruptions)"
        )
        model: str = Field(
            description="the model's name in RobustBench's zoo, e.g. 'Carmon2019Unlabeled' "
            "(robench_robustbench.zoo_names(dataset, threat_model) lists them)"
        )
        download: bool = Field(
            True, description="download a missing checkpoint with RobustBench's downloader"
        )
        pretrained: bool = Field(
            True, description="load the published weights (false: the bare architecture)"
        )
        model_dir: Path = Field(
            DEFAULT_DIR,
            validate_default=True,
            description="RobustBench's checkpoint folder: <model_dir>/<dataset>/<threat_model>/"
            "<model>.pt (relative: to the benchmark file)",
        )

        @field_validator("threat_model", mode="before")
        @classmethod
        def _spelling(cls, value: object) -> object:
            if isinstance(value, str):  # "linf", like robench's norms, is RobustBench's "Linf"
                known = {t.lower(): t for t in zoo.THREAT_MODELS}
                return known.get(value.lower(), value)
            return value

        @field_validator("model", mode="after")
        @classmethod
        def _in_the_zoo(cls, name: str, info: ValidationInfo) -> str:
            if "dataset" in info.data and "threat_model" in info.data:
                zoo.check_name(name, info.data["dataset"], info.data["threat_model"])
            return name

        @field_validator("model_dir", mode="after")
        @classmethod
        def _resolve(cls, path: Path, info: ValidationInfo) -> Path:
            path = benchmark_path(path, info)
            d = info.data  # the fields above, those that are valid
            checked = {"dataset", "threat_model", "model", "download", "pretrained"} <= d.keys()
            if checked and d["pretrained"] and not d["download"]:
                paths = zoo.checkpoint_paths(d["model"], d["dataset"], d["threat_model"], path)
                missing = [p for p in paths if not p.is_file()]
                if missing:
                    raise ValueError(_missing_message(d["model"], missing[0]))
            return path

        def paths(self) -> list[Path]:
            """The checkpoint file(s) RobustBench keeps this model in."""
            return zoo.checkpoint_paths(self.model, self.dataset, self.threat_model, self.model_dir)

    def _what(self) -> str:
        p = self.params
        return f"RobustBench {p.dataset} {p.threat_model} model {p.model!r}"

    def check(self, info: DatasetInfo) -> None:
        p = self.params
        shape, classes = zoo.SHAPES[p.dataset], zoo.CLASSES[p.dataset]
        if info.shape != shape:
            want, got = "×".join(map(str, shape)), "×".join(map(str, info.shape))
            raise ConfigError(
                f"{self._what()} takes {want} inputs, but dataset {info.name!r} has {got}"
            )
        if info.num_classes != classes:
            raise ConfigError(
                f"{self._what()} predicts {classes} classes, but dataset {info.name!r} has "
                f"{info.num_classes}"
            )

    def build(self, info: DatasetInfo) -> nn.Module:
        p = self.params
        model = zoo.build(p.model, p.dataset, p.threat_model)
        if not p.pretrained:
            return model
        paths = p.paths()
        if p.download:
            zoo.download(p.model, p.dataset, p.threat_model, paths)
        for path in paths:
            if not path.is_file():
                raise ConfigError(_missing_message(p.model, path))
        model = zoo.load_weights(model, p.model, p.dataset, p.threat_model, paths).eval()
        setattr(model, zoo.WEIGHTS_ATTR, (p.dataset, p.threat_model, p.model))
        return model


def _missing_message(name: str, path: Path) -> str:
    return (
        f"RobustBench checkpoint of {name!r} not found: {path} (download = false; set download "
        "= true, or put RobustBench's file there)"
    )


class Pretrained(Defense):
    """No training: score the `robustbench` model with its published RobustBench weights."""

    name = "robustbench.pretrained"
    trains = False

    def fit(self, model: nn.Module, train: Data, ctx: TrainContext) -> nn.Module:
        if getattr(model, zoo.WEIGHTS_ATTR, None) is None:
            raise ConfigError(
                f"defense {self.name!r} scores RobustBench's published weights, but its model "
                f"({type(model).__name__}) has none: use it with a model table "
                '{ name = "robustbench", model = "<zoo name>" } and pretrained = true'
            )
        return model.to(ctx.device).eval()
