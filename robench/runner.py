"""The benchmark runner: train every defense, score it against every attack and budget."""

from __future__ import annotations

import random
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robench import provenance
from robench.config import (
    AttackUse,
    Benchmark,
    DefenseUse,
    check_data_and_model,
    default_data_root,
    load_benchmark,
)
from robench.dataset import Data, DatasetInfo
from robench.defense import TrainContext
from robench.errors import ConfigError
from robench.evaluation import attack_outcome, predict
from robench.progress import Reporter
from robench.registry import Registry, get_registry
from robench.results import ResultsWriter
from robench.specs import AttackSpec
from robench.threat import ThreatModel


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cell_seed(seed: int, *parts: Any) -> int:
    """A stable per-cell seed derived from the benchmark seed and the cell's identity."""
    return (seed * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % 2**31


def eval_subset(test: Data, n: int | None, seed: int) -> Data:
    """A seeded random subset of ``n`` test examples (all of them when ``n`` is None)."""
    if n is None or n >= len(test):
        return test
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))[:n]
    return Data(test.x[idx], test.y[idx])


class _Run:
    """One benchmark run; holds the rows written so far."""

    def __init__(
        self,
        bench: Benchmark,
        registry: Registry,
        device: torch.device,
        data_root: Path,
        reporter: Reporter,
    ) -> None:
        self.bench, self.registry, self.device = bench, registry, device
        self.data_root, self.report = data_root, reporter
        self.rows: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []

    def make_attack(self, spec: AttackSpec, bounds: tuple[float, float]):
        entry = self.registry.get("attack", spec.name)
        return entry.cls(ThreatModel(spec.norm, spec.eps, bounds), **spec.params)

    def row(self, defense: DefenseUse, kind: str, **values: Any) -> dict[str, Any]:
        base = {
            "benchmark": self.bench.name,
            "defense": defense.label,
            "defense_plugin": defense.entry.name,
            "model": (defense.model or self.bench.model).entry.name,
            "kind": kind,
            "status": "ok",
            "error": "",
        }
        return base | values

    def fail(self, row: dict[str, Any], exc: BaseException, where: str) -> dict[str, Any]:
        msg = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        self.errors.append({"cell": where, "error": msg, "traceback": traceback.format_exc()})
        return row | {"status": "error", "error": msg}

    def defense(self, d: DefenseUse, train: Data, ev: Data, info: DatasetInfo, writer) -> None:
        bench = self.bench
        seed_everything(bench.seed)
        self.report.training(d.label)
        ctx = TrainContext(
            training=d.training,
            device=self.device,
            seed=bench.seed,
            info=info,
            make_attack=lambda spec: self.make_attack(spec, info.bounds),
            progress=lambda e, n, loss: self.report.epoch(d.label, e, n, loss),
        )
        t0 = time.perf_counter()
        try:
            model = (d.model or bench.model).instantiate().build(info)
            model = d.instantiate().fit(model, train, ctx).to(self.device).eval()
            x, y = ev.x.to(self.device), ev.y.to(self.device)
            clean = predict(model, x, bench.evaluation.batch_size) == y
        except Exception as exc:
            secs = time.perf_counter() - t0
            row = self.row(
                d,
                "clean",
                attack="clean",
                norm="",
                eps=0.0,
                seconds=0.0,
                train_seconds=secs,
                n_examples=len(ev),
            )
            row = self.fail(row, exc, f"{d.label}: training")
            self.rows.append(row)
            self.report.cell(row)
            for a in bench.attacks:
                for eps in a.eps:
                    self.rows.append(
                        self._attack_row(d, a, eps)
                        | {
                            "status": "error",
                            "error": f"not run: training failed ({row['error']})",
                            "train_seconds": secs,
                        }
                    )
                    self.report.done += 1
            writer.write(self.rows)
            return
        train_secs = time.perf_counter() - t0
        self.report.trained(d.label, train_secs)
        clean_acc = float(clean.float().mean())
        row = self.row(
            d,
            "clean",
            attack="clean",
            attack_plugin="",
            norm="",
            eps=0.0,
            n_examples=len(y),
            n_correct=int(clean.sum()),
            accuracy=clean_acc,
            clean_accuracy=clean_acc,
            n_violations=0,
            max_violation=0.0,
            seconds=0.0,
            train_seconds=train_secs,
            seed=bench.seed,
        )
        self.rows.append(row)
        self.report.cell(row)
        writer.write(self.rows)

        outcomes: dict[tuple[str, float], list[tuple[str, torch.Tensor]]] = {}
        for a in bench.attacks:
            for eps in a.eps:
                row = self._attack_row(d, a, eps) | {
                    "n_examples": len(y),
                    "clean_accuracy": clean_acc,
                    "train_seconds": train_secs,
                }
                seed = row["seed"]
                t1 = time.perf_counter()
                try:
                    seed_everything(seed)
                    attack = a.instantiate(ThreatModel(a.norm, eps, info.bounds))
                    out = attack_outcome(model, attack, x, y, clean, bench.evaluation.batch_size)
                    row |= {
                        "n_correct": int(out.robust.sum()),
                        "accuracy": float(out.robust.float().mean()),
                        "n_violations": out.n_violations,
                        "max_violation": out.max_violation,
                    }
                    outcomes.setdefault((a.norm, eps), []).append((a.label, out.robust))
                except Exception as exc:
                    row = self.fail(row, exc, f"{d.label}: {a.label} {a.norm} eps={eps:g}")
                row["seconds"] = time.perf_counter() - t1
                self.rows.append(row)
                self.report.cell(row)
                writer.write(self.rows)
        for (norm, eps), results in outcomes.items():
            worst = torch.stack([r for _, r in results]).all(dim=0)
            row = self.row(
                d,
                "worst-case",
                attack="worst-case",
                attack_plugin="",
                norm=norm,
                eps=eps,
                n_examples=len(y),
                n_correct=int(worst.sum()),
                accuracy=float(worst.float().mean()),
                clean_accuracy=clean_acc,
                seconds=0.0,
                train_seconds=train_secs,
                seed=bench.seed,
                attacks="+".join(label for label, _ in results),
            )
            failed = [
                a.label
                for a in bench.attacks
                if a.norm == norm
                and eps in a.eps
                and a.label not in {label for label, _ in results}
            ]
            if failed:
                row["error"] = f"without failed attacks: {', '.join(failed)}"
            self.rows.append(row)
            self.report.worst(row)
        writer.write(self.rows)

    def _attack_row(self, d: DefenseUse, a: AttackUse, eps: float) -> dict[str, Any]:
        return self.row(
            d,
            "attack",
            attack=a.label,
            attack_plugin=a.entry.name,
            norm=a.norm,
            eps=eps,
            seconds=0.0,
            seed=cell_seed(self.bench.seed, d.label, a.label, a.norm, eps),
        )


def run(
    config: str | Path | dict[str, Any] | Benchmark,
    *,
    device: str | None = None,
    data_root: str | Path | None = None,
    output_dir: str | Path | None = None,
    registry: Registry | None = None,
    quiet: bool = False,
) -> pd.DataFrame:
    """Run a benchmark and return its results table (also written under its output folder).

    ``config`` is a TOML path, a dict in the same shape, or a validated :class:`Benchmark`.
    The table is rewritten after every cell, so an interruption loses at most the cell in
    progress; a cell that fails is recorded (``status = "error"``) and the run goes on.
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
    info = check_data_and_model(bench, root, str(bench.source) if bench.source else None)
    dev = resolve_device(device)
    reporter = Reporter(quiet=quiet)
    t0 = time.perf_counter()

    dataset = bench.dataset.instantiate()
    train = dataset.load("train", root)
    ev = eval_subset(dataset.load("test", root), bench.evaluation.n_examples, bench.seed)
    used = [bench.dataset.entry, bench.model.entry]
    for d in bench.defenses:
        used += [d.entry, (d.model or bench.model).entry]
        used += [
            registry.get("attack", v.name)
            for v in d.params.__dict__.values()
            if isinstance(v, AttackSpec)
        ]
    used += [a.entry for a in bench.attacks]
    where = bench.source.resolve().parent if bench.source else Path.cwd()
    prov: dict[str, Any] = {
        "benchmark": bench.name,
        "status": "running",
        "started": provenance.now(),
        "command": provenance.command_line(),
        "config_file": str(bench.source) if bench.source else None,
        "config": bench.resolved(),
        "seeds": {
            "benchmark": bench.seed,
            "training": bench.seed,
            "eval_subset": bench.seed,
            "cells": "per row (column 'seed'), derived from the benchmark seed",
        },
        "dataset": {
            "name": info.name,
            "note": info.note,
            "data_root": str(root),
            "train_examples": len(train),
            "eval_examples": len(ev),
        },
        "versions": provenance.versions(tuple(sorted({e.distribution for e in used}))),
        "plugins": [
            {
                "kind": e.kind,
                "name": e.name,
                "plugin": e.plugin,
                "distribution": e.distribution,
                "version": e.version,
            }
            for e in dict.fromkeys(used)
        ],
        "device": provenance.device_info(dev),
        "git": provenance.git_state(where),
    }
    writer = ResultsWriter(bench.output_dir, prov)
    n_cells = len(bench.defenses) * (1 + sum(len(a.eps) for a in bench.attacks))
    reporter.start(bench.name, n_cells, str(dev), len(ev))
    state = _Run(bench, registry, dev, root, reporter)
    finished = False
    try:
        for d in bench.defenses:
            state.defense(d, train, ev, info, writer)
        finished = True
    finally:
        failed = sum(r["status"] == "error" for r in state.rows)
        status = "failed cells" if failed else "complete"
        prov |= {
            "status": status if finished else "interrupted",
            "finished": provenance.now(),
            "seconds": time.perf_counter() - t0,
            "errors": state.errors,
        }
        df = writer.write(state.rows)
    reporter.finished(str(writer.csv), time.perf_counter() - t0, failed)
    df.attrs.update(csv=str(writer.csv), json=str(writer.json), failed=failed)
    return df
