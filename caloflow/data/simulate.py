"""Embedded GFlash-style shower simulator for the CaloGAN detector (docs/physics.md sections 3-5).

This is a *stand-in* for GEANT4, tuned to the look of the GEANT4 CaloGAN showers (layer
fractions, occupancies, widths, leakage and the distinct character of e+, gamma and pi+); it is
not GEANT4 and makes no claim to reproduce it. It exists so that every part of caloflow can be
trained, tested and benchmarked without the 100,000-shower GEANT4 files. Real CaloGAN files are
read by :func:`caloflow.data.io.read_showers` exactly like the files written here.

Physics (Grindhammer-Peters, hep-ex/0001020, and Grindhammer-Rudowicz-Peters for hadrons):

* The detector is treated as a homogeneous effective medium (Pb/LAr, 80 periods of 6 mm):
  X0 = 15.6 mm, Moliere radius 35 mm, lambda_I = 366 mm, Z_eff = 69, E_c = 9.3 MeV. Cells record
  the total deposited energy, so no sampling fraction scales the signal; the sampling structure
  only enters the profile parameters (sampling-calorimeter corrections with F_s and e_hat).
* EM showers: a Gamma longitudinal profile per shower with correlated fluctuations of
  (ln T, ln alpha); energy deposited as spots drawn from a slightly shorter spot profile and
  weighted by energy profile / spot profile; core + tail radial profile (R_c, R_t, p) in Moliere
  units; a faint, very wide halo of soft photons (3 % of the energy; what the GFlash fit leaves
  out and what makes GEANT4 showers fill the outer cells at the 10 keV level), importance-sampled
  so that the faint regions get many small deposits; a small albedo loss.
* Tuned departures from the published fits, to match the GEANT4 look: the shower-maximum depth
  T is scaled by :data:`DEPTH_SCALE` (layer-0 fraction ~0.15 for e+), alpha is kept above
  :data:`ALPHA_MIN`, and the spot counts and halo are chosen for the occupancies.
* Photons convert at an exponential depth (mean 9/7 X0); the pair shares the energy with the
  Bethe-Heitler-like weight 1 - 4/3 x (1 - x) and both leptons shower from there.
* Charged pions: a MIP track (3.4 MeV most probable per 6 mm period, Moyal straggling,
  multiple-scattering displacement) until an exponential interaction depth (lambda_I = 366 mm);
  then a hadronic shower: a fluctuating EM fraction (pi0 photons, showered as above) and a
  hadronic part with a Gamma profile in lambda_I (GRP parameters), a wide lateral profile that
  grows with depth, few, strongly fluctuating spots and 30-40 % invisible energy.
* Spots are binned into the three voxel grids (edges ``linspace(-240, 240, n + 1)`` mm, layers
  at depths 0-90-437-480 mm); spots outside the 480 x 480 mm readout go to the layer's
  overflow, spots deeper than 480 mm are lost (longitudinal leakage).

Units: voxels and overflow in MeV, incident energy in GeV, lengths in mm, depths ``t`` in X0.

Everything is vectorised with numpy over chunks of :data:`CHUNK_SIZE` showers. Chunk ``k`` uses
its own generator seeded from ``(seed, k)`` and always simulates a full chunk, so the first
``n`` showers of a run do not depend on the total number requested: ``simulate(p, n, s)`` equals
``simulate(p, m, s)[:n]`` for every ``m >= n``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from caloflow.data.io import Showers, ShowerWriter
from caloflow.errors import CaloflowError
from caloflow.geometry import (
    CALOGAN,
    GEV,
    HALF_WIDTH_MM,
    LAYER_DEPTHS_MM,
    PERIOD_MM,
)

#: Identifies the physics of this module in the files it writes; bump when the numbers change.
SIMULATOR_VERSION = "caloflow-gflash-1.0"
PARTICLES: tuple[str, ...] = ("eplus", "gamma", "piplus")
#: Showers per chunk; fixed, because each chunk has its own random stream.
CHUNK_SIZE = 32

# --- the effective medium (docs/physics.md section 3) -------------------------------------
X0_MM = 15.6
RM_MM = 35.0
LAMBDA_MM = 366.0
Z_EFF = 69.0
EC_MEV = 9.3
FS = 2.6  # sampling frequency: X0_eff / period thickness
E_HAT = 0.69  # e/mip ratio of the stack
DEPTH_MM = LAYER_DEPTHS_MM[-1]
N_PERIODS = int(round(DEPTH_MM / PERIOD_MM))

# --- tuning of the stand-in to the GEANT4 look (docs/physics.md section 4) -----------------
#: GEANT4 CaloGAN showers peak deeper than the GFlash fit gives for this stack (layer-0
#: fraction ~0.15-0.2 for e+); the mean shower-maximum depth T is scaled by this factor.
DEPTH_SCALE = 1.15
#: Lower bound of the Gamma shape alpha of EM profiles (the fluctuations at low energy would
#: otherwise reach alpha ~ 1, i.e. arbitrarily long showers).
ALPHA_MIN = 1.8
#: EM spots per shower: SPOTS_MIN + SPOTS_PER_GEV * (E / GeV) ** 0.876 (GFlash energy scaling).
SPOTS_MIN = 8
SPOTS_PER_GEV = 50.0
#: Soft-photon halo: fraction of an EM shower's energy and spot count (its spots are what fill
#: the outer cells at the 10 keV level: occupancy ~0.5 / 0.9 / 0.35 for e+).
HALO_FRACTION = 0.03
HALO_SPOTS_MIN = 300
HALO_SPOTS_PER_GEV = 150.0
#: Mean absorption path of the soft halo photons, and the longer path the spots are drawn from, mm.
HALO_PATH_MM = 150.0
HALO_PROPOSAL_MM = 200.0
#: Lateral scale of the depth-uniform part of the halo proposal, mm.
HALO_WIDE_MM = 200.0
#: Odds of each layer in the depth-uniform part of the halo proposal.
HALO_LAYER_ODDS = (0.3, 0.65, 0.05)
#: Highest incident energy simulated, GeV: the spots (and the memory of a chunk) grow as E^0.876,
#: ~150 MB per chunk at 1 TeV (the CaloGAN samples span 1-100 GeV).
MAX_ENERGY_GEV = 1000.0
#: Backscattered (albedo) energy of EM showers: ALBEDO_MIN + Exp(ALBEDO_MEAN), a fraction of E.
ALBEDO_MIN = 0.002
ALBEDO_MEAN = 0.004
#: MIP: most probable loss per period (MeV) and Moyal width (MeV).
MIP_MPV_MEV = 3.4
MIP_WIDTH_MEV = 0.8
#: Hadronic part: spots, lateral scale R(z) = R0 + slope * (z - z_int), invisible fraction.
HAD_SPOTS_MIN = 3
HAD_SPOTS_PER_GEV = 4.0
HAD_R0_MM = 30.0
HAD_R_SLOPE = 0.3
INVISIBLE_MEAN = 0.35
INVISIBLE_CONCENTRATION = 60.0
EM_FRACTION_CONCENTRATION = 8.0
#: Hadronic showers are much sparser than EM ones: fewer halo spots for their pi0 photons.
PION_HALO_SCALE = 0.25
#: Lateral spread of the pi0 photons around the interaction point, mm.
PI0_SPREAD_MM = 10.0

# --- binning tables ------------------------------------------------------------------------
_ROWS = np.array([r for r, _ in CALOGAN.layer_shapes])
_COLS = np.array([c for _, c in CALOGAN.layer_shapes])
_OFFSETS = np.concatenate([[0], np.cumsum(_ROWS * _COLS)[:-1]])
_ROWS_PER_MM = _ROWS / (2 * HALF_WIDTH_MM)
_COLS_PER_MM = _COLS / (2 * HALF_WIDTH_MM)
_LAYER_FRONT = np.array(LAYER_DEPTHS_MM[:-1])
_LAYER_THICKNESS = np.diff(LAYER_DEPTHS_MM)
_HALO_LAYER_ODDS = np.asarray(HALO_LAYER_ODDS) / np.sum(HALO_LAYER_ODDS)
_HALO_LAYER_CDF = np.cumsum(_HALO_LAYER_ODDS)[:-1]


class _Spots:
    """Energy deposits of a chunk: shower index, position (x = eta, y = phi, z) in mm, MeV."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, shower, x, y, z, e) -> None:
        self.parts.append((shower, x, y, z, e))

    def arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(np.concatenate(col) for col in zip(*self.parts))


def _rotate(rng: np.random.Generator, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) at distance ``r`` from the axis in a uniform random direction."""
    # single precision is plenty for a direction and makes cos/sin several times cheaper
    phi = (2.0 * np.pi) * rng.random(len(r), dtype=np.float32)
    return r * np.cos(phi), r * np.sin(phi)


# ---------------------------------------------------------------------------------------------
# EM showers
# ---------------------------------------------------------------------------------------------
def _em_profile(rng: np.random.Generator, energy_mev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-shower longitudinal (T [X0], alpha) of the Gamma profile, sampling-calorimeter GFlash.

    <ln T>, <ln alpha> of the homogeneous medium corrected with F_s and e_hat; sigmas and the
    correlation rho of the sampling parametrisation (docs/physics.md section 5).
    """
    ln_y = np.log(np.maximum(energy_mev / EC_MEV, 1.0))
    ln_y_mean = np.maximum(ln_y, 1.5)  # below ~40 MeV the fit is meaningless; keep it finite
    t_hom = np.maximum(ln_y_mean - 0.812, 0.5)
    a_hom = 0.81 + (0.458 + 2.26 / Z_EFF) * ln_y_mean
    mean_ln_t = np.log(np.maximum(t_hom - 0.55 / FS - 0.69 * (1.0 - E_HAT), 0.3) * DEPTH_SCALE)
    mean_ln_a = np.log(np.maximum(a_hom - 0.476 / FS, ALPHA_MIN))
    ln_y_sig = np.maximum(ln_y, 3.0)  # the sigma fits diverge at small y
    sig_t = 1.0 / (-2.5 + 1.25 * ln_y_sig)
    sig_a = 1.0 / (-0.82 + 0.79 * ln_y_sig)
    rho = 0.784 - 0.023 * ln_y_sig
    z1 = rng.standard_normal(len(energy_mev))
    z2 = rng.standard_normal(len(energy_mev))
    ln_t = mean_ln_t + sig_t * z1
    ln_a = mean_ln_a + sig_a * (rho * z1 + np.sqrt(1.0 - rho**2) * z2)
    # alpha -> 1 would stretch the profile (mean depth alpha T / (alpha - 1)) without bound
    return np.exp(ln_t), np.maximum(np.exp(ln_a), ALPHA_MIN)


def _halo_spots(energy_mev: np.ndarray) -> np.ndarray:
    """Expected number of halo spots of an EM shower of ``energy_mev``."""
    return HALO_SPOTS_MIN + HALO_SPOTS_PER_GEV * (energy_mev / GEV) ** 0.6


def _em_showers(rng, spots: _Spots, shower, energy, z0, x0, y0, halo_spots=None) -> None:
    """Deposit EM showers (electrons/positrons) of ``energy`` MeV starting at depth ``z0`` mm on
    the axis (x0, y0) mm. Arrays are per shower component; ``shower`` is the chunk row;
    ``halo_spots`` is the expected number of halo spots (by default :func:`_halo_spots`).

    A fraction 1 - HALO_FRACTION of the visible energy goes to the core spots, the rest to the
    soft-photon halo; the random draws are made in this order (core, then halo), which fixes
    the stream of each chunk."""
    n = len(energy)
    if n == 0:
        return
    T, alpha = _em_profile(rng, energy)
    albedo = ALBEDO_MIN + ALBEDO_MEAN * rng.standard_exponential(n)
    visible = energy * (1.0 - np.minimum(albedo, 0.05))
    t_core, core_counts = _em_core(rng, spots, shower, energy, z0, x0, y0, T, alpha, visible)
    if halo_spots is None:
        halo_spots = _halo_spots(energy)
    _em_halo(rng, spots, shower, z0, x0, y0, visible, t_core, core_counts, halo_spots)


def _em_core(
    rng, spots: _Spots, shower, energy, z0, x0, y0, T, alpha, visible
) -> tuple[np.ndarray, np.ndarray]:
    """Core spots of the EM showers (GFlash): depths ``t`` [X0] from the spot profile, importance-
    weighted to the energy profile Gamma(alpha, T), radii from the core + tail radial profile.

    Deposits (1 - HALO_FRACTION) ``visible`` MeV per shower; returns the spot depths ``t`` [X0]
    (shower by shower) and the number of spots of each shower, where the halo photons are born."""
    n = len(energy)
    e_gev = energy / GEV
    beta = (alpha - 1.0) / T
    # spot profile: slightly shorter than the energy profile (GFlash)
    T_s = T * (0.698 + 0.00212 * Z_EFF)
    alpha_s = alpha * (0.639 + 0.00334 * Z_EFF)
    beta_s = (alpha_s - 1.0) / T_s
    counts = (SPOTS_MIN + SPOTS_PER_GEV * e_gev**0.876 + rng.random(n)).astype(np.int64)
    c = np.repeat(np.arange(n), counts)
    m = len(c)
    t = np.maximum(rng.standard_gamma(alpha_s[c]) * (1.0 / beta_s)[c], 1e-6)
    # importance weight f(t) / f_s(t) (energy profile over spot profile; the per-shower
    # constants cancel in the normalisation) times an exponential per-spot fluctuation
    w = np.exp(
        (alpha - alpha_s)[c] * np.log(t) - (beta - beta_s)[c] * t
    ) * rng.standard_exponential(m)
    w *= ((1.0 - HALO_FRACTION) * visible / np.bincount(c, w, minlength=n))[c]
    # radial core + tail in Moliere units as functions of tau = t / T and ln E
    ln_e = np.log(e_gev)
    tau = t * (1.0 / T)[c]
    r_core = (0.0251 + 0.00319 * ln_e)[c] + (0.1162 - 0.000381 * Z_EFF) * tau
    d = tau - 0.645
    r_tail = (0.659 - 0.00309 * Z_EFF) * (
        np.exp(-2.59 * d) + np.exp((0.3585 + 0.0412 * ln_e)[c] * d)
    )
    p1, p2 = 2.632 - 0.00094 * Z_EFF, 0.401 + 0.00187 * Z_EFF
    q = (p2 - tau) * (1.0 / (1.313 - 0.0686 * ln_e))[c]
    is_core = rng.random(m) < p1 * np.exp(q - np.exp(q))
    u = rng.random(m)
    r = np.where(is_core, r_core, r_tail) * (RM_MM * np.sqrt(u / (1.0 - u)))
    x, y = _rotate(rng, r)
    spots.add(shower[c], x0[c] + x, y0[c] + y, z0[c] + X0_MM * t, w)
    return t, counts


def _em_halo(
    rng, spots: _Spots, shower, z0, x0, y0, visible, t_core, core_counts, halo_spots
) -> None:
    """Soft-photon halo: photons born on the axis at the core spots' depths (cycling through
    them), emitted isotropically and absorbed after an exponential path of mean HALO_PATH_MM;
    those leaving the stack are lost. Deposits HALO_FRACTION ``visible`` MeV per shower.

    The deposits are importance-sampled from a mixture (a longer isotropic path, or a point
    uniform in depth with a broad lateral distribution) and weighted by physical / proposal
    density, so the far, faint regions get many small deposits (their occupancy) at their
    physical share of the energy."""
    n = len(visible)
    starts = np.cumsum(core_counts) - core_counts
    counts = (np.maximum(halo_spots, 2.0) + rng.random(n)).astype(np.int64)
    c = np.repeat(np.arange(n), counts)
    m = len(c)
    k = np.arange(m) - np.repeat(np.cumsum(counts) - counts, counts)
    z_origin = z0[c] + X0_MM * t_core[starts[c] + k % core_counts[c]]
    # proposal 1: isotropic, path ~ Exp(HALO_PROPOSAL_MM)
    path = HALO_PROPOSAL_MM * rng.standard_exponential(m)
    cos_theta = 2.0 * rng.random(m) - 1.0
    r = path * np.sqrt(1.0 - cos_theta**2)
    dz = path * cos_theta
    # proposal 2: depth uniform in the stack, lateral 2 r R^2 / (r^2 + R^2)^2
    second = rng.random(m) < 0.5
    u = rng.random(m)
    r = np.where(second, HALO_WIDE_MM * np.sqrt(u / (1.0 - u)), r)
    # (a layer chosen with the odds HALO_LAYER_ODDS, uniform inside it: the thin layers get
    # their share of spots)
    layer = np.searchsorted(_HALO_LAYER_CDF, rng.random(m), side="right")
    z_wide = _LAYER_FRONT[layer] + _LAYER_THICKNESS[layer] * rng.random(m)
    dz = np.where(second, z_wide - z_origin, dz)
    d2 = np.maximum(r**2 + dz**2, 1e-6)
    d = np.sqrt(d2)
    physical = np.exp(-d / HALO_PATH_MM) / (4.0 * np.pi * HALO_PATH_MM * d2)
    q1 = np.exp(-d / HALO_PROPOSAL_MM) / (4.0 * np.pi * HALO_PROPOSAL_MM * d2)
    layer = (z_origin + dz >= LAYER_DEPTHS_MM[1]).astype(np.int64) + (
        z_origin + dz >= LAYER_DEPTHS_MM[2]
    )
    inside = (z_origin + dz >= 0.0) & (z_origin + dz < DEPTH_MM)
    q2 = (
        inside
        * HALO_WIDE_MM**2
        / (np.pi * (r**2 + HALO_WIDE_MM**2) ** 2)
        * (_HALO_LAYER_ODDS[layer] / _LAYER_THICKNESS[layer])
    )
    w = physical / (0.5 * q1 + 0.5 * q2) * rng.standard_exponential(m)
    w *= (HALO_FRACTION * visible / np.bincount(c, w, minlength=n))[c]
    x, y = _rotate(rng, r)
    spots.add(shower[c], x0[c] + x, y0[c] + y, z_origin + dz, w)


def _pair_fraction(rng: np.random.Generator, n: int) -> np.ndarray:
    """Energy fraction x of one lepton of a conversion pair: uniform, accepted with weight
    1 - 4/3 x (1 - x) (the high-energy Bethe-Heitler shape)."""
    x = np.empty(n)
    todo = np.arange(n)
    while len(todo):
        cand = rng.random(len(todo))
        ok = rng.random(len(todo)) < 1.0 - (4.0 / 3.0) * cand * (1.0 - cand)
        x[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return x


def _photons(rng, spots: _Spots, shower, energy, z0, x0, y0, halo_spots=None) -> None:
    """Photons of ``energy`` MeV entering at depth ``z0``: convert after Exp(9/7 X0), then the
    e+e- pair showers from the conversion point. The photon's halo spots are shared by the
    pair in proportion to energy, so a photon looks like one shower, not two."""
    n = len(energy)
    z_conv = z0 + X0_MM * (9.0 / 7.0) * rng.standard_exponential(n)
    x = _pair_fraction(rng, n)
    two = lambda a: np.concatenate([a, a])  # noqa: E731 - both leptons share the photon's data
    if halo_spots is None:
        halo_spots = _halo_spots(energy)
    _em_showers(
        rng,
        spots,
        two(shower),
        np.concatenate([x * energy, (1.0 - x) * energy]),
        two(z_conv),
        two(x0),
        two(y0),
        np.concatenate([x * halo_spots, (1.0 - x) * halo_spots]),
    )


# ---------------------------------------------------------------------------------------------
# Charged pions
# ---------------------------------------------------------------------------------------------
def _moyal(rng: np.random.Generator, n: int, mpv: float, width: float) -> np.ndarray:
    """Landau-like energy loss: Moyal(mpv, width) = mpv - width * ln(Z^2), Z ~ N(0, 1)."""
    z2 = np.maximum(rng.standard_normal(n) ** 2, 1e-30)
    return mpv - width * np.log(z2)


def _grp_parameters(e_gev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hadronic Gamma profile (alpha_h, beta_h [1/lambda_I]) of Grindhammer-Rudowicz-Peters."""
    a = np.log((0.35 + 0.09 * np.log(e_gev)) * e_gev)
    low = e_gev < 10.0
    alpha_h = np.where(low, 1.17 + 0.21 * a, 0.38 + 0.23 * a)
    beta_h = np.where(low, 2.10 - 0.72 * a, 0.83 - 0.049 * a)
    return np.maximum(alpha_h, 0.3), np.maximum(beta_h, 0.1)


def _pions(rng, spots: _Spots, energy_gev: np.ndarray) -> None:
    """Charged pions of ``energy_gev`` GeV entering the front face on the axis: a MIP track up to
    an interaction depth ~ Exp(lambda_I), then a hadronic shower from the (displaced) track end."""
    n = len(energy_gev)
    energy = energy_gev * GEV
    z_int = LAMBDA_MM * rng.standard_exponential(n)
    # multiple-scattering displacement of the track (Highland, projected): x = g * s(z)
    g = rng.standard_normal((2, n))
    ms_scale = 13.6 / energy / math.sqrt(3.0)  # rad per sqrt(X0), over sqrt(3) for the offset

    def track_offset(rows_, z):
        s = ms_scale[rows_] * np.sqrt(z / X0_MM) * z
        return g[0, rows_] * s, g[1, rows_] * s

    track_total = _pion_track(rng, spots, energy, z_int, track_offset)
    h = np.arange(n)[z_int < DEPTH_MM]
    if len(h) == 0:
        return
    xi, yi = track_offset(h, z_int[h])
    _hadronic_showers(rng, spots, h, energy[h] - track_total[h], z_int[h], xi, yi)


def _pion_track(rng, spots: _Spots, energy, z_int, track_offset) -> np.ndarray:
    """MIP deposits (Moyal straggling, MeV) at the middle of every sampling period up to the
    interaction depth ``z_int`` mm (or through the whole stack); returns each track's energy, MeV."""
    n = len(energy)
    n_periods = np.minimum(np.ceil(z_int / PERIOD_MM), N_PERIODS).astype(np.int64)
    c = np.repeat(np.arange(n), n_periods)
    k = np.arange(len(c)) - np.repeat(np.cumsum(n_periods) - n_periods, n_periods)
    z = PERIOD_MM * (k + 0.5)
    e_mip = np.clip(_moyal(rng, len(c), MIP_MPV_MEV, MIP_WIDTH_MEV), 0.0, 60.0)
    # the track can never take more than half of the pion's energy (matters only near 1 GeV)
    track_total = np.bincount(c, e_mip, minlength=n)
    e_mip *= np.minimum(1.0, 0.5 * energy / np.maximum(track_total, 1e-12))[c]
    track_total = np.minimum(track_total, 0.5 * energy)
    x, y = track_offset(c, z)
    spots.add(c, x, y, z, e_mip)
    return track_total


def _hadronic_showers(rng, spots: _Spots, h, e_sh, zi, xi, yi) -> None:
    """Hadronic showers of ``e_sh`` MeV of the chunk rows ``h``, starting at (xi, yi, zi) mm: a
    fluctuating EM fraction as two pi0 photons, the rest with a Gamma profile in lambda_I (GRP),
    a lateral scale growing with depth, and an invisible (lost) fraction."""
    m = len(h)
    e_sh_gev = e_sh / GEV
    # EM fraction (pi0s): Beta-distributed around 1 - (E / 1 GeV)^-0.17
    f_mean = np.clip(1.0 - np.maximum(e_sh_gev, 1e-3) ** -0.17, 0.08, 0.9)
    f_em = rng.beta(f_mean * EM_FRACTION_CONCENTRATION, (1.0 - f_mean) * EM_FRACTION_CONCENTRATION)
    # two pi0 photons with a uniform energy split, spread around the interaction point
    split = rng.random(m)
    e_em = f_em * e_sh
    two = lambda a: np.concatenate([a, a])  # noqa: E731
    spread = PI0_SPREAD_MM * rng.standard_normal((2, 2 * m))
    halo = PION_HALO_SCALE * _halo_spots(e_em)
    _photons(
        rng,
        spots,
        two(h),
        np.concatenate([split * e_em, (1.0 - split) * e_em]),
        two(zi),
        two(xi) + spread[0],
        two(yi) + spread[1],
        np.concatenate([split * halo, (1.0 - split) * halo]),
    )
    # hadronic part: Gamma profile in lambda_I, invisible energy lost
    invisible = rng.beta(
        INVISIBLE_MEAN * INVISIBLE_CONCENTRATION,
        (1.0 - INVISIBLE_MEAN) * INVISIBLE_CONCENTRATION,
        m,
    )
    e_had = (1.0 - f_em) * e_sh * (1.0 - invisible)
    alpha_h, beta_h = _grp_parameters(np.maximum(e_sh_gev, 0.1))
    counts = (HAD_SPOTS_MIN + HAD_SPOTS_PER_GEV * e_sh_gev**0.8 + rng.random(m)).astype(np.int64)
    c = np.repeat(np.arange(m), counts)
    depth = LAMBDA_MM * rng.standard_gamma(alpha_h[c]) / beta_h[c]
    w = rng.standard_exponential(len(c)) ** 2  # few, strongly fluctuating deposits
    w *= (e_had / np.maximum(np.bincount(c, w, minlength=m), 1e-300))[c]
    u = rng.random(len(c))
    r = (HAD_R0_MM + HAD_R_SLOPE * depth) * np.sqrt(u / (1.0 - u))
    x, y = _rotate(rng, r)
    spots.add(h[c], xi[c] + x, yi[c] + y, zi[c] + depth, w)


# ---------------------------------------------------------------------------------------------
# Binning and the chunk loop
# ---------------------------------------------------------------------------------------------
def _bin(spots: _Spots, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Spots -> (voxels (n, V), overflow (n, 3)) in MeV; spots deeper than 480 mm are lost."""
    shower, x, y, z, e = spots.arrays()
    layer = (z >= LAYER_DEPTHS_MM[1]).astype(np.int64) + (z >= LAYER_DEPTHS_MM[2])
    # rows are phi (y), columns eta (x), as in the CaloGAN arrays; outside cells are sorted out below
    row = ((y + HALF_WIDTH_MM) * _ROWS_PER_MM[layer]).astype(np.int64)
    col = ((x + HALF_WIDTH_MM) * _COLS_PER_MM[layer]).astype(np.int64)
    inside = (np.abs(x) < HALF_WIDTH_MM) & (np.abs(y) < HALF_WIDTH_MM)
    # one bincount for everything: voxels [0, V n), overflow [V n, (V + 3) n), lost (the last bin)
    index = np.where(
        inside,
        shower * CALOGAN.n_voxels + _OFFSETS[layer] + row * _COLS[layer] + col,
        n * CALOGAN.n_voxels + shower * CALOGAN.n_layers + layer,
    )
    index[(z < 0.0) | (z >= DEPTH_MM)] = n * (CALOGAN.n_voxels + CALOGAN.n_layers)
    sums = np.bincount(index, e, minlength=n * (CALOGAN.n_voxels + CALOGAN.n_layers) + 1)
    voxels = sums[: n * CALOGAN.n_voxels].reshape(n, CALOGAN.n_voxels)
    overflow = sums[n * CALOGAN.n_voxels : n * (CALOGAN.n_voxels + CALOGAN.n_layers)].reshape(
        n, CALOGAN.n_layers
    )
    return voxels, overflow


def _simulate_chunk(
    particle: str,
    seed: int,
    chunk: int,
    energy_range: tuple[float, float],
    given: np.ndarray | None = None,
) -> Showers:
    rng = np.random.default_rng([seed, chunk])
    n = CHUNK_SIZE
    # incident energies are rounded to float32 so that the file and the physics agree exactly
    energy_gev = rng.uniform(*energy_range, n).astype(np.float32).astype(np.float64)
    if given is not None:  # drawn anyway: the chunk's random stream is the same either way
        energy_gev[: len(given)] = np.asarray(given, np.float32)
    spots = _Spots()
    rows = np.arange(n)
    zeros = np.zeros(n)
    if particle == "eplus":
        _em_showers(rng, spots, rows, energy_gev * GEV, zeros, zeros, zeros)
    elif particle == "gamma":
        _photons(rng, spots, rows, energy_gev * GEV, zeros, zeros, zeros)
    else:
        _pions(rng, spots, energy_gev)
    voxels, overflow = _bin(spots, n)
    return Showers(voxels, energy_gev, overflow)


def check_energies(energies, n: int) -> np.ndarray | None:
    """The first ``n`` of the given incident energies (GeV) as float64, or None.

    Raises:
        CaloflowError: fewer than ``n`` energies, or one outside (0, :data:`MAX_ENERGY_GEV`].
    """
    if energies is None:
        return None
    e = np.asarray(energies, dtype=np.float64).reshape(-1)
    if len(e) < n:
        raise CaloflowError(f"--energies: {len(e)} incident energies, fewer than --n {n}")
    e = e[:n]
    bad = ~((e > 0) & (e <= MAX_ENERGY_GEV))
    if bad.any():
        raise CaloflowError(
            f"--energies: incident energy {e[bad][0]:.6g} GeV outside (0, {MAX_ENERGY_GEV:g}] GeV, "
            f"the range of the CaloGAN simulator"
        )
    return e


def check_options(particle: str, n: int, seed: int, energy_range) -> tuple[float, float]:
    if particle not in PARTICLES:
        raise CaloflowError(
            f"--particle: unknown particle '{particle}' (choose from {', '.join(PARTICLES)})"
        )
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise CaloflowError(f"--n: number of showers must be a positive integer, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise CaloflowError(f"--seed: must be a non-negative integer, got {seed!r}")
    try:
        lo, hi = (float(v) for v in energy_range)
    except (TypeError, ValueError):
        raise CaloflowError(
            f"--energy-range: expected two numbers LOW HIGH in GeV, got {energy_range!r}"
        ) from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo < hi):
        raise CaloflowError(f"--energy-range: need 0 < LOW < HIGH (GeV), got {lo:g} {hi:g}")
    if hi > MAX_ENERGY_GEV:
        raise CaloflowError(
            f"--energy-range: HIGH must be at most {MAX_ENERGY_GEV:g} GeV (the simulator's "
            f"limit), got {hi:g}"
        )
    return lo, hi


def simulate(
    particle: str,
    n: int,
    seed: int = 0,
    energy_range: tuple[float, float] = (1.0, 100.0),
    progress: bool = True,
    energies: np.ndarray | None = None,
) -> Showers:
    """Simulate ``n`` showers of ``particle`` ('eplus', 'gamma' or 'piplus').

    Incident energies are uniform in ``energy_range`` (GeV), or the first ``n`` of ``energies``
    (GeV, each in (0, 1000]; rounded to float32). Returns voxels (n, V) and overflow
    (n, 3) in MeV (float64), energy (n,) in GeV. The same seed gives the same numbers, and a run
    of ``n`` showers is the prefix of any longer run with the same seed.

    Raises:
        CaloflowError: unknown particle, ``n <= 0``, negative seed or a bad energy range.
    """
    lo, hi = check_options(particle, n, seed, energy_range)
    given = check_energies(energies, n)
    n = int(n)
    voxels = np.empty((n, CALOGAN.n_voxels))
    energy = np.empty(n)
    overflow = np.empty((n, CALOGAN.n_layers))
    for start, part in _parts(particle, n, int(seed), (lo, hi), progress, given):
        stop = start + len(part)
        voxels[start:stop] = part.voxels
        energy[start:stop] = part.energy
        overflow[start:stop] = part.overflow
    return Showers(voxels, energy, overflow)


def _parts(
    particle: str,
    n: int,
    seed: int,
    energy_range: tuple[float, float],
    progress: bool,
    given: np.ndarray | None = None,
):
    """(first row, showers) of a run of ``n``, chunk by chunk (the last one cut to ``n``)."""
    from tqdm.auto import tqdm

    with tqdm(total=n, desc=f"simulate {particle}", unit="shower", disable=not progress) as bar:
        for chunk, start in enumerate(range(0, n, CHUNK_SIZE)):
            # the whole chunk is always simulated: its numbers must not depend on n
            chunk_energies = None if given is None else given[start : start + CHUNK_SIZE]
            part = _simulate_chunk(particle, seed, chunk, energy_range, chunk_energies)[
                : min(CHUNK_SIZE, n - start)
            ]
            deposited = part.voxels.sum(1) + part.overflow.sum(1)
            # energy conservation is built in (albedo, invisible energy, leakage); guard it anyway
            if np.any(deposited > part.energy * GEV):
                raise RuntimeError("simulated shower deposits more than its incident energy")
            yield start, part
            bar.update(len(part))


def simulate_to_file(
    path,
    particle: str,
    n: int,
    seed: int = 0,
    energy_range: tuple[float, float] = (1.0, 100.0),
    progress: bool = True,
    energies: np.ndarray | None = None,
) -> Path:
    """Simulate and write a CaloGAN-format file (float32) with attributes particle, seed,
    energy_range (or energies = "given") and simulator (:data:`SIMULATOR_VERSION`); the incident
    energies as in :func:`simulate`.

    The showers are written chunk by chunk (:class:`caloflow.data.io.ShowerWriter`): memory does not
    grow with ``n``, and the file holds exactly the numbers of :func:`simulate` (in float32).
    """
    lo, hi = check_options(particle, n, seed, energy_range)
    given = check_energies(energies, n)
    attrs = {"particle": particle, "seed": int(seed), "simulator": SIMULATOR_VERSION}
    if given is None:
        attrs["energy_range"] = np.array([lo, hi])
    else:
        attrs["energies"] = "given"
    with ShowerWriter(path, attrs=attrs, expected_rows=int(n)) as out:
        for _, part in _parts(particle, int(n), int(seed), (lo, hi), progress, given):
            out.append(part)
    return Path(path)


__all__ = [
    "check_energies",
    "SIMULATOR_VERSION",
    "PARTICLES",
    "CHUNK_SIZE",
    "X0_MM",
    "RM_MM",
    "LAMBDA_MM",
    "Z_EFF",
    "EC_MEV",
    "FS",
    "E_HAT",
    "DEPTH_MM",
    "N_PERIODS",
    "DEPTH_SCALE",
    "ALPHA_MIN",
    "SPOTS_MIN",
    "SPOTS_PER_GEV",
    "HALO_FRACTION",
    "HALO_SPOTS_MIN",
    "HALO_SPOTS_PER_GEV",
    "HALO_PATH_MM",
    "HALO_PROPOSAL_MM",
    "HALO_WIDE_MM",
    "HALO_LAYER_ODDS",
    "MAX_ENERGY_GEV",
    "ALBEDO_MIN",
    "ALBEDO_MEAN",
    "MIP_MPV_MEV",
    "MIP_WIDTH_MEV",
    "HAD_SPOTS_MIN",
    "HAD_SPOTS_PER_GEV",
    "HAD_R0_MM",
    "HAD_R_SLOPE",
    "INVISIBLE_MEAN",
    "INVISIBLE_CONCENTRATION",
    "EM_FRACTION_CONCENTRATION",
    "PION_HALO_SCALE",
    "PI0_SPREAD_MM",
    "check_options",
    "simulate",
    "simulate_to_file",
]
