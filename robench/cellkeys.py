"""The keys of evaluation cells (:mod:`robench.cellstore`) and of models loaded, not trained.

A model trained by a run is keyed by its training cell (:func:`robench.store.training_cell`);
a model that a defense loads (``checkpoint``, RobustBench) by its weights' SHA-256 together with
the model and defense plugins that build and wrap it (:func:`loaded_model_key`). An evaluation
cell is keyed by the scored model's key and everything else that decides its outcome
(:class:`CellKeys`); cells whose outcome depends on other cells say how: a cascade's attack names
the keys of the attacks it ran after, and a minimisation attack the seed of its one run. The
part of an attack that attacks the clean-misclassified examples (one attack per budget,
:mod:`robench.scoring`) is a cell of its own (:meth:`CellKeys.misclassified`). Everything that
can differ between two runs of one cell is in its record, so adding an attack to a benchmark
leaves the keys of the others as they were (except where it changes a cascade's order).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from robench.cellstore import evaluation_cell
from robench.scoring import MAIN, MISCLASSIFIED
from robench.store import cell_key
from robench.streamed import StreamedData

if TYPE_CHECKING:  # pragma: no cover
    from robench.config import AttackUse, PluginUse
    from robench.dataset import SplitData
    from robench.schema import EvaluationConfig
    from robench.scoring import Cell, Plan

#: what a loaded model's record looks like; changing it bumps it
LOADED_FORMAT = 1


def _plugin(u: PluginUse) -> dict[str, Any]:
    return {"name": u.entry.name, "params": u.params.model_dump(mode="json")}


def _digest(tensors: list[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over named tensors by value (name, dtype, shape and bytes of each, in order)."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # no copy
    return h.hexdigest()


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of ``module``'s state_dict, by value."""
    return _digest([(k, v) for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)])


def loaded_model_key(defense: PluginUse, model: PluginUse, module: nn.Module) -> str:
    """The key of a model that ``defense`` loaded (trained elsewhere): its weights' digest and
    the plugins that built it (not the file's path: the same weights elsewhere are the same
    model)."""
    record = {
        "format": LOADED_FORMAT,
        "loaded": {"defense": _plugin(defense), "model": _plugin(model)},
        "weights": weights_digest(module),
    }
    return cell_key(record)


def examples_digest(x: torch.Tensor, y: torch.Tensor) -> str:
    """SHA-256 of examples (the evaluation set, a training split), by value."""
    return _digest([("x", x), ("y", y)])


def split_digest(data: SplitData) -> str:
    """What identifies a split's content: :func:`examples_digest` of one in memory, the digest
    a streamed one carries (its files' names, labels and decoding settings)."""
    if isinstance(data, StreamedData):
        return data.digest
    return examples_digest(data.x, data.y)


class CellKeys:
    """The evaluation cells' records and keys of one run: the evaluation examples, the settings
    that decide outcomes, the data's bounds, and robench's and torch's versions are common to
    every cell; :meth:`clean` and :meth:`attack` add the rest."""

    def __init__(
        self,
        evaluation: EvaluationConfig,
        examples: str,
        bounds: tuple[float, float],
    ) -> None:
        import robench

        self.common = {
            "examples": examples,
            "bounds": list(bounds),
            "evaluation": evaluation.model_dump(
                mode="json",
                include={"batch_size", "precision", "attack_misclassified", "cascade"},
            )
            # the layout as the table set it (unset: false, as before robench decided it):
            # robench's own choice (precision.channels_last_pays) only reorders float sums
            | {"channels_last": bool(evaluation.channels_last)},
            "versions": {"robench": robench.__version__, "torch": torch.__version__},
        }

    def clean(self, model_key: str) -> tuple[dict[str, Any], str]:
        """The clean cell of a model: its clean-correct examples and the model checks."""
        return evaluation_cell("clean", model=model_key, **self.common)

    def attack(
        self,
        cell: Cell,
        use: AttackUse,
        plugin: str,
        plan: Plan,
        model_key: str,
        source_key: str,
        after: list[str],
    ) -> tuple[dict[str, Any], str]:
        """The cell of attack ``use`` (supplied by distribution ``plugin``, "name version") at
        ``cell``'s budget, on model ``model_key``; ``source_key``: a transfer attack's source
        model ("": white-box); ``after``: in a cascade, the keys of the cells it runs after."""
        minimal = None
        if cell.minimizes:
            first = plan.minimal_first(cell, MAIN)
            minimal = {"seed": first.seed, "first": cell is first}
        versions = self.common["versions"] | {"plugin": plugin}
        return evaluation_cell(
            "attack",
            model=model_key,
            **(self.common | {"versions": versions}),
            attack={
                **_plugin(use),
                "norm": cell.norm,
                "eps": cell.eps,
                "seed": cell.seed,
                "sanity": cell.sanity,
            },
            source=source_key,
            after=list(after),
            minimal=minimal,
        )

    @staticmethod
    def misclassified(record: dict[str, Any], cell: Cell, plan: Plan) -> tuple[dict[str, Any], str]:
        """The cell of the part of attack cell ``record`` that attacks the clean-misclassified
        examples (:meth:`robench.scoring.Scorer.score_misclassified`)."""
        part = dict(record, kind="misclassified", after=[])
        if cell.minimizes:
            first = plan.minimal_first(cell, MISCLASSIFIED)
            part["minimal"] = {"seed": first.seed, "first": cell is first}
        return evaluation_cell(**part)
