"""The report in a real browser: headless Chromium (Debian's ``chromium``; ``.ci/run``
installs it) loads the page of a small run, from a folder holding nothing else, without a
console error or a network request; every figure is drawn; the tables sort."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest

import robench
from robench.report import write_report

from .chromium import find_chromium, load_page
from .helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

_SORT = """(function () {
  var th = document.querySelector('#leaderboard table th:nth-child(2)');
  th.click();
  var first = document.querySelector('#leaderboard table tbody tr td:nth-child(2)').textContent;
  th.click();
  var again = document.querySelector('#leaderboard table tbody tr td:nth-child(2)').textContent;
  return [first.trim(), again.trim()];
})()"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if find_chromium() is None:
        pytest.skip(
            "Chromium is not installed (Debian: apt-get install chromium, which .ci/run does "
            "where it can; or set CHROMIUM to a Chromium or Chrome executable)"
        )
    tmp = tmp_path_factory.mktemp("browser")
    config = tiny_config(
        tmp,
        defenses=[
            {"name": "standard"},
            {"name": "adversarial", "label": "pgd-at", "attack": {"name": "pgd", "eps": 0.1}},
        ],
        evaluation={"n_examples": 100, "batch_size": 50, "sanity": False},
    )
    robench.run(config, quiet=True)
    written = write_report(tmp / "out")
    alone = tmp / "alone" / "report.html"  # nothing beside it: no figures/, no results
    alone.parent.mkdir()
    shutil.copy(written.html, alone)
    return load_page(alone, evaluate=(_SORT,)), written


def test_the_page_loads_without_errors_or_network_requests(page):
    load, _ = page
    assert load.errors == []
    assert load.requests == []
    assert load.width <= 1280 + 1  # nothing forces a horizontal scroll bar
    assert load.height > 2000


def test_every_figure_is_drawn_on_the_screenshot(page, tmp_path):
    from PIL import Image

    load, written = page
    shot = Image.open(io.BytesIO(load.screenshot)).convert("RGB")
    (tmp_path / "screenshot.png").write_bytes(load.screenshot)  # for a person to look at
    assert shot.size[0] >= 1280 - 20 and shot.size[1] == load.height
    assert len(load.images) == len({p.stem for p in written.figures}) == 6
    for image in load.images:
        assert image["complete"] and image["w"] > 300 and image["h"] > 200, image
        assert image["width"] > 300 and image["height"] > 200, image  # laid out, visible
        box = (
            int(image["x"]),
            int(image["y"]),
            int(image["x"] + image["width"]),
            int(image["y"] + image["height"]),
        )
        region = np.asarray(shot.crop(box).convert("L"), dtype=float)
        # drawn: not one flat colour, and a good share of the region is ink, not background
        assert region.std() > 20, image["alt"]
        assert (region < 200).mean() > 0.01, image["alt"]
        assert len(np.unique(region)) > 30, image["alt"]
    # the rest of the page is not blank either: headings and tables were rendered
    top = np.asarray(shot.crop((0, 0, shot.size[0], 600)).convert("L"), dtype=float)
    assert top.std() > 20


def test_the_tables_sort_when_a_heading_is_clicked(page):
    load, _ = page
    (first, again) = load.values[0]
    assert sorted([first, again]) == ["pgd-at", "standard"]
