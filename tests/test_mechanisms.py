"""Mask-report mechanisms against closed forms, exact enumeration and seeded statistical bounds.

Statistical tests use fixed seeds; each bound is at least 5 standard errors wide, so under
fresh randomness a correct mechanism would fail one with probability below ~1e-5 per check.
"""

import itertools
import math

import numpy as np
import pytest

from fedprune.pruning.bits import pack, unpack
from fedprune.privacy.events import BernoulliPair, Gaussian, randomized_response
from fedprune.privacy.mechanisms import (
    REGISTRY,
    MaskReport,
    MechanismSettings,
    OptimizedUnaryEncoding,
    SymmetricUnaryEncoding,
)
from fedprune.privacy.mechanisms import build as build_from_settings
from fedprune.privacy.mechanisms.packed import count_ones
from fedprune.privacy.mechanisms.subset import optimal_subset_size, subset_channel
from fedprune.privacy.rng import RandomnessSource, privacy_rng
from fedprune.privacy.spec import ReportSpec
from fedprune.validation import ConfigError

MECHANISMS = ("central", "oue", "randomized-response", "sampling", "subset", "sue")  # the private report mechanisms
D, K = 30, 6
SPEC = ReportSpec.for_exactly_k(K, D)  # Delta = 12
LOCAL = {
    "randomized-response": {"epsilon": 1.0},
    "sue": {"epsilon": 2.0},
    "oue": {"epsilon": 1.0},
    "subset": {"epsilon": 2.0, "kept": K},
    "sampling": {"epsilon": 1.0, "sample_size": 10},
}


def central(**kw):
    spec = ReportSpec(threat_model="central", hamming_bound=SPEC.hamming_bound)
    return REGISTRY["central"](length=D, spec=spec, **({"noise_multiplier": 2.0} | kw))


def build(name):
    return central() if name == "central" else REGISTRY[name](length=D, spec=SPEC, **LOCAL[name])


def exactly_k_masks(n, seed=0):
    """n masks keeping exactly K of D weights, early coordinates kept more often (distinct frequencies)."""
    rng = np.random.default_rng(seed)
    weights = np.linspace(3.0, 0.2, D)
    masks = np.zeros((n, D), dtype=bool)
    for row in masks:
        row[rng.choice(D, size=K, replace=False, p=weights / weights.sum())] = True
    return masks


# --- spec and randomness ---------------------------------------------------------------------

def test_report_spec_bounds():
    assert ReportSpec.for_exactly_k(3, 10).hamming_bound == 6
    assert ReportSpec.for_exactly_k(8, 10).hamming_bound == 4  # 2(d - k)
    assert ReportSpec.for_unconstrained(10).hamming_bound == 10
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="hamming_bound"):
            ReportSpec(hamming_bound=bad)
    with pytest.raises(ConfigError, match="threat model"):
        ReportSpec(threat_model="trusted", hamming_bound=1)
    with pytest.raises(ConfigError, match="unit"):
        ReportSpec(unit="user", hamming_bound=1)
    with pytest.raises(ConfigError, match="kept"):
        ReportSpec.for_exactly_k(10, 10)
    with pytest.raises(ConfigError, match="exceeds the mask length"):
        REGISTRY["randomized-response"](length=5, spec=ReportSpec(hamming_bound=6), epsilon=1.0)


def test_privacy_rng_seeded_streams_and_os_entropy():
    assert np.array_equal(privacy_rng(7).integers(0, 2**62, 4), privacy_rng(7).integers(0, 2**62, 4))
    assert not np.array_equal(privacy_rng(7, stream=(1, 2)).integers(0, 2**62, 4),
                              privacy_rng(7, stream=(1, 3)).integers(0, 2**62, 4))
    # two OS-entropy generators agree on four 62-bit draws with chance 2**-248
    assert not np.array_equal(privacy_rng().integers(0, 2**62, 4), privacy_rng().integers(0, 2**62, 4))
    assert RandomnessSource.from_seed(None).to_dict() == {"source": "os-entropy"}
    assert RandomnessSource.from_seed(3).to_dict() == {"source": "seeded", "seed": 3}
    with pytest.raises(ConfigError):
        RandomnessSource(seeded=True, seed=None)
    with pytest.raises(ConfigError, match="seed"):
        privacy_rng(-1)
    with pytest.raises(ConfigError, match="Generator"):
        build("randomized-response").encode(pack(np.zeros(D, bool)), np.random.RandomState(0))


# --- channels and privacy figures ------------------------------------------------------------

def test_randomized_response_flip_probability_and_figures():
    eps = 1.3
    mech = REGISTRY["randomized-response"](length=D, spec=SPEC, epsilon=eps)
    claimed = 1 / (1 + math.exp(eps))
    assert claimed <= mech.flip_probability <= claimed + 2**-32  # rounded up: never less noise than claimed
    assert mech.keep_report == 1 - mech.flip_probability
    assert mech.epsilon_per_decision == eps and mech.epsilon_per_report == pytest.approx(12 * eps)
    event = mech.event()
    assert isinstance(event, BernoulliPair) and event.count == 12
    assert event.epsilon_per_coordinate <= eps and event.epsilon_per_coordinate == pytest.approx(eps, abs=1e-8)
    assert event.q == pytest.approx(randomized_response(eps, 12).q, abs=2**-32)
    # empirical flip rate over 200 reports of an all-ones mask: 6000 bits, 5 standard errors
    rng = privacy_rng(1)
    flips = sum(D - int(unpack(mech.encode(pack(np.ones(D, bool)), rng).bits, D).sum()) for _ in range(200))
    assert abs(flips / 6000 - claimed) < 5 * math.sqrt(claimed * (1 - claimed) / 6000)


def test_unary_encodings_channels_and_figures():
    sue = REGISTRY["sue"](length=D, spec=SPEC, epsilon=2.0)
    assert sue.flip_probability == pytest.approx(1 / (1 + math.e), abs=2**-32)
    assert sue.epsilon_per_decision == 1.0 and sue.epsilon_per_report == 12.0
    assert sue.event().epsilon_per_coordinate == pytest.approx(1.0, abs=1e-8)

    eps = 1.0
    oue = REGISTRY["oue"](length=D, spec=SPEC, epsilon=eps)
    assert oue.keep_report == 0.5
    assert 1 / (math.exp(eps) + 1) <= oue.prune_report <= 1 / (math.exp(eps) + 1) + 2**-32
    per_bit = math.log((math.exp(eps) + 1) / 2)  # the worse of ln(p/q) and ln((1-q)/(1-p))
    assert oue.epsilon_per_decision == pytest.approx(per_bit)
    assert oue.epsilon_per_report == pytest.approx(12 * per_bit)
    event = oue.event()  # the dominating randomized response: conservative for mixed directions
    assert event.count == 12 and per_bit - 1e-8 <= event.epsilon_per_coordinate <= per_bit
    assert event.p == pytest.approx(1 / (1 + math.exp(-per_bit)))
    # a one-hot change (one bit each way) costs exactly eps: ln(p/q) + ln((1-q)/(1-p))
    q = oue.prune_report
    assert math.log(0.5 / q) + math.log((1 - q) / 0.5) == pytest.approx(eps, abs=1e-8)
    # empirical channel over 1000 reports of a half-kept mask: 15000 bits each side, 5 standard errors
    mask = np.arange(D) < 15
    rng = privacy_rng(2)
    bits = np.array([unpack(oue.encode(pack(mask), rng).bits, D) for _ in range(1000)])
    assert abs(bits[:, :15].mean() - 0.5) < 5 * math.sqrt(0.25 / 15000)
    assert abs(bits[:, 15:].mean() - q) < 5 * math.sqrt(q * (1 - q) / 15000)


def test_subset_sampling_central_figures():
    subset = build("subset")
    assert subset.epsilon_per_report == subset.epsilon_per_decision == 2.0
    assert subset.event() == randomized_response(2.0, 1)
    sampling = build("sampling")
    assert sampling.epsilon_per_report == 10 * 1.0  # min(s = 10, Delta = 12) bits
    assert REGISTRY["sampling"](length=D, spec=SPEC, epsilon=0.5, sample_size=20).epsilon_per_report == 6.0
    assert sampling.event().count == 10
    mech = central()
    assert mech.event() == Gaussian(noise_multiplier=2.0, sensitivity=1.0)
    assert mech.noise_std == pytest.approx(2.0 * math.sqrt(12))
    assert "trusted" in mech.describe(delta=1e-5)["trust_model"]
    from fedprune.privacy.closed_form import analytic_gaussian_epsilon, analytic_gaussian_sigma
    assert mech.epsilon_per_report(1e-5) == pytest.approx(analytic_gaussian_epsilon(2.0, 1e-5))
    assert mech.epsilon_per_decision(1e-5) == pytest.approx(analytic_gaussian_epsilon(2.0 * math.sqrt(12), 1e-5))
    target = central(noise_multiplier=None, epsilon=1.0, delta=1e-5)
    assert target.noise_multiplier == pytest.approx(analytic_gaussian_sigma(1.0, 1e-5))
    assert target.epsilon_per_report() == pytest.approx(1.0, rel=1e-6)


def test_each_setting_means_one_thing():
    assert SymmetricUnaryEncoding.epsilon_for_decision(0.7) == 1.4
    assert OptimizedUnaryEncoding.epsilon_for_decision(0.7) == pytest.approx(math.log(2 * math.exp(0.7) - 1))
    for name in ("randomized-response", "sue", "oue", "sampling"):  # epsilon-per-decision: one bit
        mech = build_from_settings(MechanismSettings(mechanism=name, epsilon_per_decision=0.7, epsilon_per_report=9.0),
                                   length=D, kept=K, hamming_bound=12)
        assert mech.epsilon_per_decision == pytest.approx(0.7, rel=1e-12)
    # epsilon-per-report: the whole report (subset), the per-report target at delta (central)
    per_report = {"epsilon_per_decision": 9.0, "epsilon_per_report": 0.7}
    subset = build_from_settings(MechanismSettings(mechanism="subset", **per_report), length=D, kept=K)
    assert subset.epsilon_per_report == 0.7 and subset.spec.hamming_bound == 12
    gauss = build_from_settings(MechanismSettings(mechanism="central", **per_report), length=D, hamming_bound=12)
    assert gauss.epsilon_per_report(1e-5) == pytest.approx(0.7, rel=1e-6) and gauss.spec.threat_model == "central"


def test_describe_names_trust_model_and_spec():
    for name in MECHANISMS:
        info = build(name).describe(delta=1e-5) if name == "central" else build(name).describe()
        assert info["mechanism"] == name and info["hamming_bound"] == 12 and info["unit"] == "client"
        assert info["trust_model"].startswith("central" if name == "central" else "local")


# --- estimates -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_estimate_is_unbiased_and_variance_matches(name):
    mech = build(name)
    n, repeats = 20, 1000
    masks = exactly_k_masks(n)
    packed = [pack(row) for row in masks]
    truth = masks.mean(axis=0)
    rng = privacy_rng(11)
    estimates = np.array([
        mech.estimate(mech.aggregate([mech.encode(p, rng, public_seed=(r, i)) for i, p in enumerate(packed)], rng))
        for r in range(repeats)])
    variance = mech.variance(n, truth)
    # unbiased, per coordinate: each mean of 1000 estimates within 5 standard errors (30 coordinates)
    z = (estimates.mean(axis=0) - truth) / np.sqrt(variance / repeats)
    assert np.abs(z).max() < 5
    # unbiased, pooled: an additive offset (sum of errors) and a scale error (errors against the
    # centred truth), each a mean of 1000 i.i.d. repeats within 5 of its empirical standard errors
    errors = estimates - truth
    for contrast in (np.ones(D), truth - truth.mean()):
        pooled = errors @ contrast
        # (+1e-9: a subset report's estimates always sum to exactly k, a zero-variance contrast)
        assert abs(pooled.mean()) < 5 * pooled.std(ddof=1) / math.sqrt(repeats) + 1e-9
    # variance: sample/stated ratio ~ chi2_999 / 999 (sd 0.045) per coordinate; pooled within 0.1
    ratio = estimates.var(axis=0, ddof=1) / variance
    assert 0.75 < ratio.min() and ratio.max() < 1.3
    assert abs(ratio.mean() - 1) < 0.1


def test_closed_form_variances():
    eps = 1.0
    rr = REGISTRY["randomized-response"](length=D, spec=SPEC, epsilon=eps)
    expected = math.exp(eps) / (50 * (math.exp(eps) - 1) ** 2)
    assert rr.variance(50, np.array([0.0, 0.3, 1.0])) == pytest.approx([expected] * 3, rel=1e-8)
    full = REGISTRY["sampling"](length=D, spec=SPEC, epsilon=eps, sample_size=D)
    assert full.variance(50, 0.3) == pytest.approx(expected, rel=1e-8)  # s = d: plain randomized response
    mech = central()
    assert mech.variance(10, np.zeros(3)) == pytest.approx([12 * 4.0 / 100] * 3)


def test_aggregate_counts_exactly():
    rng = np.random.default_rng(0)
    for length, n in [(1, 1), (13, 3), (64, 7), (1000, 255), (70001, 300)]:
        rows = rng.random((n, length)) < 0.4
        assert np.array_equal(count_ones([pack(r) for r in rows], length), rows.sum(axis=0))
    mech = build("randomized-response")
    reports = [mech.encode(pack(m), privacy_rng(i)) for i, m in enumerate(exactly_k_masks(9))]
    tally = mech.aggregate(reports)
    assert tally.n == 9 and np.array_equal(tally.sums, sum(unpack(r.bits, D).astype(int) for r in reports))


# --- subset ----------------------------------------------------------------------------------

def test_subset_channel_matches_enumeration():
    d, k, l, eps = 7, 2, 3, 1.5
    mech = REGISTRY["subset"](length=d, spec=ReportSpec.for_exactly_k(k, d), epsilon=eps, kept=k, subset_size=l)
    kept = {0, 1}
    weights = {s: math.exp(eps) if kept & set(s) else 1.0 for s in itertools.combinations(range(d), l)}
    total = sum(weights.values())
    a = sum(w for s, w in weights.items() if 0 in s) / total
    b = sum(w for s, w in weights.items() if 5 in s) / total
    assert mech.keep_report == pytest.approx(a, rel=1e-8) and mech.prune_report == pytest.approx(b, rel=1e-8)
    # empirical subset frequencies: 35 subsets, 20000 draws, each within 5 standard errors
    rng = privacy_rng(4)
    mask = pack(np.isin(np.arange(d), list(kept)))
    counts = {}
    for _ in range(20000):
        subset = tuple(mech.encode(mask, rng).indices.tolist())
        assert len(subset) == l
        counts[subset] = counts.get(subset, 0) + 1
    for subset, w in weights.items():
        p = w / total
        assert abs(counts.get(subset, 0) / 20000 - p) < 5 * math.sqrt(p * (1 - p) / 20000)


def test_subset_size_minimises_variance_and_reports_l_sorted_indices():
    d, k, eps = 60, 4, 2.0
    best = optimal_subset_size(d, k, eps)
    f = k / d

    def mean_variance(l):
        hit_free = math.comb(d - k, l) / math.comb(d, l)
        hit = (1 - hit_free) / ((1 - hit_free) + hit_free * math.exp(-eps))
        a, b = subset_channel(d, k, l, hit)
        return (f * a * (1 - a) + (1 - f) * b * (1 - b)) / (a - b) ** 2
    assert best == min(range(1, d - k + 1), key=mean_variance)
    mech = REGISTRY["subset"](length=d, spec=ReportSpec.for_exactly_k(k, d), epsilon=eps, kept=k)
    assert mech.subset_size == best
    rng = privacy_rng(3)
    for i in range(50):
        mask = np.zeros(d, bool)
        mask[rng.choice(d, k, replace=False)] = True
        idx = mech.encode(pack(mask), rng).indices
        assert idx.dtype == np.int64 and idx.size == best and np.all(np.diff(idx) > 0) and 0 <= idx[0] <= idx[-1] < d
    with pytest.raises(ConfigError, match="exactly 4"):
        mech.encode(pack(np.arange(d) < 5), rng)


# --- sampling --------------------------------------------------------------------------------

def test_sampling_coordinates_come_from_the_public_seed():
    mech = build("sampling")
    again = REGISTRY["sampling"](length=D, spec=SPEC, **LOCAL["sampling"])
    at = mech.coordinates((4, 17))
    assert np.array_equal(at, again.coordinates((4, 17))) and at.size == 10 and np.all(np.diff(at) > 0)
    assert not np.array_equal(at, mech.coordinates((4, 18)))
    mask = exactly_k_masks(1)[0]
    # at a huge epsilon (flip chance 2**-32) the report is the true mask at the public coordinates
    exact = REGISTRY["sampling"](length=D, spec=SPEC, epsilon=40.0, sample_size=10)
    report = exact.encode(pack(mask), privacy_rng(0), public_seed=(4, 17))
    assert report.public_seed == (4, 17) and np.array_equal(unpack(report.bits, 10), mask[at])
    tally = exact.aggregate([report])
    assert np.array_equal(np.flatnonzero(tally.reported), at) and np.array_equal(tally.sums[at], mask[at])
    with pytest.raises(ConfigError, match="public_seed"):
        mech.encode(pack(mask), privacy_rng(0))


# --- central ---------------------------------------------------------------------------------

def test_central_adds_noise_of_the_stated_std():
    d = 20000
    spec = ReportSpec(threat_model="central", hamming_bound=4)
    mech = REGISTRY["central"](length=d, spec=spec, noise_multiplier=1.5)
    rng = privacy_rng(8)
    masks = np.random.default_rng(0).random((5, d)) < 0.5
    reports = [mech.encode(pack(m), rng) for m in masks]
    assert np.array_equal(unpack(reports[0].bits, d), masks[0])  # the report itself is exact
    noise = mech.aggregate(reports, rng).sums - masks.sum(axis=0)
    # 20000 draws: the sample std has relative sd 0.5%; 3% is 6 of them
    assert noise.std() == pytest.approx(1.5 * 2.0, rel=0.03)
    assert abs(noise.mean()) < 5 * 3.0 / math.sqrt(d)
    with pytest.raises(ConfigError, match="rng"):
        mech.aggregate(reports)
    with pytest.raises(ConfigError, match="trusted aggregator"):
        REGISTRY["central"](length=d, spec=ReportSpec(hamming_bound=4), noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="not both"):
        REGISTRY["central"](length=d, spec=spec, noise_multiplier=1.0, epsilon=1.0, delta=1e-5)


# --- reports on the wire ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MECHANISMS))
def test_report_round_trip(name):
    mech = build(name)
    report = mech.encode(pack(exactly_k_masks(1)[0]), privacy_rng(0), public_seed=(2, 5))
    wire = report.to_arrays()
    assert all(isinstance(v, (np.ndarray, str, int, float)) for v in wire.values())
    back = MaskReport.from_arrays(wire)
    assert back.mechanism == name and back.length == D and dict(back.settings) == mech.settings
    for field in ("bits", "indices"):
        mine, theirs = getattr(report, field), getattr(back, field)
        assert (mine is None and theirs is None) or np.array_equal(mine, theirs)
    assert back.public_seed == report.public_seed
    assert mech.aggregate([back, wire], privacy_rng(1)).n == 2  # a wire dict is read back too


def test_bad_reports_are_rejected_with_the_problem_named():
    mech = build("randomized-response")
    good = mech.encode(pack(np.zeros(D, bool)), privacy_rng(0))
    wire = good.to_arrays()
    def rr_report(length=D, spec=SPEC, epsilon=1.0):
        mech = REGISTRY["randomized-response"](length=length, spec=spec, epsilon=epsilon)
        return mech.encode(pack(np.zeros(length, bool)), privacy_rng(0))
    cases = {
        "covers 38 weights": rr_report(length=D + 8),
        "'sue' report": build("sue").encode(pack(np.zeros(D, bool)), privacy_rng(0)),
        "epsilon: report 2.0 vs server 1.0": rr_report(epsilon=2.0),
        "hamming_bound": rr_report(spec=ReportSpec(hamming_bound=30)),
        "pack into 4 bytes": MaskReport.from_arrays(wire | {"bits": np.zeros(5, np.uint8)}),
        "padding": MaskReport.from_arrays(wire | {"bits": np.full(4, 255, np.uint8)}),
        "carries packed bits only": MaskReport.from_arrays(wire | {"indices": np.arange(3)}),
    }
    for message, report in cases.items():
        with pytest.raises(ConfigError, match=message):
            mech.aggregate([good, report])
    for message, data in {"uint8": wire | {"bits": good.bits.astype(np.int16)},
                          "1-D": wire | {"bits": good.bits.reshape(2, 2)},
                          "numpy array": wire | {"bits": good.bits.tolist()},
                          "unknown entry": wire | {"extra": 1},
                          "lacks length": {k: v for k, v in wire.items() if k != "length"}}.items():
        with pytest.raises(ConfigError, match=message):
            MaskReport.from_arrays(data)
    subset = build("subset")
    sub_wire = subset.encode(pack(exactly_k_masks(1)[0]), privacy_rng(0)).to_arrays()
    for indices in (np.array([3, 1] + list(range(5, 5 + subset.subset_size - 2))), np.full(subset.subset_size, D),
                    np.arange(subset.subset_size + 1)):
        with pytest.raises(ConfigError, match="indices"):
            subset.aggregate([sub_wire | {"indices": indices.astype(np.int64)}])


def test_bad_masks_and_settings_are_rejected():
    mech = build("randomized-response")
    for bad, message in [(np.zeros(D, bool), "uint8"), (pack(np.zeros(D + 8, bool)), "bytes"),
                         (np.zeros((2, 2), np.uint8), "1-D")]:
        with pytest.raises(ConfigError, match=message):
            mech.encode(bad, privacy_rng(0))
    with pytest.raises(ConfigError, match="valid mechanisms: central, clipped-bernoulli, exact, oue, randomized-resp"):
        build_from_settings(MechanismSettings(mechanism="laplace"), length=D, kept=K)
    for eps in (0, -1.0, float("nan"), float("inf"), "x"):
        with pytest.raises(ConfigError, match="epsilon"):
            REGISTRY["randomized-response"](length=D, spec=SPEC, epsilon=eps)
    for delta in (0.0, 1.0, float("nan"), -0.1):
        with pytest.raises(ConfigError, match="delta"):
            build_from_settings(MechanismSettings(mechanism="central", delta=delta), length=D, kept=K)
    with pytest.raises(ConfigError, match="needs kept"):
        build_from_settings(MechanismSettings(mechanism="subset"), length=D, hamming_bound=12)
    with pytest.raises(ConfigError, match="needs hamming_bound, or kept"):
        build_from_settings(MechanismSettings(), length=D)
    with pytest.raises(ConfigError, match="sample_size"):
        REGISTRY["sampling"](length=D, spec=SPEC, epsilon=1.0, sample_size=D + 1)
