"""Speed of the mask-report mechanisms on 10-million-bit masks, on one core.

Targets (fedprune issue 3): randomized-response encode in at most twice the time that drawing
its random numbers takes (one uniform uint32 per bit, timed side by side), and aggregating 100
reports of 10 million bits in under 2 s without unpacking them to one byte per bit at once.
Also times the other mechanisms and prints the predicted standard error of each at the same
per-report epsilon. Figures are the best of ``--repeats`` runs.

    python benchmarks/bench_mechanisms.py [--bits 10000000] [--reports 100] [--json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core, before numpy loads

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from fedprune.privacy.mechanisms import REGISTRY  # noqa: E402
from fedprune.privacy.mechanisms.packed import SCALE  # noqa: E402
from fedprune.privacy.rng import privacy_rng  # noqa: E402
from fedprune.privacy.spec import ReportSpec  # noqa: E402
from fedprune.pruning.bits import pack  # noqa: E402


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def speed(bits: int, reports: int, repeats: int) -> dict:
    rng = privacy_rng(0)
    mask = np.zeros(bits, dtype=bool)
    mask[rng.choice(bits, size=bits // 10, replace=False)] = True
    packed = pack(mask)
    kept = int(mask.sum())
    spec = ReportSpec.for_exactly_k(kept, bits)
    rr = REGISTRY["randomized-response"](length=bits, spec=spec, epsilon=1.0)
    out: dict = {"bits": bits, "reports": reports}
    out["draw_uniforms_s"] = best_of(repeats, lambda: rng.integers(0, SCALE, size=bits, dtype=np.uint32))
    out["rr_encode_s"] = best_of(repeats, lambda: rr.encode(packed, rng))
    out["rr_encode_over_draw"] = out["rr_encode_s"] / out["draw_uniforms_s"]
    oue = REGISTRY["oue"](length=bits, spec=spec, epsilon=1.0)
    out["oue_encode_s"] = best_of(repeats, lambda: oue.encode(packed, rng))

    noisy = [rr.encode(packed, rng) for _ in range(reports)]
    out["rr_aggregate_s"] = best_of(max(1, repeats // 2), lambda: rr.aggregate(noisy))
    tally = rr.aggregate(noisy)
    out["rr_estimate_s"] = best_of(repeats, lambda: rr.estimate(tally))
    central_spec = ReportSpec(threat_model="central", hamming_bound=spec.hamming_bound)
    central = REGISTRY["central"](length=bits, spec=central_spec, noise_multiplier=1.0)
    exact = [central.encode(packed, rng)] * reports
    out["central_aggregate_s"] = best_of(max(1, repeats // 2), lambda: central.aggregate(exact, rng))

    start = time.perf_counter()
    subset = REGISTRY["subset"](length=bits, spec=spec, epsilon=1.0, kept=kept)
    out["subset_setup_s"] = time.perf_counter() - start
    out["subset_size"] = subset.subset_size
    out["subset_encode_s"] = best_of(repeats, lambda: subset.encode(packed, rng))
    sampling = REGISTRY["sampling"](length=bits, spec=spec, epsilon=1.0, sample_size=bits // 100)
    out["sampling_encode_s"] = best_of(repeats, lambda: sampling.encode(packed, rng, public_seed=(1, 2)))
    return out


def accuracy(length: int, kept: int, clients: int, report_epsilon: float) -> list[dict]:
    """Predicted standard error of each mechanism at keep-frequency k/d, all at one per-report epsilon."""
    spec = ReportSpec.for_exactly_k(kept, length)
    delta_bits = spec.hamming_bound
    f = kept / length
    per_bit = report_epsilon / delta_bits
    oue_eps = math.log(2 * math.exp(per_bit) - 1)  # ln((e^eps + 1) / 2) = per_bit
    sample = max(1, delta_bits // 10)
    built = {
        "randomized-response": REGISTRY["randomized-response"](length=length, spec=spec, epsilon=per_bit),
        "sue": REGISTRY["sue"](length=length, spec=spec, epsilon=2 * per_bit),
        "oue": REGISTRY["oue"](length=length, spec=spec, epsilon=oue_eps),
        "subset": REGISTRY["subset"](length=length, spec=spec, epsilon=report_epsilon, kept=kept),
        "sampling (s=Delta/10)": REGISTRY["sampling"](length=length, spec=spec, sample_size=sample,
                                                epsilon=report_epsilon / sample),
    }
    rows = []
    for label, mech in built.items():
        rows.append({"mechanism": label, "epsilon_per_report": mech.epsilon_per_report,
                     "standard_error": float(np.sqrt(mech.variance(clients, f)))})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=10_000_000)
    parser.add_argument("--reports", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    result = {"machine": f"{platform.processor() or platform.machine()}, numpy {np.__version__}",
              "speed": speed(args.bits, args.reports, args.repeats),
              "accuracy": {"length": 10_000, "kept": 1_000, "clients": 100, "epsilon_per_report": 8.0,
                           "rows": accuracy(10_000, 1_000, 100, 8.0)}}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    s = result["speed"]
    print(f"mask of {s['bits']:,} bits, one core ({result['machine']})")
    print(f"  draw {s['bits']:,} uniform uint32    {s['draw_uniforms_s'] * 1e3:8.1f} ms")
    print(f"  randomized-response encode        {s['rr_encode_s'] * 1e3:8.1f} ms   "
          f"= {s['rr_encode_over_draw']:.2f} x the draw (target <= 2)")
    print(f"  oue encode                        {s['oue_encode_s'] * 1e3:8.1f} ms")
    print(f"  aggregate {s['reports']} RR reports           {s['rr_aggregate_s'] * 1e3:8.1f} ms   (target < 2000)")
    print(f"  estimate from the tally           {s['rr_estimate_s'] * 1e3:8.1f} ms")
    print(f"  central aggregate + noise         {s['central_aggregate_s'] * 1e3:8.1f} ms")
    label = f"subset (l={s['subset_size']}) encode"
    print(f"  {label:34s}{s['subset_encode_s'] * 1e3:8.1f} ms   "
          f"(choosing l: {s['subset_setup_s'] * 1e3:.1f} ms)")
    print(f"  sampling (s = d/100) encode       {s['sampling_encode_s'] * 1e3:8.1f} ms")
    a = result["accuracy"]
    print(f"\npredicted standard error of a keep-frequency (d={a['length']}, k={a['kept']}, n={a['clients']}, "
          f"per-report eps={a['epsilon_per_report']}; the signal is at most 1)")
    for row in a["rows"]:
        print(f"  {row['mechanism']:24s} {row['standard_error']:10.3f}")


if __name__ == "__main__":
    main()
