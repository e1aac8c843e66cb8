"""The benchmark runner: train every defense, score it against every attack and budget."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from robench import precision, provenance, rundir, store
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
from robench.evaluation import predict
from robench.outcomes import OutcomeWriter
from robench.progress import Reporter
from robench.registry import Entry, Registry, get_registry
from robench.reproducibility import cell_seed, eval_indices
from robench.results import ResultsWriter
from robench.scoring import Cell, Scorer
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
    """One benchmark run: trains and scores each defense, appending rows as cells finish."""

    def __init__(
        self,
        bench: Benchmark,
        registry: Registry,
        device: torch.device,
        info: DatasetInfo,
        reporter: Reporter,
        writer: ResultsWriter,
        outcomes: OutcomeWriter,
        sanity: list[AttackUse],
        fresh: bool = False,
    ) -> None:
        self.bench, self.registry, self.device, self.info = bench, registry, device, info
        self.report, self.writer, self.outcomes = reporter, writer, outcomes
        self.rows: list[dict[str, Any]] = []
        #: trained models of the defenses that transfer attacks craft on, by label
        self.sources: dict[str, torch.nn.Module] = {}
        self.source_labels = {a.source for a in bench.attacks if a.source}
        #: the sanity attacks run on every defense besides the benchmark's own (robench.checks)
        self.sanity = sanity
        self.errors: list[dict[str, str]] = []
        #: each defense's model: reused from the output folder's store, or trained and stored
        self.trained = TrainedModels(
            bench, registry, info, device, reporter, self.make_attack, fresh
        )

    def add(self, row: dict[str, Any]) -> None:
        """Record a finished cell and rewrite the results, so that nothing done is lost."""
        self.rows.append(row)
        self.writer.write(self.rows)

    def make_attack(self, spec: AttackSpec):
        entry = self.registry.get("attack", spec.name)
        return entry.cls(ThreatModel(spec.norm, spec.eps, self.info.bounds), **spec.params)

    def fail(self, row: dict[str, Any], exc: BaseException, where: str) -> dict[str, Any]:
        msg = error_line(exc)
        self.errors.append({"cell": where, "error": msg, "traceback": traceback.format_exc()})
        return row | {"status": "error", "error": msg}

    def defense(self, d: DefenseUse, seed: int, train: Data, ev: Data) -> None:
        """Train ``d`` with ``seed``, then score it clean, under every attack × ε, and per-ε
        worst case."""
        bench = self.bench
        base = {
            "benchmark": bench.name,
            "defense": d.label,
            "train_seed": seed,
            "defense_name": d.entry.name,
            "defense_plugin": supplier(d.entry),
            "model": (d.model or bench.model).entry.name,
            "model_key": "",
            "n_examples": len(ev),
            "seconds": 0.0,
            "status": "ok",
            "error": "",
        }
        cells = [(a, eps) for a in bench.attacks for eps in a.eps]
        sanity_cells = [(a, eps) for a in self.sanity for eps in a.eps]
        clean_row = base | {
            "kind": "clean",
            "attack": "clean",
            "norm": "",
            "eps": 0.0,
            "seed": seed,
        }
        name = d.label if len(d.seeds) == 1 else f"{d.label} (seed {seed})"
        step = "training" if d.entry.cls.trains else "loading"  # loading: trained elsewhere
        # a model trained here is stored under its training cell's key (not one loaded)
        cell, key = self.trained.cell(d, seed)
        base["model_key"] = store.short(key)
        self.sources.pop(d.label, None)  # a transfer source's model of an earlier seed
        t0 = time.perf_counter()
        try:
            model, reused = self.trained.get(d, seed, train, name, cell, key)
            model, x, y, clean = self._prepare(model, ev)
        except Exception as exc:
            clean_row = self.fail(clean_row, exc, f"{name}: {step}")
            clean_row["train_seconds"] = time.perf_counter() - t0
            self.add(clean_row)
            self.report.cell(clean_row)
            skipped = f"not run: {step} failed ({clean_row['error']})"
            for a, eps in cells:
                self.rows.append(
                    self._attack_row(base, a, eps)
                    | {
                        "status": "error",
                        "error": skipped,
                        "train_seconds": clean_row["train_seconds"],
                    }
                )
                self.report.done += 1
            self.report.done += len(sanity_cells)  # not recorded: nothing to check
            self.writer.write(self.rows)
            return
        if reused is None:
            base["train_seconds"] = time.perf_counter() - t0
            self.report.trained(name, base["train_seconds"])
        else:  # the time its training took when it was stored
            base["train_seconds"] = reused.train_seconds
        if d.label in self.source_labels:
            self.sources[d.label] = model
        n_clean = int(clean.sum())
        base["clean_accuracy"] = n_clean / len(y)
        self.outcomes.add(d.label, seed, "clean", "", 0.0, clean)
        clean_row_done = (
            clean_row
            | base
            | {
                "n_correct": n_clean,
                "accuracy": n_clean / len(y),
                "n_violations": 0,
                "max_violation": 0.0,
            }
        )
        clean_index = len(self.rows)
        self.add(clean_row_done)
        self.report.cell(clean_row_done)

        flags = self._model_flags(model, x[clean], y[clean])
        scores: list[Score] = []
        outcomes: dict[tuple[str, float], list[tuple[str, torch.Tensor]]] = {}
        uses = {(a.label, a.norm, eps): a for a, eps in cells + sanity_cells}
        scorer = Scorer(
            bench.evaluation,
            model,
            x,
            y,
            [self._cell(base, a, eps) for a, eps in cells + sanity_cells],
            clean=clean,
            source_of=self._source,
        )
        for cell in scorer.order:
            a, eps, sanity = uses[cell.key], cell.eps, cell.sanity
            row = self._attack_row(base, a, eps)
            if sanity:
                row["kind"] = "sanity"
            t1 = time.perf_counter()
            try:
                out = scorer.score(cell)
                if out.chain:
                    row["attacks"] = "+".join(out.chain)
                row["n_attacked"] = out.n_attacked
                n_robust = int(out.robust.sum())
                adv = None if out.adv_correct is None else int(out.adv_correct.sum()) / len(y)
                row |= {
                    "n_correct": n_robust,
                    "accuracy": n_robust / len(y),
                    "adv_accuracy": adv,
                    "n_violations": out.n_violations,
                    "max_violation": out.max_violation,
                }
                if not sanity:  # the worst case is over the benchmark's own attacks
                    outcomes.setdefault((a.norm, eps), []).append((a.label, out.robust))
                self.outcomes.add(d.label, seed, a.label, a.norm, eps, out.robust)
                scores.append(
                    Score(
                        a.label,
                        a.norm,
                        eps,
                        n_robust / len(y),
                        len(y),
                        adv_accuracy=adv,
                        clean_accuracy=base["clean_accuracy"],
                        single_step=a.entry.cls.single_step,
                        gradient_free=a.entry.cls.gradient_free,
                        transfer=bool(a.source) and a.source != d.label,
                    )
                )
            except Exception as exc:
                row = self.fail(row, exc, f"{name}: {a.label} {a.norm} eps={eps:g}")
            row["seconds"] = time.perf_counter() - t1
            self.add(row)
            self.report.cell(row)

        for (norm, eps), results in outcomes.items():
            worst = torch.stack([robust for _, robust in results]).all(dim=0)
            labels = [label for label, _ in results]
            row = base | {
                "kind": "worst-case",
                "attack": "worst-case",
                "norm": norm,
                "eps": eps,
                "n_correct": int(worst.sum()),
                "accuracy": int(worst.sum()) / len(y),
                "seed": seed,
                "attacks": "+".join(labels),
            }
            failed = [
                a.label for a, e in cells if (a.norm, e) == (norm, eps) and a.label not in labels
            ]
            if failed:
                row["error"] = f"without failed attacks: {', '.join(failed)}"
            self.add(row)
            self.report.worst(row)

        flags += result_checks(scores)
        flags += chance_check(scores, self.info.num_classes)
        self.rows[clean_index] = clean_row_done | {"flags": "; ".join(flags)}
        self.writer.write(self.rows)
        self.report.flags(name, flags)

    def _model_flags(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
        """The model checks (on clean-correct examples); a check that fails to run is a flag."""
        if not len(x):
            return ["no evaluation example is classified correctly"]
        try:
            return model_checks(model, x, y)
        except Exception as exc:
            return [f"model checks failed: {error_line(exc)}"]

    def _source(self, label: str) -> torch.nn.Module:
        """The model a transfer attack crafts on: defense ``label``'s."""
        if label not in self.sources:
            raise RuntimeError(f"source defense {label!r} has no trained model (it failed)")
        return self.sources[label]

    def _cell(self, base: dict[str, Any], a: AttackUse, eps: float) -> Cell:
        """Attack ``a`` at ``eps`` on the defense of ``base``, as the scorer runs it."""
        return Cell(
            a.label,
            a.norm,
            eps,
            self._seed(base, a, eps),
            lambda e: a.instantiate(ThreatModel(a.norm, e, self.info.bounds)),
            a.entry.cls.minimizes,
            self.info.bounds,
            a.source,
            a.label.startswith(SANITY_PREFIX),
        )

    @staticmethod
    def _seed(base: dict[str, Any], a: AttackUse, eps: float) -> int:
        """The cell's seed, from the training seed and the cell's identity."""
        return cell_seed(base["train_seed"], base["defense"], a.label, a.norm, eps)

    def _prepare(self, model: torch.nn.Module, ev: Data):
        """The model and the evaluation set on the device, in the evaluation's memory format,
        with which evaluation examples the model classifies correctly."""
        model = model.to(self.device).eval()
        x, y = ev.x.to(self.device), ev.y.to(self.device)
        if self.bench.evaluation.channels_last and x.dim() == 4:
            model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        return model, x, y, predict(model, x, self.bench.evaluation.batch_size) == y

    def _attack_row(self, base: dict[str, Any], a: AttackUse, eps: float) -> dict[str, Any]:
        seed = self._seed(base, a, eps)
        return base | {
            "kind": "attack",
            "attack": a.label,
            "attack_name": a.entry.name,
            "attack_plugin": supplier(a.entry),
            "source": a.source,
            "norm": a.norm,
            "eps": eps,
            "seed": seed,
        }


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
) -> pd.DataFrame:
    """Run a benchmark and return its results table (also written under its output folder).

    ``config`` is a TOML path, a dict in the same shape, or a validated :class:`Benchmark`.
    The table is rewritten after every cell into ``results.partial.csv``, so an interruption
    loses at most the cell in progress, and replaces ``results.csv`` when the run finishes (a
    run that does not finish leaves the previous results as they were; :mod:`robench.rundir`).
    A cell that fails is recorded (``status = "error"``) and the run goes on. Ctrl-C, SIGTERM
    and SIGHUP stop the run with status ``interrupted`` and raise KeyboardInterrupt.
    ``threads`` (else the file's ``threads``) sets torch's CPU threads for the run.
    A defense's trained model is stored under the output folder (``models/``, keyed by its
    training cell: :mod:`robench.store`) and reused by every later run of the same cell instead
    of training it again; ``fresh`` trains every model again (replacing those stored).
    ``df.attrs`` holds the paths written and the number of failed cells.
    """
    registry = registry or get_registry()
    root = Path(data_root).expanduser() if data_root is not None else default_data_root()
    if isinstance(config, Benchmark):
        bench = config
        if output_dir is not None:
            raise ValueError("pass output_dir to load_benchmark for a validated Benchmark")
    else:
        bench = load_benchmark(
            config, registry=registry, data_root=root, output_dir=output_dir, check_data=False
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
    outcomes = OutcomeWriter(bench.output_dir, ev_index.numpy(), bench.evaluation.cascade)
    state = _Run(bench, registry, dev, info, reporter, writer, outcomes, sanity, fresh)
    prov["models"] = state.trained.record  # filled in as the run goes
    writer.write(state.rows)  # the partial provenance (status "running") from the start
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
                        state.defense(d, seed, train, ev)
        finished = True
    except BaseException as exc:
        stopped = exc
        raise
    finally:
        failed = sum(r["status"] == "error" for r in state.rows)
        status = "failed cells" if failed else "complete"
        prov |= {
            "status": status if finished else "interrupted",
            "finished": provenance.now(),
            "seconds": time.perf_counter() - t0,
            "errors": state.errors,
        }
        if finished:
            outcomes.finish()
            df = writer.finish(state.rows)
        else:
            prov["interrupted"] = error_line(stopped)
            df = writer.write(state.rows)
            reporter.interrupted(str(writer.partial_csv), str(writer.csv), len(state.rows))
    reporter.finished(str(writer.csv), time.perf_counter() - t0, failed)
    df.attrs.update(
        csv=str(writer.csv), json=str(writer.json), outcomes=str(outcomes.path), failed=failed
    )
    return df
