"""Spread a benchmark's grid over a Ray cluster: ``robench run BENCH.toml --executor ray``.

The run is split into Ray tasks, and Ray places them (no scheduler of robench's own):

- a **training task** per model to train (defense × seed), with the resources of
  ``[execution] train_cpus`` / ``train_gpus`` (default: 1 CPU, and 1 GPU where the cluster has
  GPUs): it trains the model (or finds it in the store) exactly as the local executor would;
- an **evaluation task** per model (clean cell, every attack × ε, the sanity attacks), with
  ``eval_cpus`` / ``eval_gpus``, submitted once its model's training, and the trainings of the
  defenses its transfer attacks craft on, have finished (transfer sources first); it starts
  from the cells of that model the run's store holds already and computes the rest.

**Where things travel.** Trained models go through the output folder's model store
(``OUTPUT/models``), which every task reads and writes directly: on one machine that is just a
folder; on a cluster it must be a shared file system (NFS, a mounted bucket) at the same path on
every node. A model is written once, by its training task, and then read by several evaluation
tasks: a shared folder keeps it out of the driver's memory and survives the driver's restart,
which Ray's object store would not. Cells travel through Ray (a few hundred bytes each): each
task runs in a folder of its own (``OUTPUT/.tasks/...``, removed afterwards) and returns the
cells it computed; the driver writes them into the run's one cell store, ``OUTPUT/cells.sqlite``,
as each task finishes, so an interrupted run keeps every finished cell.

**The same table.** When every task has finished, the driver scores the whole benchmark locally
from the store, computing nothing: the table, ``results.*`` and ``outcomes.npz`` are those of a
local run over the same cells. Every cell is computed by the same code with the same seeds as
locally, so with the same number of CPU threads per task (``threads`` in the file, else the
task's CPU count) the numbers equal a local run's; a cell whose task failed is an error row
saying why.

**Faults.** A task whose worker process dies is retried by Ray (``[execution] max_retries``,
2); a plugin
raising inside a task fails only its cells (recorded as errors, as locally); a task that fails
as a whole fails its model's cells; ``[execution] cell_timeout`` and ``train_timeout`` apply in
the tasks; Ctrl-C on the driver cancels every task still running and keeps the finished cells.
A task's worker that dies leaves its folder behind, with the cells it had finished in the
folder's cell store: the driver merges them into the run's store (when the task has failed for
good, or at the start of the next run) and removes the folder, so they are not computed again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from robench.advexamples import ExampleStore
from robench.config import Benchmark, load_benchmark
from robench.errors import ConfigError, error_line
from robench.store import MODELS_DIR

#: the tasks' folders, under the output folder
TASKS_DIR = ".tasks"


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "the ray executor needs Ray: pip install -e \".[ray]\" (or pip install 'ray>=2.9')",
            field="execution.executor",
        ) from None
    return ray


@dataclass(frozen=True)
class Job:
    """What a task needs to rebuild the benchmark in its own process."""

    source: str | None  # the TOML file, or None for a dict (then ``raw``)
    raw: dict[str, Any]
    overrides: tuple[str, ...]
    only: dict[str, tuple[str, ...]]
    cwd: str
    data_root: str
    out_dir: str
    device: str | None
    threads: int

    def benchmark(self, out_dir: Path) -> Benchmark:
        if self.source is not None:
            return load_benchmark(
                Path(self.source),
                output_dir=out_dir,
                check_data=False,
                overrides=self.overrides,
                only={k: list(v) for k, v in self.only.items()},
            )
        with contextlib.chdir(self.cwd):
            return load_benchmark(self.raw, output_dir=out_dir, check_data=False)


@contextlib.contextmanager
def _task_dir(job: Job, label: str, seed: int):
    """A folder of the task's own, whose ``models`` is the run's shared model store."""
    shared = Path(job.out_dir) / MODELS_DIR
    shared.mkdir(parents=True, exist_ok=True)
    folder = Path(job.out_dir) / TASKS_DIR / f"{label}-seed{seed}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    (folder / MODELS_DIR).symlink_to(shared.resolve(), target_is_directory=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _errors(df: pd.DataFrame) -> dict[tuple, str]:
    """The error rows of a task's table, by ``(defense, seed, attack, norm, eps)``; a failed
    training also by ``(defense, seed)``."""
    errors: dict[tuple, str] = {}
    for row in df[df["status"] == "error"].itertuples():
        where = (row.defense, int(row.train_seed))
        if row.attack == "clean":
            errors[where] = str(row.error)
        else:
            errors[(*where, row.attack, row.norm, float(row.eps))] = str(row.error)
    return errors


def task(
    job: Job, label: str, seed: int, train_only: bool, cells: list[tuple], fresh: bool
) -> dict[str, Any]:  # runs in a Ray worker
    """One task, in a Ray worker: train the model of ``(label, seed)`` (``train_only``) or
    score it, starting from ``cells`` (raw rows of the run's store); returns the cells it
    computed, the errors and where it ran."""
    import torch

    from robench.cellstore import CellStore
    from robench.registry import get_registry
    from robench.runner import Selection, _execute

    t0 = time.perf_counter()
    torch.set_num_threads(job.threads)
    with _task_dir(job, label, seed) as folder:
        bench = job.benchmark(folder)
        with CellStore(folder) as store:
            store.merge(cells)
            known = {row[0] for row in cells}
        selection = Selection(
            models=frozenset({(label, seed)}), train_only=train_only, train=train_only
        )
        df = _execute(
            bench,
            get_registry(),
            Path(job.data_root),
            job.device,
            quiet=True,
            fresh=fresh and train_only,
            selection=selection,
        )
        with CellStore(folder) as store:
            computed = [row for row in store.export() if row[0] not in known]
            examples = ExampleStore(store.db).export([row[0] for row in computed])
    return {
        "cells": computed,
        "examples": examples,
        "errors": _errors(df),
        "seconds": time.perf_counter() - t0,
        "where": f"{os.uname().nodename}:{os.getpid()}",
    }


def _connect(ray, address: str | None, workers: int | None) -> None:
    """Join the cluster at ``address`` (``auto``: the one this machine belongs to) or start a
    local one with ``workers`` CPUs on 127.0.0.1."""
    if ray.is_initialized():
        return
    if address and address != "auto":
        _reachable(address)
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=workers, _node_ip_address="127.0.0.1", **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address!r}" if address else "a local Ray cluster"
        raise ConfigError(
            f"cannot connect to {where}: {error_line(exc)}", field="execution.address"
        ) from None


def _salvage(out: Path, store, prefix: str = "") -> int:
    """Merge the cells of task folders left behind by workers that died (their cells were
    stored in the folder's cell store before the kill) into the run's ``store``, and remove
    the folders; ``prefix`` (``"LABEL-seedN-"``) limits it to one model's tasks. Returns how
    many cells it recovered."""
    from robench.cellstore import CellStore

    tasks, recovered = out / TASKS_DIR, 0
    if not tasks.is_dir():
        return 0
    for folder in sorted(tasks.glob(f"{prefix}*")):
        if (folder / "cells.sqlite").is_file():
            with CellStore(folder) as orphan:
                recovered += store.merge(orphan.export())
                ExampleStore(store.db).merge(ExampleStore(orphan.db).export())
        shutil.rmtree(folder, ignore_errors=True)
    return recovered


def _reachable(address: str, timeout: float = 5.0) -> None:
    """One line, at once, for a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(
            f"expected 'auto' or HOST:PORT, got {address!r}", field="execution.address"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}",
            field="execution.address",
        ) from None


def _resources(ray, bench: Benchmark) -> tuple[dict[str, float], dict[str, float]]:
    """The training and evaluation tasks' requests, checked against the cluster's nodes (one
    line before anything trains when no node can satisfy one)."""
    ex = bench.execution
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    has_gpus = any(n.get("GPU", 0) > 0 for n in nodes)
    default_gpus = 1.0 if has_gpus else 0.0
    train = {"num_cpus": ex.train_cpus, "num_gpus": ex.train_gpus}
    evaluate = {"num_cpus": ex.eval_cpus, "num_gpus": ex.eval_gpus}
    for what, request in (("train", train), ("eval", evaluate)):
        if request["num_gpus"] is None:
            request["num_gpus"] = default_gpus
        fits = any(
            n.get("CPU", 0) >= request["num_cpus"] and n.get("GPU", 0) >= request["num_gpus"]
            for n in nodes
        )
        if not fits:
            biggest = max(((n.get("CPU", 0), n.get("GPU", 0)) for n in nodes), default=(0.0, 0.0))
            raise ConfigError(
                f"no node of the cluster has {request['num_cpus']:g} CPUs and "
                f"{request['num_gpus']:g} GPUs for a {what} task (the largest has "
                f"{biggest[0]:g} CPUs, {biggest[1]:g} GPUs)",
                field=f"execution.{what}_{'gpus' if request['num_gpus'] else 'cpus'}",
            )
    return train, evaluate


def run_on_ray(
    bench: Benchmark,
    root: Path,
    device: str | None,
    quiet: bool,
    fresh: bool,
) -> pd.DataFrame:
    """Run ``bench`` on Ray (see the module's docstring); returns the table, as
    :func:`robench.runner.run` does."""
    from robench.cellstore import CellStore
    from robench.progress import Reporter
    from robench.registry import get_registry
    from robench.runner import Selection, _execute, model_grid, transfer_sources

    ray = _ray()
    ex = bench.execution
    _connect(ray, ex.address, ex.workers)
    train_req, eval_req = _resources(ray, bench)
    out = bench.output_dir
    out.mkdir(parents=True, exist_ok=True)
    job = Job(
        source=str(bench.source) if bench.source else None,
        raw=bench.raw,
        overrides=bench.overrides,
        only=bench.only,
        cwd=os.getcwd(),
        data_root=str(root),
        out_dir=str(out),
        device=device,
        threads=bench.threads or max(1, int(eval_req["num_cpus"])),
    )
    remote = ray.remote(max_retries=ex.max_retries, retry_exceptions=False)(task)
    report = Reporter(quiet=quiet)
    sources = transfer_sources(bench)
    grid = model_grid(bench)
    reasons: dict[tuple, str] = {}
    trained: set[tuple[str, int]] = set()
    pending: dict[Any, tuple[str, tuple[str, int]]] = {}
    waiting = {(d.label, seed) for d, seed in grid}
    trains = {d.label: d.entry.cls.trains for d in bench.defenses}

    def submit_ready() -> None:
        for d, seed in grid:
            at = (d.label, seed)
            needs = {at} | {(s, seed) for s in sources if s != d.label}
            if at in waiting and all(n in trained or not trains[n[0]] for n in needs):
                waiting.discard(at)
                ref = remote.options(**eval_req).remote(job, d.label, seed, False, known, False)
                pending[ref] = ("eval", at)

    started = time.perf_counter()
    n_tasks = sum(trains[d.label] for d, _ in grid) + len(grid)
    report.note(
        f"robench {bench.name}: {n_tasks} Ray tasks ({len(grid)} models) on "
        f"{ray.cluster_resources().get('CPU', 0):g} CPUs, "
        f"{ray.cluster_resources().get('GPU', 0):g} GPUs"
    )
    done = n_cells = 0
    with CellStore(out) as store:
        if _salvage(out, store):  # a killed earlier run's tasks
            report.note("recovered the cells of an earlier run's unfinished tasks")
        # the cells stored by earlier runs, once in Ray's object store for every evaluation
        # task: each computes only what its model lacks (a model's cells come from its task)
        known = ray.put([] if fresh else store.export())
        for d, seed in grid:
            if trains[d.label]:
                ref = remote.options(**train_req).remote(job, d.label, seed, True, [], fresh)
                pending[ref] = ("train", (d.label, seed))
        submit_ready()
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1)
                kind, at = pending.pop(ready[0])
                try:
                    result = ray.get(ready[0])
                except Exception as exc:  # the task as a whole: its model's cells fail
                    reasons[at] = f"its {kind} task failed: {error_line(exc)}"
                    result = None
                # what the attempts whose workers died had finished (the task of this model
                # is over: no live task writes under this prefix)
                _salvage(out, store, f"{at[0]}-seed{at[1]}-")
                if result is not None:
                    reasons.update(result["errors"])
                    store.merge(result["cells"])
                    ExampleStore(store.db).merge(result.get("examples", []))
                done += 1
                n_cells += len(result["cells"]) if result else 0
                busy = ", ".join(f"{k} {a} (seed {b})" for k, (a, b) in pending.values())
                report.note(
                    f"[{done}/{n_tasks} tasks, {n_cells} cells] {kind} {at[0]} (seed {at[1]})"
                    + (
                        f": {len(result['cells'])} cells in {result['seconds']:.1f} s on "
                        f"{result['where']}"
                        if result
                        else f": {reasons[at]}"
                    )
                    + (f"; running: {busy}" if busy else "")
                )
                if kind == "train":
                    trained.add(at)
                    submit_ready()
        except BaseException:  # Ctrl-C, SIGTERM: the finished cells are in the store already
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
    executor = {
        "name": "ray",
        "address": ex.address or "local",
        "tasks": n_tasks,
        "seconds": time.perf_counter() - started,
        "resources": {
            k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU")
        },
        "train_task": train_req,
        "eval_task": eval_req,
    }
    final = Selection(compute=False, train=False, reasons=reasons)
    return _execute(
        bench, get_registry(), root, device, quiet, False, selection=final, executor=executor
    )
