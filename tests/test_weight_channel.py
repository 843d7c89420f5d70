"""The weight channels: equal weights, clipping and noise of DP-FedAvg; example weighting only where it is free."""

import math

import numpy as np
import pytest

from fedprune.privacy import events
from fedprune.privacy.accountant import Accountant
from fedprune.privacy.closed_form import analytic_gaussian_epsilon
from fedprune.privacy.rng import privacy_rng
from fedprune.privacy.weight_channel import Clear, DpSgd, NoisedMean, build, clip
from fedprune.validation import ConfigError

DELTA = 1e-5


def replies(n: int, seed: int = 0, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return [{"w": (scale * rng.standard_normal((3, 4))).astype(np.float32),
             "b": rng.standard_normal(4).astype(np.float32)}
            for _ in range(n)]


def zeros():
    return {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)}


def norm(update) -> float:
    return math.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in update.values()))


def test_clip_scales_the_whole_update_to_the_norm_and_leaves_small_ones():
    big = replies(1, scale=10.0)[0]
    clipped = clip(big, 1.5)
    assert norm(clipped) == pytest.approx(1.5)
    ratio = clipped["w"] / big["w"]
    assert np.allclose(ratio, ratio.flat[0]) and np.allclose(clipped["b"] / big["b"], ratio.flat[0])
    small = {"w": np.full((2,), 0.1)}
    assert np.array_equal(clip(small, 1.0)["w"], small["w"])
    assert np.array_equal(clip({"w": np.zeros(3)}, 1.0)["w"], np.zeros(3))


def test_noised_mean_ignores_example_counts_and_clips_each_update():
    channel = NoisedMean("server-clipping", noise_multiplier=1e-9, clipping_norm=1.0)
    sent, got = zeros(), replies(3, scale=5.0)
    a = channel.combine(sent, got, [1, 1, 1], privacy_rng(0))
    b = channel.combine(sent, got, [1000, 1, 1], privacy_rng(0))  # a client claiming more examples moves nothing
    assert all(np.array_equal(a[name], b[name]) for name in a)
    expected = {name: np.mean([clip(r, 1.0)[name] for r in got], axis=0) for name in sent}
    assert all(np.allclose(a[name], expected[name], atol=1e-6) for name in a)


def test_one_client_moves_the_noised_mean_by_at_most_2c_over_n():
    channel = NoisedMean("client-clipping", noise_multiplier=1e-9, clipping_norm=0.5)
    sent, got = zeros(), replies(4, scale=3.0)
    swapped = got[:3] + [{name: -10.0 * value for name, value in got[3].items()}]
    a = channel.combine(sent, got, [None] * 4, privacy_rng(1))
    b = channel.combine(sent, swapped, [None] * 4, privacy_rng(1))
    assert norm({n: a[n].astype(np.float64) - b[n] for n in a}) <= 2 * 0.5 / 4 + 1e-6


def test_noise_std_is_z_c_over_the_reply_count():
    # 4,000 draws of 16 coordinates: the sample std is within 3% of z*C/n with probability > 1 - 1e-9
    channel = NoisedMean("server-clipping", noise_multiplier=2.0, clipping_norm=0.5)
    sent, got = zeros(), [zeros() for _ in range(5)]
    rng = privacy_rng(7)
    draws = np.array([np.concatenate([v.ravel() for v in channel.combine(sent, got, [None] * 5, rng).values()])
                      for _ in range(4000)])
    assert draws.std() == pytest.approx(2.0 * 0.5 / 5, rel=0.03)
    assert abs(draws.mean()) < 0.005


def test_the_ledger_figure_of_the_noised_mean_is_the_analytic_gaussian():
    channel = NoisedMean("server-clipping", noise_multiplier=3.0, clipping_norm=1.0)
    accountant = Accountant()
    for _ in range(7):
        for event, units in channel.events():
            accountant.record(event, units=units, clients=["0"])
    # 7 Gaussians of std z*C on the sum, replace-one sensitivity 2C: one of std z, sensitivity 2 sqrt(7)
    exact = analytic_gaussian_epsilon(3.0, DELTA, sensitivity=2 * math.sqrt(7))
    for unit in ("record", "client"):
        assert exact <= accountant.epsilon(DELTA, unit) <= exact + 1e-3


def test_clear_and_dpsgd_weight_by_examples_and_say_whom_they_protect():
    got = replies(2)
    for channel in (Clear(), DpSgd()):
        average = channel.combine(zeros(), got, [3, 1], rng=None)
        assert np.allclose(average["w"], 0.75 * got[0]["w"] + 0.25 * got[1]["w"])
    assert Clear().trust("record") == Clear().trust("client") == "none"
    assert DpSgd().trust("record") == "local" and DpSgd().trust("client") == "none"
    assert NoisedMean("server-clipping", 1.0, 1.0).trust("client") == "central"
    dpsgd = DpSgd().events({"history": [(1.1, 0.1, 30)]})
    assert (events.Gaussian(1.1, 0.1, 30), ("record",)) in dpsgd
    assert any(isinstance(e, events.Unprotected) and units == ("client",) for e, units in dpsgd)


def test_build_refuses_unknown_channels_and_bad_noise():
    with pytest.raises(ConfigError, match="unknown weight channel 'flower'"):
        build("flower", 1.0, 1.0)
    with pytest.raises(ConfigError, match="noise-multiplier"):
        build("server-clipping", 0.0, 1.0)
    with pytest.raises(ConfigError, match="numpy Generator"):
        build("server-clipping", 1.0, 1.0).combine(zeros(), replies(1), [None], rng=None)
