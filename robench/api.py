"""The plugin API in one import: base classes and helpers for writing plugins.

from robench.api import Attack, Defense, Model, Dataset, Params, ThreatModel

It also holds :func:`evaluate`, the robust accuracy of a model of your own under attacks, scored
as ``robench run`` scores a defense (:class:`AttackOutcome`: one attack at one budget), the
:data:`hookimpl` marker for a plugin's registration hooks, and :func:`model_device_dtype` (where
and in what precision a model runs: what an adapter of another library needs to know).
Everything a plugin needs is here; :mod:`robench.testing` checks a plugin against the contract.
"""

from robench import hookimpl
from robench.attack import Attack, Crafted, attack_mode, craft
from robench.dataset import Data, Dataset, DatasetInfo, SplitData
from robench.defense import Defense, TrainContext
from robench.errors import ConfigError, ContractError, PluginError, error_line
from robench.evaluation import Evaluation, evaluate
from robench.model import Model, Normalize, model_device_dtype
from robench.plugin import NoParams, Params, Plugin, benchmark_path
from robench.precision import Precision, full_precision, gradient_autocast, reduced
from robench.scoring import AttackOutcome
from robench.specs import AttackSpec, Epsilon, NormName
from robench.streamed import StreamedData
from robench.threat import ThreatModel
from robench.training import TrainingConfig, train_loop

__all__ = [
    "Attack",
    "AttackOutcome",
    "AttackSpec",
    "ConfigError",
    "ContractError",
    "Crafted",
    "Data",
    "Dataset",
    "DatasetInfo",
    "Defense",
    "Epsilon",
    "Evaluation",
    "Model",
    "NoParams",
    "NormName",
    "Normalize",
    "Params",
    "Plugin",
    "PluginError",
    "Precision",
    "SplitData",
    "StreamedData",
    "ThreatModel",
    "TrainContext",
    "TrainingConfig",
    "attack_mode",
    "benchmark_path",
    "craft",
    "error_line",
    "evaluate",
    "full_precision",
    "gradient_autocast",
    "hookimpl",
    "model_device_dtype",
    "reduced",
    "train_loop",
]
