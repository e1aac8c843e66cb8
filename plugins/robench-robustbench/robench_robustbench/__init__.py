"""robench-robustbench: score RobustBench model-zoo models with robench.

Registers the model ``robustbench`` (a zoo model by name, its published weights read with
``torch.load(weights_only=True)``) and the defense ``robustbench.pretrained`` (trains nothing:
scores the model as RobustBench published it). RobustBench itself is imported on first use.
"""

from __future__ import annotations

import robench
from robench_robustbench.plugins import Pretrained, RobustBenchModel
from robench_robustbench.zoo import zoo_names

__version__ = "0.1.0"


@robench.hookimpl
def robench_register_models(register):
    register(RobustBenchModel)


@robench.hookimpl
def robench_register_defenses(register):
    register(Pretrained)


__all__ = [
    "Pretrained",
    "RobustBenchModel",
    "robench_register_defenses",
    "robench_register_models",
    "zoo_names",
]
