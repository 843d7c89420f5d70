"""Schedules against their closed forms, round by round over whole runs."""

import dataclasses
from fractions import Fraction

import pytest

from fedprune.pruning.schedules import SCHEDULES, Constant, Geometric, OneShot, Polynomial, make_schedule
from fedprune.validation import ConfigError

RUN = range(1, 41)


def zhu_gupta(round, s_i, s_f, t0, n, dt, power=3):
    """Zhu & Gupta (2017), eq. 1, written out independently: s_t at the last update t <= round."""
    if round < t0:
        return 0.0
    t = min(t0 + n * dt, t0 + (round - t0) // dt * dt)
    return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** power


@pytest.mark.parametrize("rate", [0.1, 0.2, 0.5, 0.8, 0.013])
@pytest.mark.parametrize("every, start", [(1, 1), (3, 1), (2, 5)])
def test_geometric_density_is_one_minus_rate_to_the_steps(rate, every, start):
    schedule = Geometric(rate, every=every, start=start)
    assert schedule.steps is None
    k = 0
    for round in RUN:
        update = round >= start and (round - start) % every == 0
        assert schedule.is_update_round(round) == update
        k += update
        assert schedule.steps_done(round) == k
        # 1 - (1 - rate)^k in exact arithmetic, rounded once; the density to float precision.
        assert schedule.sparsity_at(round) == float(1 - (1 - Fraction(rate)) ** k)
        assert 1.0 - schedule.sparsity_at(round) == pytest.approx((1.0 - rate) ** k, rel=0, abs=1e-15)
        if k == 1:
            assert schedule.sparsity_at(round) == rate  # one step prunes exactly rate, as torch's amount
        if k == 0:
            assert schedule.sparsity_at(round) == 0.0


def test_geometric_hand_values():
    schedule = Geometric(0.5, every=2)
    assert [schedule.sparsity_at(r) for r in range(1, 8)] == [0.5, 0.5, 0.75, 0.75, 0.875, 0.875, 0.9375]
    assert [schedule.is_update_round(r) for r in range(1, 8)] == [True, False] * 3 + [True]
    # 1 - 0.9 ** 2 = 0.19 exactly in rationals: the nearest float to 19/100 of the binary 0.1.
    assert Geometric(0.1).sparsity_at(2) == pytest.approx(0.19, rel=1e-15)


@pytest.mark.parametrize("final", [0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 0.3])
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 7, 10, 20, 33])
def test_for_target_lands_exactly_on_the_final_sparsity(final, steps):
    schedule = Geometric.for_target(final, steps, every=2, start=3)
    assert schedule.steps == steps
    updates = [round for round in range(1, 3 + 2 * steps + 10) if schedule.is_update_round(round)]
    assert updates == [3 + 2 * i for i in range(steps)]
    last = updates[-1]
    for round in range(1, last + 10):
        k = schedule.steps_done(round)
        assert k == sum(u <= round for u in updates)
        if k == steps:
            assert schedule.sparsity_at(round) == final  # exact, not approximate
        else:
            assert schedule.sparsity_at(round) == float(1 - (1 - Fraction(schedule.rate)) ** k)
            assert schedule.sparsity_at(round) < final
    # Monotone non-decreasing over the run.
    values = [schedule.sparsity_at(r) for r in range(1, last + 3)]
    assert values == sorted(values)


def test_geometric_with_final_sparsity_stops_at_the_first_step_reaching_it():
    # 0.5 ** 3 = 0.125 > 0.1 and 0.5 ** 4 = 0.0625 <= 0.1: four steps, the last clipped to 0.9.
    schedule = Geometric(0.5, final_sparsity=0.9)
    assert schedule.steps == 4
    assert [schedule.sparsity_at(r) for r in range(1, 7)] == [0.5, 0.75, 0.875, 0.9, 0.9, 0.9]
    assert [schedule.is_update_round(r) for r in range(1, 7)] == [True] * 4 + [False] * 2


@pytest.mark.parametrize("s_i, s_f, t0, n, dt", [(0.0, 0.9, 1, 10, 1), (0.0, 0.8, 3, 4, 5),
                                                  (0.2, 0.95, 2, 6, 3), (0.5, 0.6, 1, 1, 7)])
def test_polynomial_is_the_zhu_gupta_cubic_at_every_round(s_i, s_f, t0, n, dt):
    schedule = Polynomial(s_f, initial_sparsity=s_i, start=t0, end=t0 + n * dt, every=dt)
    end = t0 + n * dt
    for round in range(1, end + 15):
        assert schedule.sparsity_at(round) == pytest.approx(zhu_gupta(round, s_i, s_f, t0, n, dt), rel=0, abs=1e-12)
        formula_step = t0 <= round <= end and (round - t0) % dt == 0
        # The step at t0 prunes nothing when s_i = 0, so it is not an update (no report spent on it).
        assert schedule.is_update_round(round) == (formula_step and (round > t0 or s_i > 0))
        if round > 1 and not schedule.is_update_round(round):
            assert schedule.sparsity_at(round) == schedule.sparsity_at(round - 1)  # held between updates
    assert schedule.sparsity_at(end) == s_f
    assert schedule.sparsity_at(end + 100) == s_f


def test_polynomial_hand_values():
    # s_f (1 - (1 - t/4)^3) for t = 0..4: 0, 0.8 * 37/64, 0.8 * 7/8, 0.8 * 63/64, 0.8.
    schedule = Polynomial(0.8, start=1, end=5)
    expected = [0.0, 0.8 * 37 / 64, 0.8 * 7 / 8, 0.8 * 63 / 64, 0.8, 0.8]
    assert [schedule.sparsity_at(r) for r in range(1, 7)] == pytest.approx(expected, abs=1e-15)
    assert [schedule.is_update_round(r) for r in range(1, 7)] == [False, True, True, True, True, False]


def test_polynomial_power_one_is_linear():
    schedule = Polynomial(0.6, start=1, end=4, power=1)
    assert [schedule.sparsity_at(r) for r in range(1, 5)] == pytest.approx([0.0, 0.2, 0.4, 0.6], abs=1e-15)


def test_polynomial_rejects_bad_settings():
    with pytest.raises(ConfigError, match="needs end"):
        Polynomial(0.9)
    with pytest.raises(ConfigError, match="every .* must divide end - start"):
        Polynomial(0.9, start=1, end=10, every=2)
    with pytest.raises(ConfigError, match="must come after start.*OneShot"):
        Polynomial(0.9, start=5, end=5)
    with pytest.raises(ConfigError, match="initial_sparsity .* below"):
        Polynomial(0.5, initial_sparsity=0.5, end=3)
    with pytest.raises(ConfigError, match="power"):
        Polynomial(0.5, end=3, power=0)


def test_oneshot_and_constant():
    oneshot = OneShot(0.9, at_round=4)
    assert [oneshot.sparsity_at(r) for r in range(1, 8)] == [0.0] * 3 + [0.9] * 4
    assert [oneshot.is_update_round(r) for r in range(1, 8)] == [False] * 3 + [True] + [False] * 3
    assert OneShot(0.7).sparsity_at(1) == 0.7 and OneShot(0.7).is_update_round(1)
    constant = Constant(0.5)
    assert [constant.sparsity_at(r) for r in RUN] == [0.5] * len(RUN)
    assert [constant.is_update_round(r) for r in RUN] == [True] + [False] * (len(RUN) - 1)


def test_schedules_are_frozen_and_validate():
    with pytest.raises(dataclasses.FrozenInstanceError):
        OneShot(0.5).sparsity = 0.6
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="sparsity"):
            OneShot(bad)
    with pytest.raises(ConfigError, match="rate"):
        Geometric(0.0)
    with pytest.raises(ConfigError, match="rate"):
        Geometric(1.0)
    with pytest.raises(ConfigError, match="steps"):
        Geometric.for_target(0.9, 0)
    for schedule in (OneShot(0.5), Constant(0.5), Geometric(0.5), Polynomial(0.5, end=3)):
        with pytest.raises(ConfigError, match="rounds are numbered from 1"):
            schedule.sparsity_at(0)
        with pytest.raises(ConfigError, match="rounds are numbered from 1"):
            schedule.is_update_round(0)


def test_make_schedule_builds_and_names_valid_choices():
    assert make_schedule("geometric", rate=0.2, every=2) == Geometric(0.2, every=2)
    assert make_schedule("polynomial", final_sparsity=0.9, end=11) == Polynomial(0.9, end=11)
    assert make_schedule("oneshot", sparsity=0.5) == OneShot(0.5)
    with pytest.raises(ConfigError) as error:
        make_schedule("cosine", sparsity=0.5)
    for name in SCHEDULES:
        assert name in str(error.value)
    with pytest.raises(ConfigError) as error:
        make_schedule("geometric", rate=0.2, steps=3)
    assert "steps" in str(error.value)
    for field in ("rate", "every", "start", "final_sparsity"):
        assert field in str(error.value)
    with pytest.raises(ConfigError, match="valid settings: sparsity, at_round"):
        make_schedule("oneshot")
