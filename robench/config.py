"""The TOML benchmark format: parsing and complete validation before anything trains.

A benchmark file looks like::

    name = "quickstart"
    seed = 0                               # evaluation subset; training seed by default
    seeds = [0, 1, 2]                      # optional: train (and score) each defense per seed
    output_dir = "../results/quickstart"   # relative to this file

    [dataset]
    name = "digits"                        # other keys: the dataset's parameters

    [model]
    name = "small-cnn"

    [training]                             # defaults for every defense
    epochs = 10
    lr = 1e-3

    [evaluation]
    n_examples = 360

    [[defenses]]
    name = "adversarial"
    label = "pgd-at"                       # optional, unique; defaults to name
    training = { epochs = 15 }             # optional overrides of [training]
    seeds = [0]                            # optional override of the benchmark's seeds
    attack = { name = "pgd", eps = 0.1, steps = 7 }

    [[attacks]]
    name = "pgd"
    norm = "linf"
    eps = [0.05, 0.1, "8/255"]
    steps = 20                             # other keys: the attack's parameters

Every error is raised as one :class:`~robench.errors.ConfigError` line naming the file and
field, e.g. ``quickstart.toml: defenses[1].attack.steps: must be >= 1 (got 0)``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from robench.bases import unwritable_dir
from robench.errors import ConfigError
from robench.overrides import apply as apply_overrides
from robench.overrides import keep as keep_entries
from robench.plugin import Params
from robench.registry import Entry, Registry, get_registry, unknown_name_message
from robench.schema import SANITY_PREFIX, BenchmarkFile, EvaluationConfig, ExecutionConfig
from robench.training_config import TrainingConfig
from robench.validation import (
    Validator,
    check_no_bool_numbers,
    check_numbers,
    check_unique,
    raise_one_line,
)

__all__ = [
    "AttackUse",
    "Benchmark",
    "DefenseUse",
    "EvaluationConfig",
    "PluginUse",
    "check_data_and_model",
    "default_data_root",
    "load_benchmark",
    "read_toml",
]

#: the ``attack`` of robench's own rows, which no attack's label may take
_RESERVED_LABELS = ("clean", "worst-case")


@dataclass(frozen=True)
class PluginUse:
    """A validated reference to a registered plugin with its parameters."""

    entry: Entry
    params: Params

    def instantiate(self, *args: Any) -> Any:
        return self.entry.cls(*args, self.params)


@dataclass(frozen=True)
class DefenseUse(PluginUse):
    label: str = ""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    #: the model this defense trains (the benchmark's ``[model]`` unless overridden)
    model: PluginUse | None = None
    #: training seeds: the defense is trained and scored once per seed
    seeds: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class AttackUse(PluginUse):
    label: str = ""
    norm: str = "linf"
    eps: tuple[float, ...] = ()
    #: transfer attack: the label of the defense whose model the examples are crafted on
    #: ("" for white-box: each defense's own model)
    source: str = ""


@dataclass(frozen=True)
class Benchmark:
    """A fully validated benchmark."""

    name: str
    description: str
    seed: int
    #: CPU threads for torch during the run (None: torch's default)
    threads: int | None
    source: Path | None
    output_dir: Path
    dataset: PluginUse
    model: PluginUse
    training: TrainingConfig
    evaluation: EvaluationConfig
    defenses: tuple[DefenseUse, ...]
    attacks: tuple[AttackUse, ...]
    raw: dict[str, Any]
    #: the ``[execution]`` table: time limits (how the run goes, not what it computes)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    #: the command-line overrides applied to the file (``--set KEY=VALUE``, in order)
    overrides: tuple[str, ...] = ()
    #: the entries kept from the file (``--defenses``/``--attacks``): table -> labels
    only: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def resolved(self) -> dict[str, Any]:
        """The configuration with every default filled in (for provenance)."""

        def plug(u: PluginUse) -> dict[str, Any]:
            return {"name": u.entry.name, **u.params.model_dump(mode="json")}

        return {
            "name": self.name,
            "description": self.description,
            "seed": self.seed,
            "threads": self.threads,
            "output_dir": str(self.output_dir),
            "dataset": plug(self.dataset),
            "model": plug(self.model),
            "training": self.training.model_dump(mode="json"),
            "evaluation": self.evaluation.model_dump(mode="json"),
            "execution": self.execution.model_dump(mode="json"),
            "defenses": [
                {
                    "label": d.label,
                    **plug(d),
                    "model": plug(d.model or self.model),
                    "training": d.training.model_dump(mode="json"),
                    "seeds": list(d.seeds),
                }
                for d in self.defenses
            ],
            "attacks": [
                {
                    "label": a.label,
                    **plug(a),
                    "norm": a.norm,
                    "eps": list(a.eps),
                    "source": a.source or None,
                }
                for a in self.attacks
            ],
        }


def read_toml(path: Path) -> dict[str, Any]:
    """The benchmark file's tables; every way it cannot be read is a one-line ConfigError."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"benchmark file not found: {path}") from None
    except IsADirectoryError:
        msg = "not a TOML file but a directory; give the benchmark's .toml file"
        raise ConfigError(msg, source=str(path)) from None
    except OSError as exc:
        msg = f"cannot read the benchmark file: {exc.strerror or exc}"
        raise ConfigError(msg, source=str(path)) from None
    if b"\0" in data:
        raise ConfigError("not a TOML file (binary data: it holds NUL bytes)", source=str(path))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"not a TOML file (not UTF-8 text: {exc.reason} at byte {exc.start})"
        raise ConfigError(msg, source=str(path)) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", source=str(path)) from None


def load_benchmark(
    config: str | Path | dict[str, Any],
    *,
    registry: Registry | None = None,
    data_root: Path | None = None,
    output_dir: str | Path | None = None,
    check_data: bool = True,
    overrides: Sequence[str] = (),
    only: dict[str, Sequence[str]] | None = None,
    build: bool = True,
) -> Benchmark:
    """Parse and validate a benchmark (a TOML path or a dict) completely.

    Relative paths inside the file resolve against the file's folder (for a dict: the current
    directory). With ``check_data`` the dataset's files are checked under ``data_root`` and the
    model is checked against the dataset's shape. ``overrides`` (``KEY=VALUE`` strings,
    :mod:`robench.overrides`) are set on the file's tables first; errors then name the source
    as ``FILE (with --set)``. ``only`` (``{"defenses": [labels], "attacks": [labels]}``) keeps
    just those entries of the file (:func:`robench.overrides.keep`), before the overrides.

    ``build=False`` (``robench validate``) checks the same without importing the built-in
    plugins, nor torch: their entries hold their torch-free bases
    (:meth:`~robench.registry.Registry.get_base`), so the Benchmark returned can be described,
    not run.
    """
    registry = registry or get_registry()
    if isinstance(config, dict):
        raw, path, source = config, None, None
        base_dir = Path.cwd()
    else:
        path = Path(config)
        raw, source = read_toml(path), str(path)
        base_dir = path.resolve().parent
    selected = {table: tuple(labels) for table, labels in (only or {}).items() if labels}
    for table, labels in selected.items():
        raw = keep_entries(raw, table, labels)
    if overrides:
        raw = apply_overrides(raw, overrides)
        source = f"{source or 'benchmark'} (with --set)"
    # inf and nan first (as they are, not as a bound they miss); integers too large after the
    # schema, whose seeds say what range they take
    check_numbers(raw, source, ints=False)
    try:
        f = BenchmarkFile.model_validate(raw)
    except ValidationError as exc:
        raise_one_line(exc, "", source, "a benchmark file", list(BenchmarkFile.model_fields))
    check_numbers(raw, source)
    check_no_bool_numbers(raw, f, "", source)
    for table in ("defenses", "attacks"):
        if not getattr(f, table):
            raise ConfigError(
                f"a benchmark needs at least one [[{table}]] table (none given)",
                field=table,
                source=source,
            )
    v = Validator(registry, source, base_dir, build)

    dataset_entry = v.entry("dataset", f.dataset.name, "dataset")
    dataset = PluginUse(dataset_entry, v.params(dataset_entry, f.dataset.params(), "dataset"))
    model_entry = v.entry("model", f.model.name, "model")
    model = PluginUse(model_entry, v.params(model_entry, f.model.params(), "model"))
    training = v.training(f.training, {}, "training")

    defenses = []
    for i, d in enumerate(f.defenses):
        where = f"defenses[{i}]"
        entry = v.entry("defense", d.name, where)
        own_model = model
        if d.model is not None:
            m_entry = v.entry("model", d.model.name, f"{where}.model")
            own_model = PluginUse(m_entry, v.params(m_entry, d.model.params(), f"{where}.model"))
        defenses.append(
            DefenseUse(
                entry,
                v.params(entry, d.params(), where),
                label=d.label or d.name,
                training=v.training(
                    {**entry.cls.training_defaults, **f.training}, d.training, f"{where}.training"
                ),
                model=own_model,
                seeds=tuple(d.seeds or f.seeds or [f.seed]),
            )
        )
    check_unique([d.label for d in defenses], "defenses", source)

    attacks = []
    for i, a in enumerate(f.attacks):
        where = f"attacks[{i}]"
        entry = v.entry("attack", a.name, where)
        v.norm(entry, a.norm, where)
        if a.source is not None:
            _check_source(a.source, defenses, f"{where}.source", source)
        attacks.append(
            AttackUse(
                entry,
                v.params(entry, a.params(), where),
                label=a.label or a.name,
                norm=a.norm,
                eps=tuple(a.eps),
                source=a.source or "",
            )
        )
    check_unique([a.label for a in attacks], "attacks", source)
    for i, a in enumerate(attacks):
        if a.label in _RESERVED_LABELS or a.label.startswith(SANITY_PREFIX):
            raise ConfigError(
                f"label {a.label!r} is reserved for robench's own rows (clean, worst-case, "
                f"{SANITY_PREFIX}…); give the attack another label",
                field=f"attacks[{i}].label",
                source=source,
            )

    if output_dir is not None:
        out, out_field = Path(output_dir).expanduser(), "--output-dir"
    elif f.output_dir is not None:
        out, out_field = (base_dir / Path(f.output_dir).expanduser()).resolve(), "output_dir"
    else:
        out, out_field = Path.cwd() / "results" / f.name, "output_dir"
    problem = unwritable_dir(out)
    if problem is not None:
        raise ConfigError(
            f"cannot write the results to {out}: {problem}", field=out_field, source=source
        )

    bench = Benchmark(
        name=f.name,
        description=f.description,
        seed=f.seed,
        threads=f.threads,
        source=path,
        output_dir=out,
        dataset=dataset,
        model=model,
        training=training,
        evaluation=f.evaluation,
        execution=f.execution,
        defenses=tuple(defenses),
        attacks=tuple(attacks),
        raw=raw,
        overrides=tuple(overrides),
        only=selected,
    )
    if check_data:
        check_data_and_model(bench, data_root or default_data_root(), source, prepare=False)
    return bench


def _check_source(label: str, defenses: list[DefenseUse], where: str, source: str | None):
    """A transfer attack's source must be a defense trained with every seed of every defense
    (each seed's models are attacked with the examples crafted on the same seed's source)."""
    by_label = {d.label: d for d in defenses}
    if label not in by_label:
        msg = unknown_name_message("source defense", label, list(by_label))
        raise ConfigError(msg, field=where, source=source)
    have = set(by_label[label].seeds)
    for d in defenses:
        missing = sorted(set(d.seeds) - have)
        if missing:
            raise ConfigError(
                f"defense {d.label!r} is trained with seeds {missing} that source {label!r} "
                f"is not (its seeds: {sorted(have)}); a transfer attack crafts on the source "
                "trained with the same seed",
                field=where,
                source=source,
            )


def check_data_and_model(
    bench: Benchmark, root: Path, source: str | None = None, *, prepare: bool = True
):
    """Check that the dataset can be read and the model accepts it; return the DatasetInfo.

    With ``prepare`` (what ``robench run`` does) the dataset first fetches what it needs
    (:meth:`~robench.dataset.Dataset.prepare`: a download); ``robench validate`` checks only.
    """
    ds = bench.dataset.instantiate()
    try:
        ds.check(root)
        if prepare:
            ds.prepare(root)
        info = ds.info(root)
    except ConfigError as exc:
        raise ConfigError(exc.detail, field=exc.field or "dataset", source=source) from None
    n = bench.evaluation.n_examples
    explicit = "n_examples" in bench.evaluation.model_fields_set
    if explicit and n is not None and info.test_size is not None and n > info.test_size:
        raise ConfigError(
            f"{n} but dataset {bench.dataset.entry.name!r} has {info.test_size} test examples; "
            f"leave it unset or ≤ {info.test_size}",
            field="evaluation.n_examples",
            source=source,
        )
    uses = [("model", bench.model)] + [
        (f"defenses[{i}].model", d.model) for i, d in enumerate(bench.defenses) if d.model
    ]
    for where, use in uses:
        try:
            use.instantiate().check(info)
        except ConfigError as exc:
            raise ConfigError(exc.detail, field=exc.field or where, source=source) from None
    for i, a in enumerate(bench.attacks):
        try:
            a.entry.cls.check(a.params, info)
        except ConfigError as exc:
            where = f"attacks[{i}]" + (f".{exc.field}" if exc.field else "")
            raise ConfigError(exc.detail, field=where, source=source) from None
    return info


def default_data_root() -> Path:
    """``$ROBENCH_DATA`` if set, else ``~/.cache/robench/data``."""
    import os

    env = os.environ.get("ROBENCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "robench" / "data"
