"""Attack passes in chunks on the CPU: the rule, and the attacks' outcomes unchanged by it."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from robench import chunks
from robench.attacks.apgd import APGD
from robench.attacks.apgd_t import APGDT
from robench.attacks.fab import FAB
from robench.attacks.pgd import PGD
from robench.attacks.square import Square
from robench.threat import ThreatModel

from .helpers import craft_in_budget, trained_digits_mlp

pytestmark = pytest.mark.usefixtures("one_thread")


class Widest(nn.Module):
    """``model``, recording the largest batch its forward pass saw."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.widest = model, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.widest = max(self.widest, len(x))
        return self.model(x)


@pytest.fixture(scope="module")
def digits():
    """An MLP trained on scikit-learn's digits; its 297 held-out examples."""
    return trained_digits_mlp(300)


def _measured(model, x) -> int:
    with torch.no_grad():
        chunks.forward(model, x)  # the first pass measures the footprint
    per_example = chunks.footprint(model, x)
    assert per_example == (64 + 128 + 128 + 10) * 4  # the MLP's leaf outputs, fp32
    return per_example


def test_chunk_size_is_a_power_of_two_within_the_budget(monkeypatch, digits):
    model, x, _ = digits
    per_example = _measured(model, x)
    monkeypatch.setenv("ROBENCH_CPU_CHUNK_MB", str(100 * per_example / 2**20))
    assert chunks.chunk_size(model, x) == 64  # 100 examples fit: the power of two below
    monkeypatch.setenv("ROBENCH_CPU_CHUNK_MB", str(1000 * per_example / 2**20))
    assert chunks.chunk_size(model, x) == 512
    monkeypatch.setenv("ROBENCH_CPU_CHUNK_MB", str(per_example / 2**20))
    assert chunks.chunk_size(model, x) == chunks.MIN_CHUNK  # never below the minimum
    assert chunks.chunk_size(model, x[: chunks.MIN_CHUNK]) is None  # one chunk: whole batch


def test_the_first_pass_runs_whole_and_the_next_in_chunks(monkeypatch, digits):
    model, x, _ = digits
    monkeypatch.setenv("ROBENCH_CPU_CHUNK_MB", "0.01")
    counted = Widest(model).eval()
    with torch.no_grad():
        first = chunks.forward(counted, x)
        assert counted.widest == len(x)
        counted.widest = 0
        assert torch.equal(chunks.forward(counted, x), first)
    chunk = chunks.chunk_size(counted, x)
    assert chunk == chunks.MIN_CHUNK
    assert counted.widest == -(-len(x) // 5) <= chunk  # 297 rows in 5 equal chunks


def test_no_chunks_when_off_in_training_mode_or_off_the_cpu(monkeypatch, digits):
    model, x, _ = digits
    _measured(model, x)
    monkeypatch.setenv("ROBENCH_CPU_CHUNK_MB", "0.001")
    assert chunks.chunk_size(model, x) == chunks.MIN_CHUNK
    model.train()
    try:
        assert chunks.chunk_size(model, x) is None  # batch norm's statistics need the batch
    finally:
        model.eval()
    monkeypatch.setenv("ROBENCH_CPU_CHUNK_MB", "0")
    assert chunks.chunk_size(model, x) is None
    monkeypatch.setenv("ROBENCH_CPU_CHUNK_MB", "lots")
    with pytest.raises(ValueError, match="ROBENCH_CPU_CHUNK_MB='lots': expected a number"):
        chunks.chunk_size(model, x)
    monkeypatch.setenv("ROBENCH_CPU_CHUNK_MB", "0.001")
    assert chunks.chunk_size(model, x.to("meta")) is None  # not a CPU: the whole batch


def test_pieces_are_equal_and_cover_every_row():
    for n, chunk in [(300, 128), (129, 128), (128, 128), (5, None), (1000, 64)]:
        parts = list(chunks.pieces(n, chunk))
        sizes = [s.stop - s.start for s in parts]
        assert parts[0].start == 0 and parts[-1].stop == n
        assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
        assert max(sizes) - min(sizes) <= 1
        assert chunk is None or max(sizes) <= chunk
    assert [s.stop - s.start for s in chunks.pieces(129, 128)] == [65, 64]


ATTACKS = {
    "pgd": lambda t: PGD(t, steps=10),
    "apgd-ce": lambda t: APGD(t, steps=10),
    "apgd-t": lambda t: APGDT(t, steps=5, n_target_classes=3),
    "fab-t": lambda t: FAB(t, steps=5, targeted=True, n_target_classes=3),
    "square": lambda t: Square(t, n_queries=100),
}


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_chunked_passes_leave_every_outcome_as_the_whole_batch_gives(
    monkeypatch, digits, name, norm, eps
):
    """Each native attack, on 297 digits: per example, fooled or not exactly as without
    chunks, and the adversarial points equal up to float rounding; the chunked run never
    passed more than one chunk through the model."""
    model, x, y = digits
    attack = ATTACKS[name](ThreatModel(norm, eps, (0.0, 1.0)))
    per_example = _measured(model, x)

    monkeypatch.setenv("ROBENCH_CPU_CHUNK_MB", "0")
    whole = Widest(model)
    plain = craft_in_budget(attack, (whole, x, y))
    assert whole.widest == len(x)

    monkeypatch.setenv("ROBENCH_CPU_CHUNK_MB", str(100 * per_example / 2**20))
    chunked_model = Widest(model).eval()
    _measured(chunked_model, x)  # its first pass, on the whole batch
    chunked_model.widest = 0
    chunked = craft_in_budget(attack, (chunked_model, x, y))
    assert chunked_model.widest <= 64

    with torch.no_grad():
        assert torch.equal(model(plain).argmax(1) != y, model(chunked).argmax(1) != y)
    torch.testing.assert_close(chunked, plain, atol=1e-5, rtol=0)
