"""The benchmark file's schema: its TOML tables as pydantic models, before the plugin names and
parameters in them are resolved against the registry (:func:`robench.config.load_benchmark`
does that, and documents the file)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from robench.specs import EPS_SCHEMA, Epsilon, NormName, Precision

#: labels of the sanity attacks start with this (:mod:`robench.checks`): no attack of a
#: benchmark file may take one
SANITY_PREFIX = "sanity:"

_Strict = ConfigDict(extra="forbid")
_WithParams = ConfigDict(extra="allow")


class EvaluationConfig(BaseModel):
    """The ``[evaluation]`` table."""

    model_config = _Strict

    n_examples: int | None = Field(
        1000,
        ge=1,
        description="test examples scored (a seeded random subset); at most the test split's "
        "size when given, while the default (1000) takes the whole split where it is smaller",
    )
    batch_size: int = Field(500, ge=1)
    sanity: bool = Field(
        True,
        description="also run the sanity attacks that the trust checks use (PGD at L∞ ε = 0.5; "
        "random noise, Square with 500 queries and APGD-CE with 3 restarts at every budget); "
        "their rows have kind 'sanity'",
    )
    attack_misclassified: bool = Field(
        True,
        description="attack the clean-misclassified examples too, for the robust ≤ clean "
        "check (column adv_accuracy); robust accuracy counts clean-correct examples either way",
    )
    cascade: bool = Field(
        False,
        description="per budget, run the attacks cheapest first, each only on the examples "
        "no earlier one fooled: the worst case at a fraction of the cost, but an attack row "
        "then counts the examples robust to it and every attack before it",
    )
    precision: Precision = Field(
        "fp32",
        description="'bf16': the native attacks compute their gradients under bfloat16 "
        "autocast (faster where bf16 is native: GPUs, AVX-512 BF16 CPUs); examples are always "
        "scored, and PGD's early stops confirmed, in the model's own precision",
    )
    channels_last: bool | None = Field(
        None,
        description="evaluate the model and images (4-d) in channels_last memory format; "
        "unset: robench decides (channels_last on a CPU for convolutional models, and with "
        "precision 'bf16'; the given layout elsewhere)",
    )


class ExecutionConfig(BaseModel):
    """The ``[execution]`` table: how the grid runs, not what it computes (no cell's key
    depends on it)."""

    model_config = _Strict

    executor: Literal["local", "ray"] = Field(
        "local",
        description="'local': every cell in this process, in order; 'ray': trainings and "
        "evaluations as Ray tasks over a cluster (robench.rayexec; pip install -e '.[ray]')",
    )
    address: str | None = Field(
        None,
        description="ray: the cluster to join ('auto': the one this machine belongs to, or "
        "HOST:PORT); unset: start a local one on this machine",
    )
    workers: int | None = Field(
        None, ge=1, description="ray, local cluster: its CPUs (default: every core)"
    )
    train_cpus: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="ray: CPUs a training task asks for"
    )
    train_gpus: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="ray: GPUs a training task asks for (default: 1 where the cluster has GPUs, "
        "else 0)",
    )
    eval_cpus: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="ray: CPUs an evaluation task asks for"
    )
    eval_gpus: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="ray: GPUs an evaluation task asks for (default: as train_gpus)",
    )
    max_retries: int = Field(
        2, ge=0, description="ray: times a task whose worker process died is run again"
    )
    cell_timeout: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="seconds an evaluation cell (clean or one attack at one ε) may take: a cell "
        "past it is stopped and recorded as an error, and the run goes on (default: no limit)",
    )
    train_timeout: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="seconds one training (one defense, one seed) may take: past it, the "
        "training stops and the model's cells are recorded as errors (default: no limit)",
    )


class PluginTable(BaseModel):
    """A table naming a plugin; its other keys are the plugin's parameters."""

    model_config = _WithParams
    name: str

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


#: the largest seed + 1: seeds go to torch.manual_seed (up to 2**64 - 1) and to the int64
#: seed columns of the results
SEED_LIMIT = 2**63


def _seed_range(v: int) -> int:
    if not 0 <= v < SEED_LIMIT:
        # the one-line error adds the value given
        raise ValueError("a seed must be an integer from 0 to 2**63 - 1")
    return v


def _distinct(v: list[int]) -> list[int]:
    if len(set(v)) != len(v):
        raise ValueError("seeds must be distinct")
    return v


#: a random seed: 0 ≤ seed < 2**63
Seed = Annotated[int, AfterValidator(_seed_range)]
#: training seeds: at least one, all distinct
Seeds = Annotated[list[Seed], Field(min_length=1), AfterValidator(_distinct)]


class DefenseTable(PluginTable):
    """One ``[[defenses]]`` table."""

    label: str | None = None
    #: training seeds of this defense (default: the benchmark's ``seeds``)
    seeds: Seeds | None = None
    training: dict[str, Any] = Field(default_factory=dict)
    model: PluginTable | None = None


class AttackTable(PluginTable):
    """One ``[[attacks]]`` table."""

    label: str | None = None
    norm: NormName = "linf"
    #: a transfer attack: craft on this defense's model, score on every defense
    source: str | None = None
    eps: Annotated[
        list[Epsilon],
        Field(min_length=1),
        WithJsonSchema(
            {"anyOf": [EPS_SCHEMA, {"type": "array", "items": EPS_SCHEMA, "minItems": 1}]}
        ),
    ]

    @field_validator("eps", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return v if isinstance(v, list) else [v]


class BenchmarkFile(BaseModel):
    """A whole benchmark file, before its plugin names and parameters are resolved."""

    model_config = _Strict

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    description: str = ""
    seed: Seed = 0
    #: training seeds of every defense (default: ``[seed]``)
    seeds: Seeds | None = None
    output_dir: str | None = None
    threads: int | None = Field(
        None,
        ge=1,
        description="CPU threads for torch (default: torch's, one per core); CPU results "
        "depend on it, since float reductions are split across threads",
    )
    dataset: PluginTable
    model: PluginTable
    training: dict[str, Any] = Field(default_factory=dict)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    execution: ExecutionConfig = Field(default_factory=ExecutionConfig)
    #: at least one each (:func:`robench.config.load_benchmark` says so when there is none)
    defenses: list[DefenseTable] = Field(default_factory=list)
    attacks: list[AttackTable] = Field(default_factory=list)
