"""The benchmark runner: train every defense, score it against every attack and budget."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robench import precision, provenance, rundir, store
from robench.cellkeys import CellKeys, examples_digest, loaded_model_key
from robench.cellstore import CellStore, Measured, StoredCell
from robench.checks import (
    SANITY_PREFIX,
    Score,
    chance_check,
    model_checks,
    result_checks,
    sanity_attacks,
)
from robench.config import (
    AttackUse,
    Benchmark,
    DefenseUse,
    check_data_and_model,
    default_data_root,
    load_benchmark,
)
from robench.dataset import Data, DatasetInfo
from robench.errors import ConfigError, error_line
from robench.outcomes import OutcomeWriter
from robench.progress import Reporter
from robench.registry import Entry, Registry, get_registry
from robench.reproducibility import cell_seed, eval_indices
from robench.results import ResultsWriter
from robench.rows import Row
from robench.scoring import AttackOutcome, Cell, Plan, Scorer, predict
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


def supplier(entry: Entry) -> str:
    """Who supplied a plugin (the ``*_plugin`` columns): ``"robench-art 0.1.0 (art)"``."""
    return f"{entry.distribution} {entry.version} ({entry.plugin})"


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
        train: Data,
        fresh: bool = False,
    ) -> None:
        self.bench, self.registry, self.device, self.info = bench, registry, device, info
        self.report, self.cells, self.keys, self.train = reporter, cells, keys, train
        self.fresh = fresh
        #: the finished rows, and per row with an outcome vector its (defense, seed, attack,
        #: norm, eps) and the vector (``outcomes.npz``)
        self.rows: list[Row] = []
        self.outcomes: list[tuple[tuple[str, int, str, str, float], np.ndarray]] = []
        #: the defenses that transfer attacks craft on, by label, and their models of the seed
        #: being run (each loaded only when a transfer cell must be computed)
        self.source_labels = {a.source for a in bench.attacks if a.source}
        self.sources: dict[str, _Model] = {}
        #: the sanity attacks run on every defense besides the benchmark's own (robench.checks)
        self.sanity = sanity
        self.errors: list[dict[str, str]] = []
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
            train_digest=examples_digest(train.x, train.y),
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
        only if some cell must be computed."""
        _Model(self, d, seed, ev).score()

    def _source(self, label: str) -> torch.nn.Module:
        """The model a transfer attack crafts on: defense ``label``'s (of the seed being run)."""
        source = self.sources.get(label)
        if source is None:
            raise RuntimeError(f"source defense {label!r} has no trained model")
        source.load()
        assert source.model is not None
        return source.model


class _Model:
    """The cells of one defense's model with one training seed (:meth:`_Run.defense`)."""

    def __init__(self, run: _Run, d: DefenseUse, seed: int, ev: Data) -> None:
        self.run, self.d, self.seed, self.ev = run, d, seed, ev
        bench = run.bench
        self.name = d.label if len(d.seeds) == 1 else f"{d.label} (seed {seed})"
        self.step = "training" if d.entry.cls.trains else "loading"  # loading: trained elsewhere
        self.base = Row(
            benchmark=bench.name,
            defense=d.label,
            train_seed=seed,
            defense_name=d.entry.name,
            defense_plugin=supplier(d.entry),
            model=(d.model or bench.model).entry.name,
            model_key="",
            n_examples=len(ev),
        )
        self.uses = {
            (a.label, a.norm, eps): a for a in (*bench.attacks, *run.sanity) for eps in a.eps
        }
        cells = [self._cell(a, eps) for (_, _, eps), a in self.uses.items()]
        self.plan = Plan(bench.evaluation, cells)
        self.model: torch.nn.Module | None = None
        self.scorer: Scorer | None = None
        self.x = self.y = self.clean = None
        #: the outcomes known so far, in run order (replayed into the scorer when it starts)
        self.known: list[tuple[Cell, AttackOutcome]] = []
        self.clean_vector: np.ndarray | None = None
        self.model_failed = ""
        #: the model's key ("" until known)
        self.key = ""

    def _cell(self, a: AttackUse, eps: float) -> Cell:
        """Attack ``a`` at ``eps`` on this model, as the scorer runs it (its ``build`` holds no
        reference to this object: no cycle keeps a model alive after its cells)."""
        bounds = self.run.info.bounds
        return Cell(
            a.label,
            a.norm,
            eps,
            cell_seed(self.seed, self.d.label, a.label, a.norm, eps),
            lambda e: a.instantiate(ThreatModel(a.norm, e, bounds)),
            a.entry.cls.minimizes,
            bounds,
            a.source,
            a.label.startswith(SANITY_PREFIX),
        )

    def _row(self, cell: Cell) -> Row:
        """The row of an attack cell, before it is scored."""
        a = self.uses[cell.key]
        return self.base.as_attack(
            a.label,
            a.entry.name,
            supplier(a.entry),
            a.norm,
            cell.eps,
            cell.seed,
            a.source,
            cell.sanity,
        )

    def _lookup(self, key: str) -> StoredCell | None:
        return None if self.run.fresh else self.run.cells.get(key)

    def score(self) -> None:
        run, d = self.run, self.d
        if d.label in run.source_labels:  # replaces the model of an earlier seed
            run.sources[d.label] = self
        t0 = time.perf_counter()
        try:
            model_key = self._model_key()
        except Exception as exc:
            return self._all_failed(exc, time.perf_counter() - t0)
        self.key = model_key
        self.base = replace(self.base, model_key=store.short(model_key))
        if self.model is not None:  # loaded to be keyed: a model trained elsewhere
            self.base = replace(self.base, train_seconds=time.perf_counter() - t0)
        elif d.entry.cls.trains:
            found, _ = run.trained.store.lookup(model_key)
            if found is not None:
                self.base = replace(self.base, train_seconds=found.train_seconds)

        clean_record, clean_key = run.keys.clean(model_key)
        stored = self._lookup(clean_key)
        clean_row = self.base.as_clean()
        reused = stored is not None
        if reused:
            run.report.note(
                f"[bold]{self.name}[/]: model {self.base.model_key}, scored by an earlier run: "
                "its stored cells are reused"
            )
        else:
            try:
                self.load(t0)
                t1 = time.perf_counter()
                x, y = self.x, self.y
                self.clean = predict(self.model, x, run.bench.evaluation.batch_size) == y
                flags = self._model_flags(self.model, x[self.clean], y[self.clean])
                n = int(self.clean.sum())
                measured = Measured(n, n / len(y), time.perf_counter() - t1, flags="; ".join(flags))
                stored = run.cells.put(
                    clean_key, clean_record, measured, self.clean.cpu().numpy(), provenance.now()
                )
            except Exception as exc:
                return self._all_failed(exc, time.perf_counter() - t0, clean_row)
        assert stored is not None
        measured = stored.measured
        self.base = replace(self.base, clean_accuracy=measured.accuracy)
        clean_row = self.base.as_clean().with_measured(replace(measured, flags=""))
        model_flags = [f for f in measured.flags.split("; ") if f]
        clean_index = len(run.rows)
        run.add(clean_row, stored.outcome, reused)
        clean_vector = self.clean_vector = stored.outcome

        scores: list[Score] = []
        worst: dict[tuple[str, float], list[tuple[str, np.ndarray]]] = {}
        after: dict[tuple[str, float], list[str]] = {}  # cascade: keys of the cells so far
        for cell in self.plan.order:
            a = self.uses[cell.key]
            row = self._row(cell)
            where = f"{self.name}: {a.label} {a.norm} eps={cell.eps:g}"
            t1 = time.perf_counter()
            try:
                key, found, m, reused_here = self._attack(
                    cell, a, model_key, after.get(cell.budget, []), t1
                )
            except Exception as exc:
                row = self.fail(row, exc, where, time.perf_counter() - t1)
                run.add(row)
                continue
            row = row.with_measured(m)
            if self.plan.in_cascade(cell):
                after.setdefault(cell.budget, []).append(key)
            run.add(row, found.outcome, reused_here)
            if not cell.sanity:  # the worst case is over the benchmark's own attacks
                worst.setdefault(cell.budget, []).append((a.label, found.outcome))
            scores.append(
                Score(
                    a.label,
                    a.norm,
                    cell.eps,
                    m.accuracy,
                    len(clean_vector),
                    adv_accuracy=m.adv_accuracy,
                    clean_accuracy=self.base.clean_accuracy,
                    single_step=a.entry.cls.single_step,
                    gradient_free=a.entry.cls.gradient_free,
                    transfer=bool(a.source) and a.source != d.label,
                    fooled_by=m.fooled_counts(),
                    free_components=a.entry.cls.gradient_free_components,
                )
            )

        for (norm, eps), results in worst.items():
            robust = np.logical_and.reduce([v for _, v in results])
            labels = [label for label, _ in results]
            missing = [
                a.label
                for a in run.bench.attacks
                if a.norm == norm and eps in a.eps and a.label not in labels
            ]
            row = self.base.as_worst_case(norm, eps, int(robust.sum()), labels, missing)
            run.rows.append(row)
            run.report.worst(row.as_dict())

        flags = model_flags + result_checks(scores) + chance_check(scores, run.info.num_classes)
        run.rows[clean_index] = replace(clean_row, flags="; ".join(flags))
        run.report.flags(self.name, flags)

    def _model_key(self) -> str:
        """The key of this defense's model: its training cell's, or (a model trained elsewhere,
        loaded now) its weights'."""
        run, d = self.run, self.d
        if d.entry.cls.trains:
            return run.trained.cell(d, self.seed)[1]
        self.load(time.perf_counter())
        assert self.model is not None
        return loaded_model_key(d, d.model or run.bench.model, self.model)

    def load(self, t0: float | None = None) -> None:
        """Train (or reuse from the model store, or load) this defense's model, once; put it
        and the evaluation set on the device."""
        if self.model is not None:
            return
        t0 = time.perf_counter() if t0 is None else t0
        if self.model_failed:
            raise RuntimeError(f"not run: {self.step} failed ({self.model_failed})")
        run, d = self.run, self.d
        try:
            cell, key = run.trained.cell(d, self.seed)
            model, reused = run.trained.get(d, self.seed, run.train, self.name, cell, key)
            if reused is None:
                self.base = replace(self.base, train_seconds=time.perf_counter() - t0)
                run.report.trained(self.name, self.base.train_seconds)
            model = model.to(run.device).eval()
            x, y = self.ev.x.to(run.device), self.ev.y.to(run.device)
            if run.bench.evaluation.channels_last and x.dim() == 4:
                model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
        except Exception as exc:
            self.model_failed = error_line(exc)
            raise
        self.model, self.x, self.y = model, x, y

    def _scorer(self) -> Scorer:
        """The scorer of this model, started (model loaded) at the first cell to compute."""
        if self.scorer is None:
            self.load(time.perf_counter())
            assert self.model is not None and self.x is not None
            if self.clean is None:  # read back from the store
                self.clean = torch.from_numpy(self.clean_vector).to(self.run.device)
            self.scorer = Scorer(
                self.run.bench.evaluation,
                self.model,
                self.x,
                self.y,
                self.plan.order,
                clean=self.clean,
                source_of=self.run._source,
                plan=self.plan,
            )
            for cell, out in self.known:
                self.scorer.known(cell, out)
        return self.scorer

    def _known(self, cell: Cell, found: StoredCell) -> None:
        """A stored cell's outcome: the scorer (if started) goes on from it."""
        out = AttackOutcome(torch.from_numpy(found.outcome), 0, 0.0)
        if self.scorer is not None:
            out = replace(out, robust=out.robust.to(self.run.device))
            self.scorer.known(cell, out)
        else:
            self.known.append((cell, out))

    def _attack(
        self, cell: Cell, a: AttackUse, model_key: str, after: list[str], t0: float
    ) -> tuple[str, StoredCell, Measured, bool]:
        """An attack cell, read back from the store or computed and stored: its key, its stored
        main part, what its row shows (with the part on the clean-misclassified examples, when
        it has one: a cell of its own), and whether nothing had to be computed."""
        run = self.run
        record, key = run.keys.attack(
            cell,
            a,
            f"{a.entry.distribution} {a.entry.version}",
            self.plan,
            model_key,
            self._source_key(a.source),
            after if self.plan.in_cascade(cell) else [],
        )
        main = self._lookup(key)
        reused = main is not None
        if main is None:
            main = self._compute(key, record, t0, lambda s: s.score_main(cell))
        else:
            self._known(cell, main)
        m = main.measured
        if not self.plan.attacks_misclassified(cell):
            return key, main, m, reused
        record, part_key = run.keys.misclassified(record, cell, self.plan)
        part = self._lookup(part_key)
        if part is None:
            reused = False
            t1 = time.perf_counter()
            part = self._compute(part_key, record, t1, lambda s: s.score_misclassified(cell))
        p = part.measured
        n = len(main.outcome)
        return (
            key,
            main,
            replace(
                m,
                adv_accuracy=(m.n_correct + p.n_correct) / n,
                n_attacked=(m.n_attacked or 0) + (p.n_attacked or 0),
                n_violations=m.n_violations + p.n_violations,
                max_violation=max(m.max_violation, p.max_violation),
                seconds=m.seconds + p.seconds,
            ),
            reused,
        )

    def _compute(
        self,
        key: str,
        record: dict[str, Any],
        t0: float,
        score: Callable[[Scorer], AttackOutcome],
    ) -> StoredCell:
        """Run ``score`` (a part of a cell) with this model's scorer, store the result, and
        return it as stored."""
        out = score(self._scorer())
        robust = out.robust
        n = len(robust)
        measured = Measured(
            int(robust.sum()),
            int(robust.sum()) / n,
            time.perf_counter() - t0,
            n_attacked=out.n_attacked,
            n_violations=out.n_violations,
            max_violation=out.max_violation,
            attacks="+".join(out.chain),
            fooled_by=", ".join(f"{name} {n}" for name, n in out.fooled_by),
        )
        return self.run.cells.put(key, record, measured, robust.cpu().numpy(), provenance.now())

    def _source_key(self, label: str) -> str:
        """A transfer attack's source model's key ("" for a white-box attack)."""
        if not label:
            return ""
        if label == self.d.label:
            return "self"
        source = self.run.sources.get(label)
        if source is None or not source.key:
            why = f" ({source.step} failed)" if source is not None else ""
            raise RuntimeError(f"source defense {label!r} has no trained model{why}")
        return source.key

    def fail(self, row: Row, exc: BaseException, where: str, seconds: float) -> Row:
        return replace(self.run.fail(row, exc, where), seconds=seconds)

    def _all_failed(self, exc: BaseException, seconds: float, clean_row: Row | None = None) -> None:
        """Training (or loading) failed: the clean cell is the error, every other cell not run."""
        run = self.run
        row = run.fail(clean_row or self.base.as_clean(), exc, f"{self.name}: {self.step}")
        row = replace(row, train_seconds=seconds)
        run.add(row)
        skipped = f"not run: {self.step} failed ({row.error})"
        for cell in self.plan.order:
            if cell.sanity:
                continue  # not recorded: nothing to check
            run.rows.append(replace(self._row(cell).as_failed(skipped), train_seconds=seconds))
        run.report.done += len(self.plan.order)
        return None

    @staticmethod
    def _model_flags(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
        """The model checks (on clean-correct examples); a check that fails to run is a flag."""
        if not len(x):
            return ["no evaluation example is classified correctly"]
        try:
            return model_checks(model, x, y)
        except Exception as exc:
            return [f"model checks failed: {error_line(exc)}"]


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
) -> pd.DataFrame:
    src = str(bench.source) if bench.source else None
    info = check_data_and_model(bench, root, src)
    dev = resolve_device(device)
    precision.warn_if_slow(bench.evaluation.precision, dev, "[evaluation]")
    reporter = Reporter(quiet=quiet)
    t0 = time.perf_counter()

    dataset = bench.dataset.instantiate()
    try:
        train = dataset.load("train", root)
        test = dataset.load("test", root)
    except ConfigError as exc:
        raise ConfigError(exc.detail, field=exc.field or "dataset", source=src) from None
    ev_index = eval_indices(len(test), bench.evaluation.n_examples, bench.seed)
    ev = Data(test.x[ev_index], test.y[ev_index])
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
    state = _Run(bench, registry, dev, info, reporter, cells, keys, sanity, train, fresh)
    prov["models"] = state.trained.record  # filled in as the run goes
    prov["cells"] = state.record
    writer.start()  # the provenance (status "running", pid) from the start
    finished = False
    stopped: BaseException | None = None
    # seed by seed; within a seed, the defenses that transfer attacks craft on come first
    order = sorted(bench.defenses, key=lambda d: d.label not in state.source_labels)
    seeds = list(dict.fromkeys(s for d in bench.defenses for s in d.seeds))
    try:
        with _stop_signals_interrupt():
            for seed in seeds:
                for d in order:
                    if seed in d.seeds:
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
