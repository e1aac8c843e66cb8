"""The benchmark runner: train every defense, score it against every attack and budget."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robench import precision, provenance, rundir
from robench.cellkeys import CellKeys, examples_digest, split_digest
from robench.cellstore import CellStore
from robench.checks import sanity_attacks
from robench.config import (
    AttackUse,
    Benchmark,
    DefenseUse,
    check_data_and_model,
    default_data_root,
    load_benchmark,
)
from robench.dataset import Data, DatasetInfo, SplitData
from robench.errors import ConfigError, error_line
from robench.modelcells import ModelCells
from robench.outcomes import OutcomeWriter
from robench.progress import Reporter
from robench.registry import Registry, get_registry
from robench.reproducibility import eval_indices
from robench.results import ResultsWriter
from robench.rows import Row
from robench.specs import AttackSpec
from robench.threat import ThreatModel
from robench.trained import TrainedModels


def resolve_device(name: str | None) -> torch.device:
    """``None``/``"auto"``: CUDA when present, else CPU. Otherwise as given, checked."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        msg = f"expected 'auto', 'cpu' or 'cuda[:N]', got {name!r}"
        raise ConfigError(msg, field="device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA was requested but no CUDA device is available", field="device")
    return device


class Interrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGTERM, SIGHUP): handled like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum).name
        super().__init__(f"stopped by {self.signal}")


@contextlib.contextmanager
def _stop_signals_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise :class:`Interrupted` (as Ctrl-C raises
    KeyboardInterrupt), so that ``kill`` lets the run record what it finished and its status.
    Only in the main thread (signal handlers can only be set there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Interrupted(signum)

    wanted = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {s: signal.signal(s, stop) for s in wanted}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def transfer_sources(bench: Benchmark) -> set[str]:
    """The labels of the defenses that the benchmark's transfer attacks craft on."""
    return {a.source for a in bench.attacks if a.source}


def model_grid(bench: Benchmark) -> list[tuple[DefenseUse, int]]:
    """Every model of the run, ``(defense, training seed)``, in the order it is run: seed by
    seed; within a seed, the defenses that transfer attacks craft on first."""
    sources = transfer_sources(bench)
    order = sorted(bench.defenses, key=lambda d: d.label not in sources)
    seeds = dict.fromkeys(s for d in bench.defenses for s in d.seeds)
    return [(d, seed) for seed in seeds for d in order if seed in d.seeds]


@dataclass(frozen=True)
class Selection:
    """The part of a run one process does, for an executor that spreads the grid over workers
    (:mod:`robench.rayexec`); the default is the whole run, computed here."""

    #: the models, ``(defense label, training seed)``, to train and score (None: every one);
    #: the others are only loaded where a transfer attack crafts on them
    models: frozenset[tuple[str, int]] | None = None
    #: train (or reuse) the selected models and score nothing
    train_only: bool = False
    #: False: a model must be in the store already (trained by another task); none is trained
    train: bool = True
    #: False: compute nothing; a cell (or model) not stored is an error saying why, from
    #: :attr:`reasons` (``(defense, seed, attack label, norm, eps)`` or ``(defense, seed)``)
    compute: bool = True
    reasons: dict[tuple, str] = field(default_factory=dict)

    def wants(self, label: str, seed: int) -> bool:
        return self.models is None or (label, seed) in self.models

    def reason(self, *where: Any) -> str:
        """Why the cell at ``where`` (or its model) was not computed, for the error row."""
        why = self.reasons.get(where) or self.reasons.get(where[:2])
        return f"not computed by the executor's task: {why or 'no result came back'}"


class _Run:
    """One benchmark run: scores each defense's model, cell by cell, reusing every cell the
    output folder's store holds (:mod:`robench.cellstore`) and storing each cell it computes."""

    def __init__(
        self,
        bench: Benchmark,
        registry: Registry,
        device: torch.device,
        info: DatasetInfo,
        reporter: Reporter,
        cells: CellStore,
        keys: CellKeys,
        sanity: list[AttackUse],
        train: SplitData,
        fresh: bool = False,
        selection: Selection | None = None,
    ) -> None:
        self.bench, self.registry, self.device, self.info = bench, registry, device, info
        self.report, self.cells, self.keys, self.train = reporter, cells, keys, train
        self.fresh = fresh
        self.selection = selection or Selection()
        #: the finished rows, and per row with an outcome vector its (defense, seed, attack,
        #: norm, eps) and the vector (``outcomes.npz``)
        self.rows: list[Row] = []
        self.outcomes: list[tuple[tuple[str, int, str, str, float], np.ndarray]] = []
        #: the defenses that transfer attacks craft on, by label, and their models of the seed
        #: being run (each loaded only when a transfer cell must be computed)
        self.source_labels = transfer_sources(bench)
        self.sources: dict[str, ModelCells] = {}
        #: the sanity attacks run on every defense besides the benchmark's own (robench.checks)
        self.sanity = sanity
        self.errors: list[dict[str, str]] = []
        #: the memory format each model was evaluated in (the provenance's
        #: ``evaluation_memory_format``; robench.precision.channels_last_pays)
        self.memory_formats: dict[str, str] = {}
        #: what the run did with the cell store (the provenance's ``cells``)
        self.record: dict[str, Any] = {"file": str(cells.path), "reused": 0, "computed": 0}
        #: each defense's model: reused from the output folder's store, or trained and stored
        self.trained = TrainedModels(
            bench,
            registry,
            info,
            device,
            reporter,
            self.make_attack,
            fresh,
            train_digest=split_digest(train),
        )

    def make_attack(self, spec: AttackSpec):
        entry = self.registry.get("attack", spec.name)
        return entry.cls(ThreatModel(spec.norm, spec.eps, self.info.bounds), **spec.params)

    def fail(self, row: Row, exc: BaseException, where: str) -> Row:
        msg = error_line(exc)
        self.errors.append({"cell": where, "error": msg, "traceback": traceback.format_exc()})
        return row.as_failed(msg)

    def add(self, row: Row, outcome: np.ndarray | None = None, reused: bool = False) -> None:
        """A finished cell's row (and its outcome vector): kept for the tables, shown."""
        self.rows.append(row)
        if outcome is not None:
            self.outcomes.append(
                ((row.defense, row.train_seed, row.attack, row.norm, row.eps), outcome)
            )
        self.record["reused" if reused else "computed"] += row.status == "ok"
        self.report.cell(row.as_dict(), reused and row.status == "ok")

    def defense(self, d: DefenseUse, seed: int, ev: Data) -> None:
        """Score the model of ``d`` trained with ``seed``: clean, under every attack × ε, and
        per-ε worst case. Cells stored already are read back; the model is trained (or loaded)
        only if some cell must be computed. Under a :class:`Selection`: a model not selected
        is only made available as a transfer source, and ``train_only`` trains and scores
        nothing."""
        cells = ModelCells(self, d, seed, ev)
        if not self.selection.wants(d.label, seed):
            if d.label in self.source_labels:
                cells.as_source()
            return
        if self.selection.train_only:
            cells.train()
            return
        cells.score()

    def _source(self, label: str) -> torch.nn.Module:
        """The model a transfer attack crafts on: defense ``label``'s (of the seed being run)."""
        source = self.sources.get(label)
        if source is None:
            raise RuntimeError(f"source defense {label!r} has no trained model")
        source.load()
        assert source.model is not None
        return source.model


def run(
    config: str | Path | dict[str, Any] | Benchmark,
    *,
    device: str | None = None,
    data_root: str | Path | None = None,
    output_dir: str | Path | None = None,
    registry: Registry | None = None,
    quiet: bool = False,
    threads: int | None = None,
    fresh: bool = False,
    overrides: Sequence[str] = (),
    only: dict[str, Sequence[str]] | None = None,
) -> pd.DataFrame:
    """Run a benchmark and return its results table (also written under its output folder).

    ``config`` is a TOML path, a dict in the same shape, or a validated :class:`Benchmark`.
    Every cell is stored in the output folder's cell store as it finishes
    (:mod:`robench.cellstore`, ``cells.sqlite``: one transaction per cell), so a kill at any
    moment loses at most the cell in progress; ``results.csv``, ``results.json`` and
    ``outcomes.npz`` are written from the cells when the run finishes (a run that does not
    finish leaves the previous results as they were; :mod:`robench.rundir`).
    Rerunning reuses every cell stored under its key (:mod:`robench.cellkeys`) and computes the
    rest; a model is trained or loaded only if one of its cells must be computed. A defense's
    trained model is stored under the output folder (``models/``, keyed by its training cell:
    :mod:`robench.store`) and reused instead of training it again; a training interrupted
    after an epoch resumes there (:mod:`robench.resume`). ``fresh`` ignores both stores: it
    trains and scores everything again (replacing what is stored).
    A cell that fails is recorded (``status = "error"``, never stored) and the run goes on.
    Ctrl-C, SIGTERM and SIGHUP stop the run with status ``interrupted`` (its rows so far in
    ``results.partial.csv``) and raise KeyboardInterrupt.
    ``threads`` (else the file's ``threads``) sets torch's CPU threads for the run.
    ``overrides`` (``KEY=VALUE``, :mod:`robench.overrides`) change the file's settings for this
    run, as ``robench run --set`` does, and ``only`` keeps a subset of the file's defenses and
    attacks (``{"defenses": [labels]}``, as ``--defenses``); both are recorded in the provenance.
    ``df.attrs`` holds the paths written and the number of failed cells.
    """
    registry = registry or get_registry()
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    if isinstance(config, Benchmark):
        bench = config
        if output_dir is not None or overrides or only:
            raise ValueError(
                "pass output_dir and overrides to load_benchmark for a validated Benchmark"
            )
    else:
        bench = load_benchmark(
            config,
            registry=registry,
            data_root=root,
            output_dir=output_dir,
            check_data=False,
            overrides=overrides,
            only=only,
        )
    if bench.execution.executor == "ray":
        if registry is not get_registry():
            raise ConfigError(
                "the ray executor's tasks find plugins the way `robench list` does (installed "
                "distributions); a registry built in this process cannot travel to them",
                field="execution.executor",
            )
        from robench.rayexec import run_on_ray

        return run_on_ray(bench, root, device, quiet, fresh)
    n_threads = threads or bench.threads
    previous = torch.get_num_threads()
    if n_threads:
        torch.set_num_threads(n_threads)
    try:
        return _execute(bench, registry, root, device, quiet, fresh)
    finally:
        torch.set_num_threads(previous)


def _execute(
    bench: Benchmark,
    registry: Registry,
    root: Path,
    device: str | None,
    quiet: bool,
    fresh: bool = False,
    selection: Selection | None = None,
    executor: dict[str, Any] | None = None,
) -> pd.DataFrame:
    src = str(bench.source) if bench.source else None
    info = check_data_and_model(bench, root, src)
    dev = resolve_device(device)
    evaluation, changed = precision.fastest(bench.evaluation, dev)
    asked = bench.evaluation
    bench = replace(bench, evaluation=evaluation)
    reporter = Reporter(quiet=quiet)
    if changed:
        reporter.note(f"[evaluation] {changed}")
    if selection is not None and not selection.compute:  # an executor's tasks computed them
        reporter.reused_as = "from the cell store"
    t0 = time.perf_counter()

    dataset = bench.dataset.instantiate()
    try:
        train = dataset.load("train", root)
        test = dataset.load("test", root)
    except ConfigError as exc:
        raise ConfigError(exc.detail, field=exc.field or "dataset", source=src) from None
    ev_index = eval_indices(len(test), bench.evaluation.n_examples, bench.seed)
    try:
        ev = test.take(ev_index)  # a streamed split: only the evaluation subset is read
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"reading the evaluation examples: {exc}", field="dataset", source=src
        ) from None
    sanity = sanity_attacks(bench, registry, info) if bench.evaluation.sanity else []
    prov = provenance.run_record(bench, registry, info, root, dev, len(train), len(ev), sanity)
    prov |= rundir.owner()
    try:
        kept = rundir.claim(bench.output_dir)
    except ConfigError as exc:
        raise ConfigError(exc.detail, field=exc.field, source=src) from None
    writer = ResultsWriter(bench.output_dir, prov)
    per_model = 1 + sum(len(a.eps) for a in (*bench.attacks, *sanity))
    n_cells = sum(len(d.seeds) for d in bench.defenses) * per_model
    reporter.start(bench.name, n_cells, str(dev), len(ev))
    for line in kept:
        reporter.note(line)
    keys = CellKeys(bench.evaluation, examples_digest(ev.x, ev.y), info.bounds)
    cells = CellStore(bench.output_dir)
    state = _Run(bench, registry, dev, info, reporter, cells, keys, sanity, train, fresh, selection)
    prov["executor"] = executor or {"name": "local"}
    if changed:
        prov["evaluation_settings"] = {
            "asked": asked.model_dump(mode="json", include={"precision", "channels_last"}),
            "used": evaluation.model_dump(mode="json", include={"precision", "channels_last"}),
            "why": changed,
        }
    prov["models"] = state.trained.record  # filled in as the run goes
    prov["cells"] = state.record
    prov["evaluation_memory_format"] = state.memory_formats  # filled in as the run goes
    writer.start()  # the provenance (status "running", pid) from the start
    finished = False
    stopped: BaseException | None = None
    try:
        with _stop_signals_interrupt():
            for d, seed in model_grid(bench):
                state.defense(d, seed, ev)
        finished = True
    except BaseException as exc:
        stopped = exc
        raise
    finally:
        cells.close()
        failed = sum(r.status == "error" for r in state.rows)
        status = "failed cells" if failed else "complete"
        prov |= {
            "status": status if finished else "interrupted",
            "finished": provenance.now(),
            "seconds": time.perf_counter() - t0,
            "errors": state.errors,
        }
        outcomes = OutcomeWriter(bench.output_dir, ev_index.numpy(), bench.evaluation.cascade)
        for where, vector in state.outcomes:
            outcomes.add(*where, vector)
        if finished:
            outcomes.finish()
            df = writer.finish(state.rows)
        else:
            prov["interrupted"] = error_line(stopped)
            outcomes.write_partial()
            df = writer.write(state.rows)
            reporter.interrupted(str(writer.partial_csv), str(writer.csv), len(state.rows))
    reporter.finished(str(writer.csv), time.perf_counter() - t0, failed)
    reporter.note(
        f"cells: {state.record['computed']} computed, {state.record['reused']} reused from "
        f"{cells.path}"
    )
    df.attrs.update(
        csv=str(writer.csv), json=str(writer.json), outcomes=str(outcomes.path), failed=failed
    )
    return df
