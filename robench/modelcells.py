"""The cells of one defense's model with one training seed: clean, every attack × ε, the
worst case per ε and the trust checks, each read back from the cell store or computed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from robench import precision, provenance, store
from robench.advexamples import KEEP, ExampleLog
from robench.cellkeys import loaded_model_key
from robench.cellstore import Measured, StoredCell
from robench.checks import SANITY_PREFIX, Score, chance_check, model_checks, result_checks
from robench.config import AttackUse, DefenseUse
from robench.dataset import Data
from robench.errors import error_line
from robench.registry import Entry
from robench.reproducibility import cell_seed
from robench.rows import Row
from robench.scoring import AttackOutcome, Cell, Plan, Scorer, predict
from robench.threat import ThreatModel
from robench.timelimit import time_limit

if TYPE_CHECKING:
    from robench.runner import _Run


def supplier(entry: Entry) -> str:
    """Who supplied a plugin (the ``*_plugin`` columns): ``"robench-art 0.1.0 (art)"``."""
    return f"{entry.distribution} {entry.version} ({entry.plugin})"


class ModelCells:
    """The cells of one defense's model with one training seed, scored for a run
    (:meth:`robench.runner._Run.defense`)."""

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
        #: a few adversarial examples of each cell (robench.advexamples)
        self.examples = ExampleLog(run.cells, d.label, seed)

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
            by = "an earlier run" if run.selection.compute else "the executor's tasks or earlier"
            run.report.note(
                f"[bold]{self.name}[/]: model {self.base.model_key}, scored by {by}: its stored "
                "cells are reused"
            )
        else:
            try:
                if not run.selection.compute:
                    raise RuntimeError(run.selection.reason(d.label, self.seed))
                self.load(t0)
                t1 = time.perf_counter()
                x, y = self.x, self.y
                with self._limit("its clean cell"):
                    self.clean = predict(self.model, x, run.bench.evaluation.batch_size) == y
                    flags = self._model_flags(self.model, x[self.clean], y[self.clean])
                n = int(self.clean.sum())
                measured = Measured(n, n / len(y), time.perf_counter() - t1, flags="; ".join(flags))
                pred = predict(self.model, x[:KEEP], run.bench.evaluation.batch_size)
                self.examples.store_clean(clean_key, x[:KEEP], y[:KEEP], pred, provenance.now())
                stored = run.cells.put(
                    clean_key, clean_record, measured, self.clean.cpu().numpy(), provenance.now()
                )
            except Exception as exc:
                return self._all_failed(exc, time.perf_counter() - t0, clean_row)
        assert stored is not None
        self.examples.clean(clean_key)
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
        if why := self.examples.write(run.bench.output_dir, self.base.model_key):
            run.report.note(f"  {self.name}: adversarial examples not written: {why}")

    def as_source(self) -> None:
        """Not scored here, but the model transfer attacks craft on (loaded when one needs it)."""
        self.run.sources[self.d.label] = self
        try:
            self.key = self._model_key()
        except Exception as exc:  # its transfer cells say the source has no model
            self.model_failed = error_line(exc)

    def train(self) -> None:
        """Train (or reuse from the store, or load) this model and score nothing; a failure is
        recorded as the clean cell's error, every other cell not run."""
        t0 = time.perf_counter()
        try:
            self.key = self._model_key()
            self.base = replace(self.base, model_key=store.short(self.key))
            self.load(t0)
        except Exception as exc:
            self._all_failed(exc, time.perf_counter() - t0)
            return
        self.run.report.done += 1 + len(self.plan.order)

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
            selection = run.selection
            if (
                d.entry.cls.trains
                and not (selection.train and selection.compute)
                and run.trained.store.lookup(key)[0] is None
            ):
                raise RuntimeError(selection.reason(d.label, self.seed))
            limit = run.bench.execution.train_timeout
            with time_limit(limit, f"{self.step} {self.name}", "[execution] train_timeout"):
                model, reused = run.trained.get(d, self.seed, run.train, self.name, cell, key)
            if reused is None:
                self.base = replace(self.base, train_seconds=time.perf_counter() - t0)
                run.report.trained(self.name, self.base.train_seconds)
            model = model.to(run.device).eval()
            x, y = self.ev.x.to(run.device), self.ev.y.to(run.device)
            setting = run.bench.evaluation.channels_last  # None: robench decides
            channels_last = precision.uses_channels_last(setting, model, x)
            if channels_last:
                model.to(memory_format=torch.channels_last)
                x = x.contiguous(memory_format=torch.channels_last)
            run.memory_formats[self.name] = "channels_last" if channels_last else "contiguous"
        except Exception as exc:
            self.model_failed = error_line(exc)
            raise
        self.model, self.x, self.y = model, x, y

    def _limit(self, what: str) -> contextlib.AbstractContextManager:
        """The evaluation cells' time limit (``[execution] cell_timeout``)."""
        limit = self.run.bench.execution.cell_timeout
        return time_limit(limit, f"{self.name}: {what}", "[execution] cell_timeout")

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
                watch=KEEP,
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
        what = f"{a.label} {cell.norm} eps={cell.eps:g}"
        main = self._lookup(key)
        reused = main is not None
        where = (self.d.label, self.seed, a.label, cell.norm, cell.eps)
        if main is None and not run.selection.compute:
            raise RuntimeError(run.selection.reason(*where))
        if main is None:
            main = self._compute(key, record, t0, lambda s: s.score_main(cell), what, cell.norm)
        else:
            self._known(cell, main)
        self.examples.cell(cell.key, key)
        m = main.measured
        if not self.plan.attacks_misclassified(cell):
            return key, main, m, reused
        record, part_key = run.keys.misclassified(record, cell, self.plan)
        part = self._lookup(part_key)
        if part is None and not run.selection.compute:
            raise RuntimeError(run.selection.reason(*where))
        if part is None:
            reused = False
            t1 = time.perf_counter()
            part = self._compute(
                part_key,
                record,
                t1,
                lambda s: s.score_misclassified(cell),
                f"{what} (on the clean-misclassified examples)",
                cell.norm,
            )
        self.examples.cell(cell.key, part_key)
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
        what: str,
        norm: str,
    ) -> StoredCell:
        """Run ``score`` (a part of a cell) with this model's scorer, store the result (and
        its kept examples), and return it as stored; ``what`` names the cell in a time-limit
        error, ``norm`` is its budget's norm."""
        scorer = self._scorer()  # the model loaded (or trained) first: not the cell's time
        with self._limit(what):
            out = score(scorer)
        self.examples.store_cell(key, norm, out, scorer.x, provenance.now())
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
