"""Embedded GFlash-style shower simulator for the ATLAS-like barrel of CaloChallenge dataset 1.

This is a *stand-in* for the ATLAS GEANT4 showers of dataset 1 (photons and charged pions at
|eta| ~ 0.2, 256 MeV to 4.2 TeV), **not GEANT4**, and makes no claim to reproduce it: it gives
caloflow's dataset-1 path (files, training, evaluation) showers with the right format, units and
physically sensible correlations, fluctuations and leakage without the official files. The official
files are read by :func:`caloflow.data.io.read_showers` exactly like the files written here
(docs/physics.md section 9 has the parameters and the measured look).

The detector is a sequence of depth segments, each with a range in radiation lengths X0 (what EM
showers see) and in nuclear interaction lengths lambda_I (what hadronic showers see); the active
ones are the ATLAS samplings: presampler (id 0), EM barrel strips, middle and back (1, 2, 3) and
the three tile barrel samplings (12, 13, 14); dead material (cryostat, solenoid, cables) lies in
front of the presampler, between presampler and strips and between the EM barrel and the tile
(:data:`SEGMENT_IDS`, :data:`X0_EDGES`, :data:`LAMBDA_EDGES`; plausible values for |eta| ~ 0.2,
chosen, not measured). Any polar geometry whose layer ids are among these samplings can be
simulated (``ds1-photons``, ``ds1-pions`` or a binning XML).

Physics (Grindhammer-Peters hep-ex/0001020; Grindhammer-Rudowicz-Peters for hadrons):

* Cell energies are at the EM scale: an EM shower's energy in a sampling is the energy deposited
  there (absorber and active), so photons give E_tot / E_inc just below 1 (dead material and
  leakage lose the rest), pions less (invisible energy of the hadronic part).
* Longitudinal: a Gamma profile per shower with correlated fluctuations of (ln T, ln alpha)
  (GFlash, T scaled by :data:`DEPTH_SCALE`); a sampling's share is the exact integral of the
  profile over its depth range (regularized incomplete gamma), so no spot count limits it.
  Each sampling's energy then fluctuates (lognormal, relative variance a^2 / E [GeV], a the
  sampling's stochastic term). The total is capped smoothly below the incident energy
  (:func:`soft_cap`): sum of voxels < E_inc for every shower.
* Photons convert after an exponential depth (mean 9/7 X0) and shower from there.
* Charged pions: a minimum-ionising track (:data:`MIP_MEV_PER_LAMBDA`, Moyal straggling) up to an
  exponential interaction depth (mean :data:`PION_LAMBDA`) or until the pion has lost its energy;
  then a hadronic shower: a fluctuating EM fraction (logit-normal around 1 - E^-0.17, pi0 photons
  showering as EM showers) and a hadronic part with the GRP Gamma profile in lambda_I, a wide
  lateral profile growing with depth and a fluctuating invisible fraction (:data:`INVISIBLE_MEAN`).
* Lateral: per sampling and component a fixed number of weighted energy spots
  (:data:`SAMPLINGS`): EM spots follow the GFlash core + tail profile in Moliere radii
  (2 r R^2 / (r^2 + R^2)^2 each), hadronic ones a profile of scale R0 + slope * depth; the radii are
  stratified and importance-sampled from a defensive mixture with a wider profile (weights f / q),
  so the faint outer voxels are reached at their physical share of the energy. Per shower and
  sampling the widths fluctuate, the spot weights fluctuate (less at higher energy) and a fraction
  of the spots (larger at low energy) gather in two blobs at random angles: showers are not
  rotationally symmetric shot by shot (the angular fluctuations).
* Spots are binned in (r, alpha) of each layer (r = hypot(eta, phi), alpha = atan2(phi, eta),
  alpha bins over linspace(-pi, pi, n_alpha + 1)); spots beyond the last r edge are lost (lateral
  leakage), as is the energy of samplings the geometry does not read out and of dead material.

Cost and memory per shower do not grow with the energy: the number of spots per shower is fixed
(:func:`spots_per_shower`), so a 4 TeV shower costs what a 256 MeV one does. Every random number
is drawn in arrays of fixed shape (no rejection loop, no draw whose count depends on the
energy), chunk by chunk, from a generator seeded with ``(seed, chunk)``; so shower ``i`` depends
only on ``seed``, ``i`` and its own incident energy, and the first ``n`` showers of a run do not
depend on how many were requested.

Units: voxels in MeV, incident energy in GeV (files: MeV), lengths in mm, depths in X0 or lambda_I.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import gammainc

from caloflow.data.io import Showers, ShowerWriter
from caloflow.errors import CaloflowError
from caloflow.geometry import DS1_PHOTONS, DS1_PIONS, GEV, POLAR, Geometry

#: Identifies the physics of this module in the files it writes; bump when the numbers change.
SIMULATOR_VERSION = "caloflow-barrel-1.0"
PARTICLES: tuple[str, ...] = ("gamma", "piplus")
#: The particle of each built-in dataset-1 geometry.
DATASET_PARTICLES: dict[str, str] = {DS1_PHOTONS.name: "gamma", DS1_PIONS.name: "piplus"}
#: Showers per chunk; fixed, because each chunk has its own random stream.
CHUNK_SIZE = 256
#: Highest incident energy, GeV (2^22 MeV, the top of the dataset-1 energies).
MAX_ENERGY_GEV = 4194.304
#: The lowest incident energy accepted, GeV (below it the profile fits mean nothing).
MIN_ENERGY_GEV = 0.01

# --- the official energy mix of dataset 1 -----------------------------------------------------
#: Incident energies of the dataset-1 files: 2^8 ... 2^22 MeV.
CHALLENGE_EXPONENTS: tuple[int, ...] = tuple(range(8, 23))
#: Showers per energy in the official files (121,000 photons, 120,800 pions).
CHALLENGE_COUNTS: dict[str, tuple[int, ...]] = {
    "gamma": (10_000,) * 11 + (5_000, 3_000, 2_000, 1_000),
    "piplus": (10_000,) * 10 + (9_800, 5_000, 3_000, 2_000, 1_000),
}

# --- the detector: depth segments along the particle (|eta| ~ 0.2) ---------------------------
#: ATLAS sampling id of each depth segment; None is dead material (energy lost): cryostat and
#: solenoid, presampler, cables, strips, middle, back, cryostat and gap, tile A, BC, D.
SEGMENT_IDS: tuple[int | None, ...] = (None, 0, None, 1, 2, 3, None, 12, 13, 14)
#: Segment boundaries in radiation lengths X0 from the calorimeter surface.
X0_EDGES: tuple[float, ...] = (0.0, 1.5, 1.8, 2.4, 6.7, 23.0, 25.0, 29.0, 43.0, 81.0, 98.0)
#: The same boundaries in nuclear interaction lengths lambda_I.
LAMBDA_EDGES: tuple[float, ...] = (0.0, 0.30, 0.33, 0.38, 0.60, 1.42, 1.52, 1.87, 3.37, 7.47, 9.32)


@dataclass(frozen=True)
class Sampling:
    """An active sampling: its name, stochastic term a (relative energy fluctuation a / sqrt(E
    [GeV])), Moliere radius (mm), and spots per shower: of a photon, and of a pion's EM (pi0) and
    hadronic parts."""

    name: str
    stochastic: float
    moliere_mm: float
    photon_spots: int
    pi0_spots: int
    had_spots: int


SAMPLINGS: dict[int, Sampling] = {
    0: Sampling("presampler", 0.25, 40.0, 24, 16, 8),
    1: Sampling("EM barrel strips", 0.10, 40.0, 160, 64, 48),
    2: Sampling("EM barrel middle", 0.10, 40.0, 240, 96, 64),
    3: Sampling("EM barrel back", 0.10, 40.0, 24, 16, 16),
    12: Sampling("tile A", 0.20, 30.0, 16, 32, 128),
    13: Sampling("tile BC", 0.20, 30.0, 8, 16, 128),
    14: Sampling("tile D", 0.20, 30.0, 4, 8, 16),
}
#: Track spots per sampling of a pion.
TRACK_SPOTS = 1

# --- EM showers ----------------------------------------------------------------------------
#: Effective atomic number and critical energy of the Pb/LAr accordion.
Z_EFF = 69.0
EC_MEV = 10.0
#: The mean shower-maximum depth T is scaled by this factor (tuning).
DEPTH_SCALE = 1.0
#: Lower bound of the Gamma shape alpha of EM profiles.
ALPHA_MIN = 1.8
#: Mean conversion depth of a photon, X0.
CONVERSION_X0 = 9.0 / 7.0
#: Depth over which the pair of a converted photon ionises as two minimum-ionising particles, X0.
PAIR_X0 = 1.0

# --- pions ---------------------------------------------------------------------------------
#: Mean interaction depth of a charged pion, lambda_I.
PION_LAMBDA = 1.2
#: Energy a minimum-ionising pion loses per lambda_I (everywhere) and shows in active samplings.
MIP_MEV_PER_LAMBDA = 200.0
#: Moyal straggling of a sampling's track energy: most probable and width, relative to the mean.
MIP_MPV = 0.80
MIP_WIDTH = 0.15
#: Mean EM fraction 1 - (E / 1 GeV)^-EM_FRACTION_POWER and the spread of its logit.
EM_FRACTION_POWER = 0.17
EM_FRACTION_SPREAD = 0.8
#: Mean invisible fraction of the hadronic (non-EM) part and the spread of its logit.
INVISIBLE_MEAN = 0.30
INVISIBLE_SPREAD = 0.4
#: Per-shower lognormal spread of the hadronic profile's scale.
HAD_DEPTH_SPREAD = 0.25
#: Lateral scale of the hadronic part: R = HAD_R0_MM + HAD_R_SLOPE_MM * depth [lambda_I], with a
#: tail HAD_TAIL times wider carrying 1 - HAD_CORE of the energy.
HAD_R0_MM = 30.0
HAD_R_SLOPE_MM = 20.0
HAD_TAIL = 2.0
HAD_CORE = 0.8
#: Lateral spread of the pi0 photons around the interaction point, mm.
PI0_SPREAD_MM = 15.0
#: Lateral scale of the track's deposits (delta rays, multiple scattering), mm.
TRACK_R_MM = 1.0

# --- lateral fluctuations ----------------------------------------------------------------
#: Share of the spots drawn from the wide profile (WIDE_FACTOR times the tail) of the mixture.
WIDE_SHARE = 0.25
WIDE_FACTOR = 4.0
#: Per shower and sampling, the widths fluctuate (lognormal) with
#: sigma^2 = WIDTH_SPREAD_MIN^2 + WIDTH_SPREAD_GEV^2 / E [GeV], sigma at most 0.5.
WIDTH_SPREAD_MIN = 0.05
WIDTH_SPREAD_GEV = 0.15
#: Spot weights fluctuate (lognormal) with relative variance WEIGHT_SPREAD * n_spots / E [GeV].
WEIGHT_SPREAD = 0.02
#: Share of spots in the blobs: CLUSTER_SCALE * E [GeV]^-0.25, at most CLUSTER_MAX (EM, hadronic).
CLUSTER_SCALE = (0.25, 0.5)
CLUSTER_MAX = 0.6
#: Blobs per shower and sampling, and their size relative to the core radius (plus 1 mm).
CLUSTERS = 2
CLUSTER_SIZE = 0.5
#: The smooth cap of the measured total: E_tot / E_inc above CAP_KNEE is compressed below CAP_TOP.
CAP_KNEE = 0.9
CAP_TOP = 1.0 - 1e-4

#: Low-discrepancy steps (golden ratio, sqrt 2, plastic number) of the spot lattices.
_G1 = 0.6180339887498949
_G2 = 0.4142135623730951
_G3 = 0.7548776662466927
_X0 = np.asarray(X0_EDGES)
_LAMBDA = np.asarray(LAMBDA_EDGES)


# ---------------------------------------------------------------------------------------------
# The geometry and its spots
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plan:
    """What the simulator needs of a geometry: per layer the segment, the r edges, the alpha bins
    and the flat offset."""

    geometry: Geometry
    segments: tuple[int, ...]
    r_edges: tuple[np.ndarray, ...]
    n_alpha: tuple[int, ...]
    offsets: tuple[int, ...]


def _plan(geometry: Geometry) -> _Plan:
    """The simulator's view of ``geometry``; CaloflowError for a layer it cannot simulate."""
    known = ", ".join(map(str, SAMPLINGS))
    for layer in geometry.layers:
        if layer.id not in SAMPLINGS:
            raise CaloflowError(
                f"geometry {geometry.name}: layer id {layer.id} is not a sampling of the barrel "
                f"simulator (it knows {known})"
            )
        if layer.kind != POLAR:
            raise CaloflowError(
                f"geometry {geometry.name}: layer {layer.id} is not binned in (r, alpha)"
            )
    ids = geometry.layer_ids
    if len(set(ids)) != len(ids):
        raise CaloflowError(f"geometry {geometry.name}: a layer id appears twice ({ids})")
    return _Plan(
        geometry,
        tuple(SEGMENT_IDS.index(i) for i in ids),
        tuple(np.asarray(layer.col_edges) for layer in geometry.layers),
        tuple(layer.n_alpha for layer in geometry.layers),
        tuple(s.start for s in geometry.layer_slices),
    )


def spots_per_shower(geometry: Geometry, particle: str) -> int:
    """The fixed number of energy spots simulated per shower (whatever its energy)."""
    samplings = [SAMPLINGS[i] for i in _plan(geometry).geometry.layer_ids]
    if particle == "gamma":
        return sum(s.photon_spots for s in samplings)
    return sum(s.pi0_spots + s.had_spots + TRACK_SPOTS for s in samplings)


# ---------------------------------------------------------------------------------------------
# Small distributions from fixed-shape draws
# ---------------------------------------------------------------------------------------------
def _lognormal(z: np.ndarray, sigma) -> np.ndarray:
    """Mean-one lognormal exp(sigma z - sigma^2 / 2) of standard normal ``z``."""
    return np.exp(sigma * z - 0.5 * np.square(sigma))


def _logit_normal(mean, spread, z: np.ndarray) -> np.ndarray:
    """A fraction in (0, 1): sigmoid(logit(mean) + spread z)."""
    mean = np.clip(mean, 1e-3, 1.0 - 1e-3)
    return 1.0 / (1.0 + np.exp(-(np.log(mean / (1.0 - mean)) + spread * z)))


def _moyal(z: np.ndarray, mpv: float, width: float) -> np.ndarray:
    """Landau-like Moyal(mpv, width) = mpv - width ln(z^2) of standard normal ``z``."""
    return mpv - width * np.log(np.maximum(np.square(z), 1e-30))


def soft_cap(x: np.ndarray) -> np.ndarray:
    """x below CAP_KNEE unchanged; above it CAP_KNEE + (CAP_TOP - CAP_KNEE) tanh((x - CAP_KNEE) /
    (CAP_TOP - CAP_KNEE)): continuous, increasing, always below CAP_TOP < 1."""
    width = CAP_TOP - CAP_KNEE
    return np.where(x > CAP_KNEE, CAP_KNEE + width * np.tanh((x - CAP_KNEE) / width), x)


# ---------------------------------------------------------------------------------------------
# Longitudinal profiles
# ---------------------------------------------------------------------------------------------
def _gamma_profile(start, shape, rate, edges) -> tuple[np.ndarray, np.ndarray]:
    """Share of a Gamma(shape, rate) profile starting at depth ``start`` in each segment of
    ``edges`` (C, S), and its mean depth there measured from ``start`` (C, S).

    Share = P(shape, rate d_hi) - P(shape, rate d_lo) with P the regularized lower incomplete gamma
    function and d = max(edge - start, 0); mean = shape / rate * (share with shape + 1) / share.
    """
    d = np.maximum(edges[None, :] - start[:, None], 0.0)
    x = rate[:, None] * d
    share = np.diff(gammainc(shape[:, None], x), axis=1)
    share1 = np.diff(gammainc(shape[:, None] + 1.0, x), axis=1)
    middle = 0.5 * (d[:, 1:] + d[:, :-1])  # where the profile has nothing, the segment's middle
    mean = np.where(
        share > 1e-12, (shape / rate)[:, None] * share1 / np.maximum(share, 1e-300), middle
    )
    return np.maximum(share, 0.0), mean


def _em_parameters(rng: np.random.Generator, energy_mev: np.ndarray):
    """Per-shower (T [X0], alpha) of the GFlash EM profile with correlated fluctuations of
    (ln T, ln alpha) (homogeneous-medium fits with the sampling-calorimeter widths)."""
    n = len(energy_mev)
    z = rng.standard_normal((2, n))
    ln_y = np.log(np.maximum(energy_mev / EC_MEV, 1.0))
    ln_y_mean = np.maximum(ln_y, 1.5)
    mean_ln_t = np.log(np.maximum(ln_y_mean - 0.812, 0.5) * DEPTH_SCALE)
    mean_ln_a = np.log(np.maximum(0.81 + (0.458 + 2.26 / Z_EFF) * ln_y_mean, ALPHA_MIN))
    ln_y_sig = np.maximum(ln_y, 3.0)
    sig_t = 1.0 / (-2.5 + 1.25 * ln_y_sig)
    sig_a = 1.0 / (-0.82 + 0.79 * ln_y_sig)
    rho = 0.784 - 0.023 * ln_y_sig
    ln_t = mean_ln_t + sig_t * z[0]
    ln_a = mean_ln_a + sig_a * (rho * z[0] + np.sqrt(1.0 - rho**2) * z[1])
    return np.exp(ln_t), np.maximum(np.exp(ln_a), ALPHA_MIN)


@dataclass
class _Component:
    """A part of a chunk's showers: its energy per segment (C, S), MeV, its mean depth per segment
    (X0 for EM, lambda_I for hadronic, from its start), its kind, and what the lateral profile
    needs (energy MeV and T for EM; the centre offset in mm)."""

    kind: str  # "em", "had" or "track"
    energy: np.ndarray
    depth: np.ndarray
    total_mev: np.ndarray
    T: np.ndarray | None
    centre: tuple[np.ndarray, np.ndarray] | None


def _em_component(rng, energy_mev, start_x0, profile_mev, centre=None) -> _Component:
    """An EM shower of ``energy_mev`` starting at ``start_x0``; its profile is that of a shower of
    ``profile_mev`` (the pi0 photons of a hadronic shower are several smaller showers).

    The e+e- pair ionises like two minimum-ionising particles (EC_MEV per X0 each) over its first
    PAIR_X0 (what the Gamma profile misses at the start: the presampler signal); the profile
    carries the rest."""
    T, alpha = _em_parameters(rng, profile_mev)
    share, depth = _gamma_profile(start_x0, alpha, (alpha - 1.0) / T, _X0)
    start = start_x0[:, None]
    path = np.minimum(start + PAIR_X0, _X0[1:]) - np.maximum(start, _X0[:-1])
    pair = 2.0 * EC_MEV * np.clip(path, 0.0, None)
    pair *= np.minimum(1.0, 0.5 * energy_mev / np.maximum(pair.sum(1), 1e-300))[:, None]
    energy = (energy_mev - pair.sum(1))[:, None] * share + pair
    return _Component("em", energy, depth, energy_mev, T, centre)


def _photons(rng, energy_mev: np.ndarray) -> list[_Component]:
    """Photons entering the calorimeter surface: converted after Exp(9/7 X0), then an EM shower."""
    start = CONVERSION_X0 * rng.standard_exponential(len(energy_mev))
    return [_em_component(rng, energy_mev, start, energy_mev)]


def _pions(rng, energy_mev: np.ndarray) -> list[_Component]:
    """Charged pions: a MIP track up to the interaction (or the end of their range), then a
    hadronic shower: an EM part (pi0 photons) and a hadronic part with invisible energy."""
    n = len(energy_mev)
    z_int = PION_LAMBDA * rng.standard_exponential(n)
    z = rng.standard_normal((5, n))
    z_stop = energy_mev / MIP_MEV_PER_LAMBDA
    interacts = z_int < np.minimum(z_stop, _LAMBDA[-1])
    track = _track(rng, np.minimum(z_int, z_stop))
    e_sh = np.where(interacts, energy_mev - MIP_MEV_PER_LAMBDA * z_int, 0.0)
    e_gev = np.maximum(e_sh / GEV, 1e-3)
    f_em = _logit_normal(
        1.0 - np.maximum(e_gev, 1.0) ** -EM_FRACTION_POWER, EM_FRACTION_SPREAD, z[0]
    )
    f_em = np.maximum(f_em, 0.02)
    invisible = _logit_normal(INVISIBLE_MEAN, INVISIBLE_SPREAD, z[1])
    spread = PI0_SPREAD_MM * z[2:4]
    start_x0 = np.interp(z_int, _LAMBDA, _X0) + CONVERSION_X0 * rng.standard_exponential(n)
    em = _em_component(
        rng, f_em * e_sh, start_x0, np.maximum(0.5 * f_em * e_sh, EC_MEV), (spread[0], spread[1])
    )
    shape, rate = _grp_parameters(e_gev)
    rate = rate * _lognormal(z[4], HAD_DEPTH_SPREAD)
    share, depth = _gamma_profile(np.minimum(z_int, _LAMBDA[-1]), shape, rate, _LAMBDA)
    e_had = (1.0 - f_em) * e_sh * (1.0 - invisible)
    had = _Component("had", e_had[:, None] * share, depth, e_had, None, None)
    return [track, em, had]


def _grp_parameters(e_gev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hadronic Gamma profile (shape, rate [1/lambda_I]) of Grindhammer-Rudowicz-Peters."""
    a = np.log((0.35 + 0.09 * np.log(e_gev)).clip(0.05) * e_gev)
    low = e_gev < 10.0
    shape = np.where(low, 1.17 + 0.21 * a, 0.38 + 0.23 * a)
    rate = np.where(low, 2.10 - 0.72 * a, 0.83 - 0.049 * a)
    return np.clip(shape, 0.5, None), np.clip(rate, 0.1, 3.0)


def _track(rng, length: np.ndarray) -> _Component:
    """The minimum-ionising track over depths [0, ``length``) lambda_I: MIP_MEV_PER_LAMBDA per
    lambda_I of path in every active sampling, Moyal-straggled sampling by sampling."""
    n = len(length)
    lo, hi = _LAMBDA[:-1], _LAMBDA[1:]
    path = np.clip(np.minimum(length[:, None], hi) - lo, 0.0, None)
    active = np.array([i is not None for i in SEGMENT_IDS], dtype=float)
    straggling = np.maximum(_moyal(rng.standard_normal((n, len(lo))), MIP_MPV, MIP_WIDTH), 0.0)
    energy = MIP_MEV_PER_LAMBDA * path * active * straggling
    depth = np.zeros_like(energy)
    return _Component("track", energy, depth, energy.sum(1), None, None)


# ---------------------------------------------------------------------------------------------
# Lateral spots
# ---------------------------------------------------------------------------------------------
def _cauchy(r: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Radial density 2 r R^2 / (r^2 + R^2)^2 (per mm of r)."""
    return 2.0 * r * R**2 / (r**2 + R**2) ** 2


def _radial(c: _Component, seg: int, energy_mev: np.ndarray):
    """(core radius, tail radius, core share) in mm of component ``c`` in segment ``seg``."""
    if c.kind == "em":
        ln_e = np.log(np.maximum(c.total_mev, EC_MEV) / GEV)
        tau = np.clip(c.depth[:, seg] / c.T, 0.0, 4.0)
        r_core = 0.0251 + 0.00319 * ln_e + (0.1162 - 0.000381 * Z_EFF) * tau
        d = tau - 0.645
        r_tail = (0.659 - 0.00309 * Z_EFF) * (
            np.exp(-2.59 * d) + np.exp((0.3585 + 0.0412 * ln_e) * d)
        )
        q = (0.401 + 0.00187 * Z_EFF - tau) / (1.313 - 0.0686 * ln_e)
        p = np.clip((2.632 - 0.00094 * Z_EFF) * np.exp(q - np.exp(q)), 0.0, 1.0)
        rm = SAMPLINGS[SEGMENT_IDS[seg]].moliere_mm
        return rm * np.maximum(r_core, 0.01), rm * np.maximum(r_tail, 0.05), p
    if c.kind == "had":
        r = HAD_R0_MM + HAD_R_SLOPE_MM * c.depth[:, seg]
        return r, HAD_TAIL * r, np.full_like(r, HAD_CORE)
    r = np.full_like(energy_mev, TRACK_R_MM)
    return r, 3.0 * r, np.ones_like(r)


def _mixture_radii(j, v, shift, r_core, r_tail, p) -> tuple[np.ndarray, np.ndarray]:
    """Radii (C, n) of spots ``j`` (stratum j + v of n) from the defensive mixture of the core, the
    tail and a profile WIDE_FACTOR times wider than the tail (share WIDE_SHARE; the lattice
    j * _G2 + shift picks the part), and their importance weights f / q (target over mixture)."""
    n = len(j)
    r_core, r_tail, p = r_core[:, None], r_tail[:, None], p[:, None]
    r_wide = WIDE_FACTOR * r_tail
    u = np.clip((j + v) / n, 1e-9, 1.0 - 1e-9)
    which = (j * _G2 + shift) % 1.0
    core = which < p * (1.0 - WIDE_SHARE)
    wide = which >= 1.0 - WIDE_SHARE
    r = np.where(core, r_core, np.where(wide, r_wide, r_tail)) * np.sqrt(u / (1.0 - u))
    f = p * _cauchy(r, r_core) + (1.0 - p) * _cauchy(r, r_tail)
    q = (1.0 - WIDE_SHARE) * f + WIDE_SHARE * _cauchy(r, r_wide)
    return r, np.where(q > 0.0, f / np.where(q > 0.0, q, 1.0), 1.0)


def _blobs(kind: str, e_gev, pick, centres, z, r_core, r_tail, x, y, w):
    """A share CLUSTER_SCALE * E^-0.25 (at most CLUSTER_MAX; none for a track) of the spots, those
    with ``pick`` below it, moves into CLUSTERS blobs of size CLUSTER_SIZE * r_core + 1 mm around
    points drawn from the tail profile at random angles (``centres``); they weigh 1."""
    share = np.minimum(CLUSTER_SCALE[kind == "had"] * e_gev**-0.25, CLUSTER_MAX)
    if kind == "track":
        share = np.zeros_like(e_gev)
    in_blob = pick < share[:, None]
    k = (pick / np.maximum(share, 1e-12)[:, None] * CLUSTERS).astype(np.int64)
    k = np.minimum(k, CLUSTERS - 1)
    u = np.clip(centres[:, 0], 1e-9, 1.0 - 1e-9)
    r = r_tail[:, None] * np.sqrt(u / (1.0 - u))
    a = 2.0 * np.pi * centres[:, 1]
    size = (CLUSTER_SIZE * r_core + 1.0)[:, None]
    bx = np.take_along_axis(r * np.cos(a), k, 1) + size * z[0]
    by = np.take_along_axis(r * np.sin(a), k, 1) + size * z[1]
    return np.where(in_blob, bx, x), np.where(in_blob, by, y), np.where(in_blob, 1.0, w)


def _spots(rng, c: _Component, seg: int, n: int):
    """``n`` spots per shower of component ``c`` in segment ``seg``: (x, y) in mm and weights in
    MeV (C, n), the weights summing to the component's energy there."""
    energy = c.energy[:, seg]
    C, j = len(energy), np.arange(n)
    v, pick = rng.random((2, C, n))
    shifts = rng.random((C, 2))
    centres = rng.random((C, 2, CLUSTERS))
    z = rng.standard_normal((3, C, n))
    z_width = rng.standard_normal(C)
    e_gev = np.maximum(energy / GEV, 1e-6)
    # this shower's widths in this sampling fluctuate, less at higher energy
    spread = np.minimum(np.sqrt(WIDTH_SPREAD_MIN**2 + WIDTH_SPREAD_GEV**2 / e_gev), 0.5)
    width = _lognormal(z_width, spread)
    r_core, r_tail, p = _radial(c, seg, energy)
    r_core, r_tail = r_core * width, r_tail * width
    r, w = _mixture_radii(j, v, shifts[:, :1], r_core, r_tail, p)
    # the angles of a rank-1 lattice, turned by a random angle per shower and sampling
    alpha = 2.0 * np.pi * ((j * _G1 + shifts[:, 1:2]) % 1.0)
    x, y = r * np.cos(alpha), r * np.sin(alpha)
    x, y, w = _blobs(c.kind, e_gev, pick, centres, z[:2], r_core, r_tail, x, y, w)
    # per-spot weight fluctuations, smaller at higher energy; then the sampling's energy exactly
    sigma = np.sqrt(np.log1p(np.minimum(WEIGHT_SPREAD * n / e_gev, 4.0)))[:, None]
    w = w * _lognormal(z[2], sigma)
    w *= (energy / w.sum(1))[:, None]
    if c.centre is not None:
        x, y = x + c.centre[0][:, None], y + c.centre[1][:, None]
    return x, y, w


# ---------------------------------------------------------------------------------------------
# Sampling fluctuations, binning and the chunk loop
# ---------------------------------------------------------------------------------------------
def _fluctuate(rng, plan: _Plan, components: list[_Component], energy_mev: np.ndarray) -> None:
    """Scale each read-out sampling's energy by a mean-one lognormal of relative variance
    a^2 / E [GeV] (sigma at most 1), then the whole shower so that E_tot / E_inc = soft_cap(E_tot /
    E_inc) < 1; the components' energies are changed in place."""
    segs = list(plan.segments)
    z = rng.standard_normal((len(energy_mev), len(segs)))
    layer = sum(c.energy[:, segs] for c in components)
    a = np.array([SAMPLINGS[SEGMENT_IDS[s]].stochastic for s in segs])
    sigma = np.minimum(np.sqrt(np.log1p(a**2 / np.maximum(layer / GEV, 1e-9))), 1.0)
    factor = _lognormal(z, sigma)
    x = (layer * factor).sum(1) / energy_mev
    factor *= np.where(x > 0.0, soft_cap(x) / np.where(x > 0.0, x, 1.0), 1.0)[:, None]
    for c in components:
        c.energy[:, segs] = c.energy[:, segs] * factor


def _spot_counts(segment: int, particle: str) -> dict[str, int]:
    s = SAMPLINGS[SEGMENT_IDS[segment]]
    em = s.photon_spots if particle == "gamma" else s.pi0_spots
    return {"em": em, "had": s.had_spots, "track": TRACK_SPOTS}


def _chunk_spots(plan: _Plan, particle: str, rng, energy_gev: np.ndarray) -> list[tuple]:
    """The spots of a chunk: one (layer position, x, y, weight) block per read-out sampling and
    component, each (C, spots) with x = eta, y = phi in mm and weights in MeV."""
    energy_mev = energy_gev * GEV
    components = (_photons if particle == "gamma" else _pions)(rng, energy_mev)
    _fluctuate(rng, plan, components, energy_mev)
    blocks = []
    for k, seg in enumerate(plan.segments):
        counts = _spot_counts(seg, particle)
        for c in components:
            blocks.append((k, *_spots(rng, c, seg, counts[c.kind])))
    return blocks


def _bin(plan: _Plan, n_showers: int, blocks) -> np.ndarray:
    """Spot blocks (layer position, x, y, w), each (n_showers, m) -> voxels (n_showers, V) MeV.

    r = hypot(x, y) is binned with searchsorted on the layer's r edges, alpha = atan2(y, x) with
    floor over linspace(-pi, pi, n_alpha + 1); the flat index is the layer's offset + a * n_r + r.
    Spots outside [first, last) r edge go to a last, discarded bin (lateral leakage)."""
    V = plan.geometry.n_voxels
    lost = n_showers * V
    rows = (np.arange(n_showers) * V)[:, None]
    indices, weights = [], []
    for k, x, y, w in blocks:
        edges, n_alpha = plan.r_edges[k], plan.n_alpha[k]
        r = np.hypot(x, y)
        r_bin = np.searchsorted(edges, r, side="right") - 1
        a_bin = np.floor((np.arctan2(y, x) + np.pi) * (n_alpha / (2.0 * np.pi))).astype(np.int64)
        a_bin = np.clip(a_bin, 0, n_alpha - 1)  # alpha = pi exactly belongs to the last bin
        index = rows + plan.offsets[k] + a_bin * (len(edges) - 1) + r_bin
        inside = (r >= edges[0]) & (r < edges[-1])
        indices.append(np.where(inside, index, lost).ravel())
        weights.append(np.asarray(w, dtype=float).ravel())
    sums = np.bincount(np.concatenate(indices), np.concatenate(weights), minlength=lost + 1)
    return sums[:lost].reshape(n_showers, V)


def _simulate_chunk(plan: _Plan, particle: str, seed: int, chunk: int, energy_gev) -> np.ndarray:
    """Voxels (CHUNK_SIZE, V) MeV of chunk ``chunk`` for incident energies (CHUNK_SIZE,) GeV."""
    rng = np.random.default_rng([seed, chunk])
    return _bin(plan, len(energy_gev), _chunk_spots(plan, particle, rng, energy_gev))


def _range_energies(seed: int, chunk: int, energy_range: tuple[float, float]) -> np.ndarray:
    """CHUNK_SIZE incident energies (GeV), log-uniform in ``energy_range``, of chunk ``chunk``."""
    lo, hi = np.log(energy_range[0]), np.log(energy_range[1])
    u = np.random.default_rng([seed, chunk, 1]).random(CHUNK_SIZE)
    return np.clip(np.exp(lo + (hi - lo) * u), *energy_range)


# ---------------------------------------------------------------------------------------------
# The official energy mix
# ---------------------------------------------------------------------------------------------
def challenge_particle(geometry_or_particle) -> str:
    """'gamma' or 'piplus' from a particle name or a built-in dataset-1 geometry (or its name)."""
    name = (
        geometry_or_particle.name
        if isinstance(geometry_or_particle, Geometry)
        else str(geometry_or_particle)
    )
    if name in PARTICLES:
        return name
    if name in DATASET_PARTICLES:
        return DATASET_PARTICLES[name]
    raise CaloflowError(
        f"--particle: the dataset-1 energy mix is defined for {', '.join(PARTICLES)} "
        f"({', '.join(DATASET_PARTICLES)}), got {name!r}"
    )


def challenge_counts(geometry_or_particle, n: int | None = None) -> np.ndarray:
    """Showers per energy 2^8..2^22 MeV (15,): the official counts, or for ``n`` showers the
    counts proportional to them, rounded by largest remainder so that they sum to ``n`` exactly
    (ties to the lower energy); every energy appears once n >= total / smallest count."""
    official = np.asarray(CHALLENGE_COUNTS[challenge_particle(geometry_or_particle)])
    if n is None:
        return official.copy()
    quota = int(n) * official / official.sum()
    counts = np.floor(quota).astype(np.int64)
    order = np.argsort(-(quota - counts), kind="stable")
    counts[order[: int(n) - counts.sum()]] += 1
    return counts


def challenge_energies(geometry_or_particle, n: int | None = None, seed: int = 0) -> np.ndarray:
    """The incident energies (GeV, float64) of the official dataset-1 mix, or of ``n`` showers in
    the same proportions (:func:`challenge_counts`): exactly 2^k MeV / 1000 for k = 8..22.

    The order of the showers in the official files is not documented, so the energies are
    shuffled with ``seed`` (a permutation; the counts do not depend on it).
    """
    counts = challenge_counts(geometry_or_particle, n)
    energies = np.repeat([2.0**k / GEV for k in CHALLENGE_EXPONENTS], counts)
    return np.random.default_rng([seed, 2]).permutation(energies)


# ---------------------------------------------------------------------------------------------
# Options and the public entries
# ---------------------------------------------------------------------------------------------
def _positive_int(value, option: str, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise CaloflowError(f"{option}: {what}, got {value!r}")
    return int(value)


def _particle(geometry: Geometry, particle: str | None) -> str:
    implied = DATASET_PARTICLES.get(geometry.name)
    if particle is None:
        if implied is None:
            raise CaloflowError(
                f"--particle: geometry {geometry.name} needs the particle ({' or '.join(PARTICLES)})"
            )
        return implied
    if particle not in PARTICLES:
        raise CaloflowError(
            f"--particle: the barrel simulator simulates {' or '.join(PARTICLES)}, got {particle!r}"
        )
    if implied is not None and particle != implied:
        raise CaloflowError(
            f"--particle: {geometry.name} holds {implied} showers, got {particle!r}"
        )
    return particle


def _range(energy_range) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in energy_range)
    except (TypeError, ValueError):
        raise CaloflowError(
            f"--energy-range: expected two numbers LOW HIGH in GeV, got {energy_range!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and MIN_ENERGY_GEV <= lo < hi):
        raise CaloflowError(
            f"--energy-range: need {MIN_ENERGY_GEV:g} <= LOW < HIGH (GeV), got {lo:g} {hi:g}"
        )
    if hi > MAX_ENERGY_GEV:
        raise CaloflowError(
            f"--energy-range: HIGH must be at most {MAX_ENERGY_GEV:.10g} GeV (2^22 MeV), got {hi:g}"
        )
    return lo, hi


def _energies(energies, n: int) -> np.ndarray:
    e = np.asarray(energies, dtype=float).reshape(-1)
    if len(e) != n:
        raise CaloflowError(f"--energies: {len(e)} incident energies for {n} showers")
    bad = ~np.isfinite(e) | (e < MIN_ENERGY_GEV) | (e > MAX_ENERGY_GEV)
    if bad.any():
        raise CaloflowError(
            f"--energies: incident energy {e[bad][0]:g} GeV outside [{MIN_ENERGY_GEV:g}, "
            f"{MAX_ENERGY_GEV:.10g}] GeV"
        )
    return e


def check_barrel_options(
    geometry: Geometry,
    n: int,
    seed: int = 0,
    energies="challenge",
    energy_range=None,
    particle: str | None = None,
) -> tuple[_Plan, str, np.ndarray | None, tuple[float, float] | None]:
    """Validate a run before any work: (plan, particle, incident energies (n,) GeV or None, energy
    range or None). ``energies`` is "challenge" (the official mix scaled to ``n``, shuffled with
    ``seed``), None (with ``energy_range``) or n energies in GeV; ``energy_range`` (LOW, HIGH) GeV
    draws log-uniform energies.

    Raises:
        CaloflowError: one line naming the option (--geometry, --particle, --n, --seed,
            --energies, --energy-range).
    """
    if not isinstance(geometry, Geometry):
        raise CaloflowError(f"--geometry: expected a Geometry, got {geometry!r}")
    plan = _plan(geometry)
    particle = _particle(geometry, particle)
    n = _positive_int(n, "--n", "number of showers must be a positive integer", 1)
    seed = _positive_int(seed, "--seed", "must be a non-negative integer", 0)
    if energy_range is not None:
        if energies is not None and not (isinstance(energies, str) and energies == "challenge"):
            raise CaloflowError("--energy-range: give either incident energies or a range")
        return plan, particle, None, _range(energy_range)
    if isinstance(energies, str):
        if energies != "challenge":
            raise CaloflowError(f"--energies: expected 'challenge', got {energies!r}")
        return plan, particle, challenge_energies(particle, n, seed), None
    if energies is None:
        raise CaloflowError("--energies: give 'challenge', the incident energies or a range")
    return plan, particle, _energies(energies, n), None


def _parts(plan: _Plan, particle, n, seed, energies, energy_range, progress):
    """(first row, showers) of a run of ``n``, chunk by chunk (the last one cut to ``n``)."""
    from tqdm.auto import tqdm

    desc = f"simulate {particle} ({plan.geometry.name})"
    with tqdm(total=n, desc=desc, unit="shower", disable=not progress) as bar:
        for chunk, start in enumerate(range(0, n, CHUNK_SIZE)):
            m = min(CHUNK_SIZE, n - start)
            if energies is None:
                e = _range_energies(seed, chunk, energy_range)
            else:  # the padding rows are simulated and dropped: no row depends on another
                e = np.ones(CHUNK_SIZE)
                e[:m] = energies[start : start + m]
            voxels = _simulate_chunk(plan, particle, seed, chunk, e)[:m]
            # conservation is built in (dead material, leakage, the soft cap); guard it anyway
            if np.any(voxels.sum(1) > e[:m] * GEV):
                raise RuntimeError("simulated shower deposits more than its incident energy")
            yield start, Showers(voxels, e[:m], geometry=plan.geometry)
            bar.update(m)


def simulate_barrel(
    geometry: Geometry,
    n: int,
    seed: int = 0,
    energies="challenge",
    energy_range=None,
    particle: str | None = None,
    progress: bool = False,
) -> Showers:
    """Simulate ``n`` showers in ``geometry`` (dataset-1 samplings only).

    Args:
        geometry: a polar geometry whose layer ids are among :data:`SAMPLINGS`.
        n: number of showers.
        seed: random seed; the same seed gives the same numbers.
        energies: "challenge" (the official mix scaled to ``n``, shuffled with ``seed``), or
            ``n`` incident energies in GeV; None when ``energy_range`` is given.
        energy_range: (LOW, HIGH) in GeV: log-uniform incident energies instead.
        particle: "gamma" or "piplus"; implied by ``ds1-photons`` / ``ds1-pions``.
    Returns:
        Showers: voxels (n, V) in MeV (float64), energy (n,) in GeV, with ``geometry``.
    Raises:
        CaloflowError: a bad option (:func:`check_barrel_options`).
    """
    plan, particle, e, energy_range = check_barrel_options(
        geometry, n, seed, energies, energy_range, particle
    )
    voxels = np.empty((int(n), geometry.n_voxels))
    energy = np.empty(int(n))
    for start, part in _parts(plan, particle, int(n), int(seed), e, energy_range, progress):
        voxels[start : start + len(part)] = part.voxels
        energy[start : start + len(part)] = part.energy
    return Showers(voxels, energy, geometry=geometry)


def simulate_barrel_to_file(
    path,
    geometry: Geometry,
    n: int,
    seed: int = 0,
    energies="challenge",
    energy_range=None,
    particle: str | None = None,
    progress: bool = True,
) -> Path:
    """Simulate and write a CaloChallenge-format file (``showers`` (n, V) and
    ``incident_energies`` (n, 1) in MeV, voxels float32) with attributes particle, seed, energies
    ("challenge" or "log-uniform LOW HIGH GeV") and simulator (:data:`SIMULATOR_VERSION`).

    The showers are written chunk by chunk (:class:`caloflow.data.io.ShowerWriter`): memory does
    not grow with ``n``, and the file holds the numbers of :func:`simulate_barrel` (in float32).
    """
    plan, particle, e, energy_range = check_barrel_options(
        geometry, n, seed, energies, energy_range, particle
    )
    if energy_range is not None:
        described = f"log-uniform {energy_range[0]:.10g} {energy_range[1]:.10g} GeV"
    else:
        described = energies if isinstance(energies, str) else "given"
    attrs = {
        "particle": particle,
        "seed": int(seed),
        "energies": described,
        "simulator": SIMULATOR_VERSION,
    }
    with ShowerWriter(path, attrs=attrs, expected_rows=int(n), geometry=geometry) as out:
        for _, part in _parts(plan, particle, int(n), int(seed), e, energy_range, progress):
            out.append(part)
    return Path(path)


__all__ = [
    "SIMULATOR_VERSION",
    "PARTICLES",
    "DATASET_PARTICLES",
    "CHUNK_SIZE",
    "MAX_ENERGY_GEV",
    "MIN_ENERGY_GEV",
    "CHALLENGE_EXPONENTS",
    "CHALLENGE_COUNTS",
    "SEGMENT_IDS",
    "X0_EDGES",
    "LAMBDA_EDGES",
    "Sampling",
    "SAMPLINGS",
    "TRACK_SPOTS",
    "Z_EFF",
    "EC_MEV",
    "DEPTH_SCALE",
    "ALPHA_MIN",
    "CONVERSION_X0",
    "PAIR_X0",
    "PION_LAMBDA",
    "MIP_MEV_PER_LAMBDA",
    "MIP_MPV",
    "MIP_WIDTH",
    "EM_FRACTION_POWER",
    "EM_FRACTION_SPREAD",
    "INVISIBLE_MEAN",
    "INVISIBLE_SPREAD",
    "HAD_DEPTH_SPREAD",
    "HAD_R0_MM",
    "HAD_R_SLOPE_MM",
    "HAD_TAIL",
    "HAD_CORE",
    "PI0_SPREAD_MM",
    "TRACK_R_MM",
    "WIDE_SHARE",
    "WIDE_FACTOR",
    "WIDTH_SPREAD_MIN",
    "WIDTH_SPREAD_GEV",
    "WEIGHT_SPREAD",
    "CLUSTER_SCALE",
    "CLUSTER_MAX",
    "CLUSTERS",
    "CLUSTER_SIZE",
    "CAP_KNEE",
    "CAP_TOP",
    "spots_per_shower",
    "soft_cap",
    "challenge_particle",
    "challenge_counts",
    "challenge_energies",
    "check_barrel_options",
    "simulate_barrel",
    "simulate_barrel_to_file",
]
