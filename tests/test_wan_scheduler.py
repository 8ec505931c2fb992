"""The few-step schedule against values computed independently of the implementation."""

import math

import pytest
import torch

from scope.pipelines.wan.scheduler import FlowMatchSchedule


def reference_sigma(t: float, shift: float) -> tuple[float, int]:
    """Plain-Python lookup: the shifted grid entry whose timestep is nearest to ``t``."""
    best = None
    for i in range(1000):
        base = 1.0 - i / 1000.0
        sigma = shift * base / (1.0 + (shift - 1.0) * base)
        distance = abs(sigma * 1000.0 - t)
        if best is None or distance < best[0]:
            best = (distance, sigma, i)
    return best[1], best[2]


# The reference's table: (t, sigma at shift 5, index, sigma at shift 8, index).
TABLE = [
    (1000, 1.00000, 0, 1.00000, 0),
    (750, 0.75000, 625, 0.75026, 727),
    (600, 0.60031, 769, 0.60019, 842),
    (500, 0.50060, 833, 0.49972, 889),
    (250, 0.25160, 937, 0.25000, 960),
    (0, 0.00498, 999, 0.00794, 999),
]


@pytest.mark.parametrize("t,s5,i5,s8,i8", TABLE)
def test_sigma_table(t, s5, i5, s8, i8):
    for shift, sigma, index in ((5.0, s5, i5), (8.0, s8, i8)):
        expected, expected_index = reference_sigma(t, shift)
        assert expected_index == index
        assert float(FlowMatchSchedule(shift).sigma(t)) == pytest.approx(expected, abs=1e-12)
        assert float(FlowMatchSchedule(shift).sigma(t)) == pytest.approx(sigma, abs=5e-6)


def test_sigma_is_per_element():
    schedule = FlowMatchSchedule(5.0)
    t = torch.tensor([[1000, 750, 250]])
    sigmas = schedule.sigma(t)
    assert sigmas.shape == (1, 3)
    assert [round(float(s), 5) for s in sigmas[0]] == [1.0, 0.75, 0.2516]


def test_x0_conversion_is_float64_per_frame():
    schedule = FlowMatchSchedule(5.0)
    x_t = torch.randn(1, 2, 16, 4, 4)
    flow = torch.randn(1, 2, 16, 4, 4)
    t = torch.tensor([[750, 250]])
    x0 = schedule.to_x0(flow, x_t, t)
    for frame, step in enumerate((750, 250)):
        sigma, _ = reference_sigma(step, 5.0)
        expected = (x_t[0, frame].double() - sigma * flow[0, frame].double()).float()
        torch.testing.assert_close(x0[0, frame], expected, rtol=0, atol=1e-6)
    assert x0.dtype == x_t.dtype


def test_renoise_mixes_at_the_next_level():
    schedule = FlowMatchSchedule(5.0)
    x0, noise = torch.ones(3), torch.full((3,), 2.0)
    sigma, _ = reference_sigma(500, 5.0)
    mixed = schedule.add_noise(x0, noise, 500)
    assert torch.allclose(mixed, torch.full((3,), (1 - sigma) * 1.0 + sigma * 2.0))
    assert math.isclose(sigma, 0.5006, abs_tol=1e-4)
