"""Reports: the HTML page and its figures from a real run, the adversarial examples kept per
cell (and kept through the cell store), flagged defenses ranked last, bad input in one line."""

from __future__ import annotations

import base64
import io
import re
import shutil
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import robench
from robench.advexamples import KEEP, decode_images, encode_images, on_8bit_grid, read_examples
from robench.api import Defense
from robench.cli import main
from robench.leaderboard import build_leaderboard, load_results, to_markdown
from robench.outcomes import read_outcomes
from robench.registry import build_registry
from robench.report import default_paths, write_report

from .helpers import plugin_module, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


class Softmaxed(Defense):
    """Standard training, then probabilities out instead of logits (a test plugin: the trust
    checks flag it)."""

    name = "softmaxed"

    def fit(self, model, train, ctx):
        ctx.train(model, train, lambda m, x, y: ctx.cross_entropy(m(x), y))
        return self.restore(model, ctx)

    def restore(self, model, ctx):
        return nn.Sequential(model, nn.Softmax(dim=1))


@robench.hookimpl
def robench_register_defenses(register):
    register(Softmaxed)


def _config(tmp_path):
    return tiny_config(
        tmp_path,
        defenses=[
            {"name": "standard"},
            {"name": "softmaxed", "label": "probs"},
            {"name": "adversarial", "label": "pgd-at", "attack": {"name": "pgd", "eps": 0.1}},
        ],
        evaluation={"n_examples": 120, "batch_size": 64, "sanity": False},
    )


@pytest.fixture(scope="module")
def registry():
    plugin = plugin_module("report_plugins", robench_register_defenses=robench_register_defenses)
    return build_registry(entry_points=False, plugins=[plugin])


@pytest.fixture(scope="module")
def run(tmp_path_factory, registry):
    """A real run: three defenses (one flagged), FGSM and PGD-3 at ε 0.1 and 0.2."""
    tmp = tmp_path_factory.mktemp("report")
    config = _config(tmp)
    df = robench.run(config, registry=registry, quiet=True)
    return tmp / "out", df, config


@pytest.fixture(scope="module")
def report(run):
    out, _, _ = run
    return write_report(out), out


def _flagged(df: pd.DataFrame) -> set[str]:
    clean = df[df["kind"] == "clean"]
    return set(clean.loc[clean["flags"] != "", "defense"])


def test_the_run_has_a_flagged_defense(run):
    _, df, _ = run
    assert _flagged(df) == {"probs"}
    assert "probabilities" in df.loc[df["defense"] == "probs", "flags"].iloc[0]


def test_report_is_one_self_contained_page_with_its_figures(report):
    written, out = report
    assert written.html == out / "report.html" and written.html.is_file()
    html = written.html.read_text()
    assert written.size == len(html.encode())
    # nothing is fetched: every src and href is inline data or an anchor
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), refs
    assert "<link" not in html and "@import" not in html
    names = {p.name for p in written.figures}
    expected = [
        "robustness-linf",
        "attacks-linf",
        "heatmap-linf-0.1",
        "heatmap-linf-0.2",
        "examples-linf-0.2",
        "training",
    ]
    assert names == {f"{n}.{ext}" for n in expected for ext in ("png", "svg")}
    assert {p.parent for p in written.figures} == {out / "figures"}
    for p in written.figures:
        assert p.stat().st_size > 1000
        if p.suffix == ".svg":
            assert p.read_text().lstrip().startswith("<?xml") and "<svg" in p.read_text()
    # each figure is embedded, and drawn: many distinct colours, not a blank canvas
    from PIL import Image

    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(embedded) == len(expected)
    for data in embedded:
        image = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("L"))
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image.std() > 20 and len(np.unique(image)) > 30


def test_report_shows_flags_intervals_and_provenance(report, run):
    written, _ = report
    _, df, _ = run
    html = written.html.read_text()
    for section in ("leaderboard", "trust", "curves", "heatmaps", "examples", "training"):
        assert f'id="{section}"' in html
    assert "outputs are probabilities" in html  # the flag's reason
    board = html[html.index('id="leaderboard"') : html.index('id="trust"')]
    rows = re.findall(r"<tr( class=\"flagged\")?><td class=\"num\">(\d+)</td><td>([^<]+)", board)
    assert [(bool(f), int(r), d.strip()) for f, r, d in rows][-1] == (True, 3, "probs")
    assert "⚑" in board and "95 % interval" in board
    worst = df[(df["kind"] == "worst-case") & (df["eps"] == 0.2)]
    for low, high in zip(worst["ci_low"], worst["ci_high"], strict=True):
        assert f"{100 * low:.1f}–{100 * high:.1f}" in board
    prov = html[html.index('id="provenance"') :]
    assert torch.__version__ in prov and "digits" in prov and "git commit" in prov


def test_leaderboard_ranks_flagged_defenses_last_by_default(run):
    out, _, _ = run
    results = load_results(out)
    keep = build_leaderboard([results], flagged="keep")
    assert keep["robust_accuracy"].is_monotonic_decreasing
    last = build_leaderboard([results])
    assert list(last["flagged"]) == sorted(last["flagged"])  # unflagged first
    assert list(last["defense"])[-1] == "probs" and list(last["rank"]) == [1, 2, 3]
    unflagged = last[~last["flagged"]]
    assert unflagged["robust_accuracy"].is_monotonic_decreasing
    hide = build_leaderboard([results], flagged="hide")
    assert "probs" not in set(hide["defense"]) and hide.attrs["hidden"] == ["probs"]
    assert "| probs ⚑ |" in to_markdown(last)
    with pytest.raises(ValueError, match="--flagged: expected last, hide or keep"):
        build_leaderboard([results], flagged="first")


def test_adversarial_examples_are_kept_per_cell_and_agree_with_the_outcomes(run):
    out, df, _ = run
    kept = read_examples(out)
    outcomes = read_outcomes(out)
    assert set(kept) == {("standard", 0), ("probs", 0), ("pgd-at", 0)}
    # the watched examples: the first KEEP of the evaluation set, for every model
    from robench.datasets.digits import Digits
    from robench.reproducibility import eval_indices

    test = Digits().load("test", None)
    index = eval_indices(len(test), 120, 0)[:KEEP]
    for (defense, _), model in kept.items():
        clean = outcomes.get(defense, "clean")[:KEEP]
        np.testing.assert_allclose(model.x, test.x[index].numpy(), atol=1e-3)
        assert (model.y == test.y[index].numpy()).all()
        assert ((model.pred == model.y) == clean).all()
        key = df.loc[(df["defense"] == defense) & (df["kind"] == "clean"), "model_key"].iloc[0]
        assert model.model_key == key
        for attack in ("fgsm", "pgd"):
            for eps in (0.1, 0.2):
                cell = model.cells[(attack, "linf", eps)]
                robust = outcomes.get(defense, attack, "linf", eps)[:KEEP]
                # every watched example was attacked: the clean-correct ones by the main
                # part, the others by the part on the misclassified examples (PGD, the
                # costlier attack, has it) or not at all (FGSM)
                attacked = set(cell.pos.tolist())
                assert set(np.flatnonzero(clean)) <= attacked
                if attack == "pgd":
                    assert attacked == set(range(KEEP))
                for p, pred, dist in zip(cell.pos, cell.pred, cell.dist, strict=True):
                    if clean[p]:
                        assert robust[p] == (pred == model.y[p])
                    assert dist <= eps + 1e-6
                    delta = np.abs(cell.x[list(cell.pos).index(p)] - model.x[p]).max()
                    assert delta <= eps + 1e-3  # the kept image stays in the ε-ball
                assert cell.x.shape == (len(cell.pos), 1, 8, 8)


def test_kept_examples_come_back_from_the_cell_store_when_a_run_reuses_its_cells(
    run, registry, tmp_path
):
    out, _, config = run
    before = read_examples(out)
    (out / "examples.npz").unlink()
    df = robench.run(config, registry=registry, quiet=True)
    assert df.attrs and (out / "examples.npz").is_file()
    after = read_examples(out)
    assert set(after) == set(before)
    for k, model in before.items():
        again = after[k]
        assert model.model_key == again.model_key and (model.pred == again.pred).all()
        assert set(model.cells) == set(again.cells)
        for c, cell in model.cells.items():
            assert (cell.pos == again.cells[c].pos).all()
            np.testing.assert_array_equal(cell.x, again.cells[c].x)
            assert (cell.pred == again.cells[c].pred).all()


def test_cells_stored_before_examples_were_kept_make_a_report_that_says_so(run, registry, tmp_path):
    """A store from before this feature: the cells (same keys) without their examples."""
    out, _, config = run
    config = {**config, "output_dir": str(tmp_path / "old")}
    shutil.copytree(out, tmp_path / "old")
    with sqlite3.connect(tmp_path / "old" / "cells.sqlite") as db:
        n_cells = db.execute("SELECT COUNT(*) FROM cells").fetchone()[0]
        db.execute("DELETE FROM examples")
    (tmp_path / "old" / "examples.npz").unlink()
    df = robench.run(config, registry=registry, quiet=True)
    assert (df["status"] == "ok").all()
    with sqlite3.connect(tmp_path / "old" / "cells.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM cells").fetchone()[0] == n_cells  # same keys
    assert read_examples(tmp_path / "old") == {}
    written = write_report(tmp_path / "old")
    html = written.html.read_text()
    section = html[html.index('id="examples"') : html.index('id="training"')]
    assert "<img" not in section and "runs before robench kept them" in section
    assert not any(p.name.startswith("examples-") for p in written.figures)


def test_8bit_images_are_kept_as_uint8_inside_the_budget():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, size=(4, 3, 5, 5)).astype(np.float32) / 255
    assert on_8bit_grid(clean) and not on_8bit_grid(clean + 0.1 / 255)
    eps = 8 / 255
    adv = np.clip(clean + rng.uniform(-eps, eps, clean.shape).astype(np.float32), 0, 1)
    adv[0, 0, 0, 0] = min(1.0, clean[0, 0, 0, 0] + np.float32(eps))  # exactly on the boundary
    kept = encode_images(adv, clean)
    assert kept.dtype == np.uint8
    back = decode_images(kept)
    assert np.abs(back - clean).max() <= eps + 1e-6
    assert np.abs(back - adv).max() < 1 / 255 + 1e-6
    assert back[0, 0, 0, 0] == pytest.approx(min(1.0, clean[0, 0, 0, 0] + eps), abs=1e-6)
    np.testing.assert_array_equal(decode_images(encode_images(clean)), clean)
    digits = np.arange(17, dtype=np.float32) / 16  # not 8-bit: float16
    assert encode_images(digits).dtype == np.float16


def test_a_cells_parts_are_joined_by_position_whatever_an_empty_part_holds():
    """A cell's main part and its part on the misclassified examples, one of them empty (in a
    cascade, or with every watched example correct): one uint8 record, by position."""
    from robench.advexamples import _join

    clean = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4) % 256 / 255
    full = {
        "pos": np.array([5, 2], dtype=np.int16),
        "x": encode_images(clean, clean),
        "pred": np.array([1, 0]),
        "dist": np.zeros(2, np.float32),
    }
    empty = {
        "pos": np.zeros(0, np.int16),
        "x": encode_images(clean[:0], clean[:0]),
        "pred": np.zeros(0, np.int64),
        "dist": np.zeros(0, np.float32),
    }
    assert empty["x"].dtype == np.float16 and full["x"].dtype == np.uint8
    for parts in ([full, empty], [empty, full]):
        joined = _join(parts)
        assert joined["x"].dtype == np.uint8 and list(joined["pos"]) == [2, 5]
        np.testing.assert_array_equal(decode_images(joined["x"]), clean[::-1])
    assert len(_join([empty])["pos"]) == 0


def test_report_of_a_curated_results_copy(tmp_path):
    """A curated copy (PREFIX-results.csv with PREFIX-provenance.json): no kept examples, no
    sidecars; the rest is there, and the masking defenses are ranked last."""
    src = "results/mnist-preprocessing-results.csv"
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / src
    written = write_report(path, tmp_path / "mnist-preprocessing-report.html")
    assert {p.parent.name for p in written.figures} == {"mnist-preprocessing-figures"}
    html = written.html.read_text()
    assert "masked gradients" in html and "mnist-preprocessing" in html
    board = html[html.index('id="leaderboard"') : html.index('id="trust"')]
    order = re.findall(r'<td class="num">\d+</td><td>([^<]+)', board)
    assert [d.strip() for d in order[-3:]] == ["squeeze-3bit", "jpeg", "median-3x3"]
    assert "no mnist-preprocessing-examples.npz beside mnist-preprocessing-results.csv" in html


def test_default_paths(tmp_path):
    (tmp_path / "run").mkdir()
    assert default_paths(tmp_path / "run") == (
        tmp_path / "run" / "report.html",
        tmp_path / "run" / "figures",
    )
    assert default_paths(tmp_path / "x-results.csv") == (
        tmp_path / "x-report.html",
        tmp_path / "x-figures",
    )
    assert default_paths(tmp_path / "run", tmp_path / "mine.html")[1] == tmp_path / "mine-figures"


def _one_line(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_bad_input_is_one_line_and_exit_2(run, tmp_path):
    out, _, _ = run
    assert "no such file or folder" in _one_line(["report", str(tmp_path / "nothing")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no results.csv found" in _one_line(["report", str(empty)])
    (empty / "results.partial.csv").write_text("defense\n")
    assert "results.partial.csv: pass that file" in _one_line(["report", str(empty)])
    old = tmp_path / "old-results.csv"
    table = pd.read_csv(out / "results.csv").drop(columns=["flags"])
    table.to_csv(old, index=False)
    assert "results of an older format (no flags column" in _one_line(["report", str(old)])
    (tmp_path / "bin.csv").write_bytes(bytes(range(256)))
    assert "not a robench results table" in _one_line(["report", str(tmp_path / "bin.csv")])
    line = _one_line(["report", str(out), "--flagged", "sometimes"])
    assert "--flagged: expected last, hide or keep, got 'sometimes'" in line
    line = _one_line(["leaderboard", str(out), "--flagged", "sometimes"])
    assert "--flagged: expected last, hide or keep" in line
    assert "no worst-case results at linf 0.3" in _one_line(["report", str(out), "--eps", "0.3"])


def test_cli_run_writes_the_report_unless_told_not_to(tmp_path):
    bench = tmp_path / "bench.toml"
    bench.write_text(
        'name = "b"\n[dataset]\nname = "digits"\n[model]\nname = "small-cnn"\n'
        "[training]\nepochs = 1\n[evaluation]\nn_examples = 40\nsanity = false\n"
        '[[defenses]]\nname = "standard"\n[[attacks]]\nname = "fgsm"\neps = [0.1]\n'
    )
    result = CliRunner().invoke(main, ["run", str(bench), "-o", str(tmp_path / "a"), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "report.html").is_file()
    assert (tmp_path / "a" / "figures" / "robustness-linf.svg").is_file()
    result = CliRunner().invoke(
        main, ["run", str(bench), "-o", str(tmp_path / "b"), "-q", "--no-report"]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "results.csv").is_file()
    assert not (tmp_path / "b" / "report.html").exists()
    result = CliRunner().invoke(main, ["report", str(tmp_path / "b"), "--flagged", "keep"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"wrote {tmp_path / 'b' / 'report.html'}")


def test_figures_are_the_same_files_every_time(report):
    """Written again, every figure file is identical (no dates, salted SVG ids): a committed
    report does not change when nothing did."""
    _, out = report
    written = write_report(out)  # (an earlier test ran the benchmark again: new provenance)
    before = {p: p.read_bytes() for p in written.figures}
    html = written.html.read_bytes()
    again = write_report(out)
    assert {p: p.read_bytes() for p in again.figures} == before
    assert again.html.read_bytes() == html


def test_report_help_imports_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys; from robench.cli import main; sys.argv=['robench','report','--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'matplotlib', 'pandas') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--flagged last|hide|keep" in done.stdout


def test_kept_examples_travel_between_cell_stores(run, tmp_path):
    """What an executor whose tasks keep their own cell store needs: export, merge."""
    from robench.advexamples import ExampleStore
    from robench.cellstore import CellStore

    out, _, _ = run
    with CellStore(out) as source, CellStore(tmp_path) as target:
        rows = source.export()
        keys = [r[0] for r in rows]
        examples = ExampleStore(source.db).export(keys)
        assert len(examples) == len(ExampleStore(source.db).export()) > 0
        target.merge(rows)
        assert ExampleStore(target.db).merge(examples) == len(examples)
        for key, *_ in examples:
            a, b = ExampleStore(source.db).get(key), ExampleStore(target.db).get(key)
            assert a is not None and b is not None and a.keys() == b.keys()
            for name in a:
                np.testing.assert_array_equal(a[name], b[name])
