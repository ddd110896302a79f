"""numbers: one formatter with 4 significant digits, padded axis ranges within bounds."""

from __future__ import annotations

import math

import pytest

from hpsearch.results.numbers import format_number, padded_range


@pytest.mark.parametrize(("x", "text"), [
    (0.0003833, "3.833e-4"),  # issue 12.7: was "4e-4"
    (0.00038327, "3.833e-4"),
    (1e-4, "1e-4"),
    (-0.00052, "-5.2e-4"),
    (0.0009999, "9.999e-4"),
    (0.001, "0.001"),
    (0.01234567, "0.01235"),
    (0.97123, "0.9712"),
    (0.3, "0.3"),
    (2.0, "2"),
    (123.456, "123.5"),
    (9999.4, "9999"),
    (9999.9, "1e4"),  # rounding up crosses into scientific
    (12345.6, "1.235e4"),
    (0.0, "0"),
])
def test_format_number_keeps_four_significant_digits(x: float, text: str) -> None:
    assert format_number(x) == text


def test_format_number_round_trips_to_four_digits() -> None:
    for x in (3.8327e-4, 7.77777e-6, 0.0123456, 0.5555555, 42.4242, 98765.4):
        assert float(format_number(x)) == pytest.approx(x, rel=5e-4)


def test_format_number_passes_non_finite_through() -> None:
    assert format_number(math.inf) == "inf" and format_number(math.nan) == "nan"


def test_padded_range_pads_and_stays_within_bounds() -> None:
    lo, hi = padded_range([0.2, 0.7], 0.0, 1.0)  # type: ignore[misc]
    assert lo == pytest.approx(0.16) and hi == pytest.approx(0.74)
    assert padded_range([0.01, 0.999], 0.0, 1.0) == (0.0, 1.0)
    assert padded_range([0.05, 2.0], 0.0, None)[0] == 0.0  # type: ignore[index]
    assert padded_range([]) is None and padded_range([math.nan]) is None


def test_padded_range_of_one_point_is_a_narrow_window() -> None:
    lo, hi = padded_range([0.9], 0.0, 1.0)  # type: ignore[misc]
    assert lo == pytest.approx(0.855) and hi == pytest.approx(0.945)  # not 0..1.8
    assert padded_range([0.99], 0.0, 1.0)[1] == 1.0  # type: ignore[index]
    assert padded_range([0.0]) == (-0.01, 0.01)
