"""MNIST-1D generated in bulk, bit for bit what the mnist1d package's ``make_dataset`` returns.

The package transforms one sample at a time through scipy (about 220 us a sample here: 1.2
million samples take four and a half minutes). The random draws must stay sequential to be the
same numbers, but they are only six calls a sample; everything else (pad and dilate, scale,
translate, filtered and iid noise, shear, subsample) is deterministic given the draws and runs
here on whole chunks of samples with the same floating-point operations in the same order.
``tests/test_data.py`` checks the result against the installed package, array for array.
"""

from __future__ import annotations

import numpy as np

CHUNK = 32_768  # samples drawn, then transformed, at a time: bounds the float64 temporaries


def make_dataset(args: dict) -> dict:
    """The arrays ``mnist1d.data.make_dataset`` returns for ``args`` (``x``, ``y``, ``x_test``, ``y_test``).

    Leaves numpy's and Python's global generators alone: a private ``RandomState`` seeded as the
    package seeds the global one draws the same stream.
    """
    from mnist1d.data import get_templates

    templates = get_templates()
    labels = np.asarray(templates["y"])
    per_class = args["num_samples"] // len(labels)
    n = per_class * len(labels)
    rng = np.random.RandomState(args["seed"])
    xs = np.empty((n, args["final_seq_length"]))
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        classes = np.arange(start, stop) // per_class
        xs[start:stop] = _transform(templates["x"][classes], _draws(rng, stop - start, args), args)
    ys = labels[np.arange(n) // per_class]
    shuffle = rng.permutation(n)
    xs, ys = xs[shuffle], ys[shuffle]
    if args["shuffle_seq"]:
        xs = xs[..., rng.permutation(args["final_seq_length"])]
    xs = (xs - xs.mean()) / xs.std()
    split = int(n * args["train_split"])
    return {"x": xs[:split], "x_test": xs[split:], "y": ys[:split], "y_test": ys[split:]}


def _draws(rng: np.random.RandomState, count: int, args: dict) -> dict:
    """The random numbers ``mnist1d.transform.transform`` takes, in its order, for ``count`` samples."""
    length = args["template_len"] + args["padding"][1]
    low, high = args["padding"]
    pad, scale, shear, shift = np.empty(count), np.empty(count), np.empty(count), np.empty(count, np.int64)
    corr, iid = np.empty((count, length)), np.empty((count, length))
    for i in range(count):
        pad[i] = rng.random_sample()  # pad
        scale[i] = rng.random_sample()  # scale
        shift[i] = rng.choice(args["max_translation"])  # translate
        corr[i] = rng.standard_normal(length)  # correlated noise
        iid[i] = rng.standard_normal(length)  # iid noise
        shear[i] = rng.random_sample()  # shear
    pad = low + (pad * (high - low + 1)).astype(np.int64)  # low + int(rand * (high - low + 1))
    return {"pad": pad, "scale": scale, "shift": shift, "corr": corr, "iid": iid, "shear": shear}


def _transform(templates: np.ndarray, draws: dict, args: dict, eps: float = 1e-8) -> np.ndarray:
    from scipy.ndimage import gaussian_filter1d

    length = args["template_len"] + args["padding"][1]
    x = np.empty((len(templates), length))
    for pad in np.unique(draws["pad"]):  # pad and dilate: one interpolation grid per padding
        rows = draws["pad"] == pad
        padded = np.concatenate([templates[rows] + eps, np.zeros((rows.sum(), pad))], axis=1)
        x[rows] = _interp_rows(padded, length)
    x *= (1 + args["scale_coeff"] * (draws["scale"] - 0.5))[:, None]
    shift = np.where(draws["shift"] < length, draws["shift"], 0)  # x[-k:] then x[:-k]: whole x when k >= length
    columns = (np.arange(length)[None, :] - shift[:, None]) % length
    x = np.take_along_axis(x, columns, axis=1)
    mask = x != 0
    x = mask * x + (1 - mask) * gaussian_filter1d(args["corr_noise_scale"] * draws["corr"], 2, axis=1)
    x = x + args["iid_noise_scale"] * draws["iid"]
    coeff = args["shear_scale"] * (draws["shear"] - 0.5)
    x = x - coeff[:, None] * np.linspace(-0.5, 0.5, length)[None, :]
    return _interp_rows(x, args["final_seq_length"])


def _interp_rows(fp: np.ndarray, size: int) -> np.ndarray:
    """``np.interp(linspace(0, 1, size), linspace(0, 1, n), row)`` for every row, with its arithmetic.

    numpy's C loop returns ``fp[j]`` where the point is on a knot (or the last one) and otherwise
    ``slope * (x - xp[j]) + fp[j]`` with ``slope = (fp[j+1] - fp[j]) / (xp[j+1] - xp[j])``.
    """
    n = fp.shape[1]
    xp, x = np.linspace(0, 1, n), np.linspace(0, 1, size)
    j = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, n - 1)
    on_knot = (j == n - 1) | (xp[j] == x)
    nxt = np.minimum(j + 1, n - 1)
    slope = (fp[:, nxt] - fp[:, j]) / np.where(on_knot, 1.0, xp[nxt] - xp[j])
    return np.where(on_knot, fp[:, j], slope * (x - xp[j]) + fp[:, j])
