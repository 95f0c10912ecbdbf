"""The refit's shared rules: how many positions a conv samples, and the held-out check
that decides whether a layer's refit is written."""

import numpy as np
import pytest

from filterprune.core.reconstruction import (
    HELD_OUT,
    POSITIONS,
    ROWS_PER_UNKNOWN,
    NormalEquations,
    held_out,
    positions_per_image,
    ridge_solve,
    solve_checked,
)


@pytest.mark.parametrize(("unknowns", "images", "spatial", "expected"), [
    (10, 512, 784, POSITIONS),  # narrow: the default
    (577, 16, 784, 73),  # wide with few images: 2 rows per unknown (16 * 73 >= 1154)
    (577, 16, 49, 49),  # never more than the positions there are
    (4609, 0, 3, 3),  # no images recorded: no division by zero
    (5, 4, 4, 4),  # a small output: every position
])  # fmt: skip
def test_positions_per_image(unknowns, images, spatial, expected):
    assert positions_per_image(unknowns, images, spatial) == expected
    if expected < spatial and expected > POSITIONS:
        assert images * expected >= ROWS_PER_UNKNOWN * unknowns


def test_held_out_takes_every_eighth_unit_counted_over_batches():
    first = held_out(np.arange(5), 0)
    second = held_out(np.arange(5), 5)  # the next batch goes on counting
    assert np.flatnonzero(np.concatenate([first, second])).tolist() == [HELD_OUT - 1]


def _split(a, b, old):
    fit, held = NormalEquations(old), NormalEquations(old)
    out = held_out(np.arange(len(a)), 0)
    fit.add(a[~out], b[~out])
    held.add(a[out], b[out])
    return fit, held


def test_a_fit_that_predicts_held_out_rows_is_written():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 6))
    w = rng.standard_normal((6, 3))
    b = a @ w + 0.01 * rng.standard_normal((400, 3))
    solved, before, after = solve_checked(*_split(a, b, np.zeros((6, 3))), ridge_solve)
    np.testing.assert_allclose(solved, w, atol=0.01)
    assert before == pytest.approx(1.0) and after < 1e-3


def test_a_fit_of_noise_is_refused_by_the_held_out_rows():
    """Targets unrelated to the inputs, barely more rows than unknowns: the fit lowers
    the error on the rows it saw (the old check let it through) but not on the others."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((48, 30))
    b = rng.standard_normal((48, 4))
    old = np.zeros((30, 4))  # predicts the noise's mean: the best there is
    fit, held = _split(a, b, old)
    solved, before, after = solve_checked(fit, held, ridge_solve)
    assert solved is None and after == before == pytest.approx(1.0)
    whole = NormalEquations(old)
    whole.add(a, b)
    in_sample, _, after_in_sample = solve_checked(whole, NormalEquations(old), ridge_solve)
    assert in_sample is not None and after_in_sample < 0.5  # what it refused


def test_too_few_rows_left_to_fit_fall_back_to_every_row():
    """When the rows left after holding out do not determine the weights, the refit uses
    every row, as it would with nothing held out."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((16, 15))
    w = rng.standard_normal((15, 2))
    fit, held = _split(a, a @ w, np.zeros((15, 2)))
    assert fit.rows < 15 <= fit.rows + held.rows
    solved, _, after = solve_checked(fit, held, ridge_solve)
    assert solved is not None and after < 1e-2


def test_nothing_to_fit():
    old = np.zeros((3, 2))
    fit, held = _split(np.zeros((16, 3)), np.ones((16, 2)), old)
    assert solve_checked(fit, held, ridge_solve) is None  # all-zero inputs
    fit, held = _split(np.ones((16, 3)), np.zeros((16, 2)), old)
    assert solve_checked(fit, held, ridge_solve) is None  # all-zero targets
