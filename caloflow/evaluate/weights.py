"""Per-shower weights of a generated sample (``caloflow evaluate --weights NAME=PATH``), e.g. DCTR weights.

A weight file holds one non-negative, finite weight per shower of the sample, in the sample's row
order: an HDF5 file with a 1-D dataset ``weight``, or a ``.npy`` file with a 1-D array. The weights
are read and checked before any work starts; every problem is one line that names the option, the
file and what is wrong (:class:`~caloflow.errors.CaloflowError`).

With weights, the evaluation compares the *weighted* sample with the reference: the classifier
test (:mod:`caloflow.evaluate.classification`), the feature histograms and separation powers and
the feature means are weighted. The quality of a weighting is summarised by the effective sample
size ESS = (sum w)^2 / sum w^2 (N for equal weights, smaller the more the weights vary).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caloflow.errors import CaloflowError

#: the dataset of an HDF5 weight file
WEIGHT_KEY = "weight"


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 of non-negative weights (0 if all are 0)."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    sum_sq = float(np.sum(w * w))
    return float(np.sum(w) ** 2 / sum_sq) if sum_sq > 0 else 0.0


def weight_summary(weights: np.ndarray, clip: float | None = None) -> dict:
    """The one summary of a set of per-event weights, wherever weights are reported (``metrics.json``
    of a weighted evaluation, the LaSeR runs' classifier weights): count, sum, mean, min, median, max,
    the number of zero weights, Kish's effective sample size ``ess`` = (sum w)^2 / sum w^2, its
    fraction of the count ``ess_fraction`` (1 for equal weights), and the ``clip`` applied, if any."""
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    ess = effective_sample_size(w)
    summary = {
        "n": int(w.size),
        "sum": float(w.sum()),
        "mean": float(w.mean()),
        "min": float(w.min()),
        "median": float(np.median(w)),
        "max": float(w.max()),
        "n_zero": int(np.sum(w == 0)),
        "ess": ess,
        "ess_fraction": ess / w.size if w.size else 0.0,
    }
    if clip is not None:
        summary["clip"] = clip
    return summary


def parse_weight_options(values: list[str] | None, sample_names) -> dict[str, Path]:
    """``['NAME=PATH', ...]`` of ``--weights`` -> ``{NAME: PATH}``; NAME must be one of ``sample_names``."""
    out: dict[str, Path] = {}
    names = list(sample_names)
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise CaloflowError(f"--weights: '{value}' is not NAME=PATH")
        if name not in names:
            raise CaloflowError(
                f"--weights {value}: unknown sample '{name}' (the --samples names are: "
                f"{', '.join(names)})"
            )
        if name in out:
            raise CaloflowError(f"--weights: sample '{name}' given twice")
        out[name] = Path(path)
    return out


def _read_array(path: Path, shown: str) -> np.ndarray:
    """The raw weight array of a ``.npy`` file or of the ``weight`` dataset of an HDF5 file."""
    if not path.exists():
        raise CaloflowError(f"{shown}: no such file")
    if path.is_dir():
        raise CaloflowError(f"{shown}: is a directory, expected a file")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CaloflowError(f"{shown}: not a readable .npy array ({reason})") from None
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError:
        raise CaloflowError(
            f"{shown}: not an HDF5 file (expected an HDF5 file with a 1-D dataset "
            f"'{WEIGHT_KEY}', or a .npy file)"
        ) from None
    with f:
        if WEIGHT_KEY not in f:
            found = ", ".join(sorted(f.keys())) or "no keys"
            raise CaloflowError(f"{shown}: no dataset '{WEIGHT_KEY}' (file has: {found})")
        if not isinstance(f[WEIGHT_KEY], h5py.Dataset):
            raise CaloflowError(f"{shown}: '{WEIGHT_KEY}' is a group, expected a 1-D dataset")
        dataset = f[WEIGHT_KEY]
        if dataset.dtype.kind not in "fiu":
            raise CaloflowError(
                f"{shown}: dataset '{WEIGHT_KEY}' has dtype {dataset.dtype}, expected numbers"
            )
        return dataset[()]


def check_weights(
    w: np.ndarray, shown: str, n_showers: int, sample: str, max_showers: int | None = None
) -> np.ndarray:
    """``w`` as float64, cut to the first ``max_showers``; one-line errors for anything unusable.

    ``w`` must be 1-D, one weight per shower of the sample file (``n_showers``), real, finite and
    >= 0, and the weights used (after the cut) must not all be zero.
    """
    w = np.asarray(w)
    if w.dtype.kind not in "fiu":
        raise CaloflowError(f"{shown}: weights have dtype {w.dtype}, expected numbers")
    if w.ndim != 1:
        raise CaloflowError(f"{shown}: weights must be a 1-D array, got shape {tuple(w.shape)}")
    if len(w) != n_showers:
        raise CaloflowError(
            f"{shown}: has {len(w)} weights, but {sample} has {n_showers} showers "
            "(one weight per shower, in the file's order)"
        )
    w = w.astype(np.float64)
    bad = ~np.isfinite(w)
    if bad.any():
        first = int(np.argmax(bad))
        raise CaloflowError(
            f"{shown}: {int(bad.sum())} non-finite weight(s), first at row {first} ({w[first]})"
        )
    negative = w < 0
    if negative.any():
        first = int(np.argmax(negative))
        raise CaloflowError(
            f"{shown}: {int(negative.sum())} negative weight(s), first at row {first} ({w[first]:g})"
        )
    if max_showers is not None:
        w = w[:max_showers]
    if not np.any(w > 0):
        used = (
            f" of the first {len(w)} showers (--max-showers {max_showers})"
            if len(w) < n_showers
            else ""
        )
        raise CaloflowError(f"{shown}: all weights{used} are zero")
    return w


def load_weights(
    path: str | Path,
    n_showers: int,
    option: str = "--weights",
    sample: str = "the sample",
    max_showers: int | None = None,
) -> np.ndarray:
    """Read and check the weights of one sample (:func:`check_weights`); errors start with ``option``."""
    path = Path(path)
    shown = f"{option} {path}" if not option.endswith("=") else f"{option}{path}"
    return check_weights(_read_array(path, shown), shown, n_showers, sample, max_showers)


__all__ = [
    "WEIGHT_KEY",
    "check_weights",
    "effective_sample_size",
    "load_weights",
    "parse_weight_options",
    "weight_summary",
]
