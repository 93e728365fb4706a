"""What a model was trained on, remembered in its checkpoint and in every file it writes.

A generator trained on e+ showers of 1-100 GeV has learnt nothing about 500 GeV or about photons:
asked for them it still answers, silently wrong. So every model records its training domain
(incident-energy range in GeV, particle, calorimeter geometry) when it is fitted, keeps it in
its checkpoint, and the files it generates carry it as the HDF5 attribute ``training_domain``
(JSON). ``caloflow generate`` and ``caloflow evaluate`` compare what they are asked to do with it
and warn in one line, or refuse with ``--strict``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from caloflow.errors import CaloflowError
from caloflow.geometry import (
    CALOGAN,
    CALOGAN_FORMAT,
    SHOWERS_KEY,
    Geometry,
    challenge_geometry_for_width,
    get_geometry,
)


def geometry_label(geometry: Geometry) -> str:
    """How a domain names a detector: its name and the (rows x cols) of every layer.

    The CaloGAN detector is called ``CaloGAN`` (the label files and checkpoints have carried since
    before geometries were data), any other by its :attr:`Geometry.name`.
    """
    name = "CaloGAN" if geometry.file_format == CALOGAN_FORMAT else geometry.name
    return f"{name} " + ", ".join(f"{r}x{c}" for r, c in geometry.layer_shapes)


#: the geometry of a model or file that says nothing about it: CaloGAN, the only one before others
GEOMETRY = geometry_label(CALOGAN)
#: the HDF5 attribute (JSON) and checkpoint key of the domain
KEY = "training_domain"
#: relative slack on the energy range: a request at the edge of the training data is not outside it
ENERGY_SLACK = 1e-3


@dataclass(frozen=True)
class Domain:
    """Incident-energy range (GeV), particle (None: unknown) and geometry of a model's training data."""

    energy_gev: tuple[float, float] | None = None
    particle: str | None = None
    geometry: str = GEOMETRY

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, d: dict | None) -> "Domain":
        d = d or {}
        energy = d.get("energy_gev")
        return cls(
            tuple(float(e) for e in energy) if energy is not None else None,
            d.get("particle"),
            d.get("geometry", GEOMETRY),
        )

    def describe(self) -> str:
        energy = (
            f"{self.energy_gev[0]:g}-{self.energy_gev[1]:g} GeV"
            if self.energy_gev
            else "unknown energies"
        )
        return f"{self.particle or 'unknown particle'}, {energy}"


def of_showers(energies_gev, particle: str | None) -> Domain:
    """The domain of a set of showers: the range of their incident energies (GeV) and the particle."""
    energies = np.asarray(energies_gev, dtype=np.float64).reshape(-1)
    return Domain(
        (float(energies.min()), float(energies.max())) if energies.size else None, particle
    )


def of_file(path: str | Path) -> Domain:
    """What a shower file says about itself: the ``training_domain`` of the model that generated it, or
    the ``particle`` / ``energy_range`` the simulator wrote; empty for a file that says nothing. The
    geometry is the file's (:func:`_file_geometry`)."""
    import h5py

    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
        geometry = _file_geometry(f, attrs)
    if KEY in attrs:
        return Domain.from_dict(json.loads(str(attrs[KEY])))
    particle = attrs.get("particle")
    energy = attrs.get("energy_range")
    return Domain(
        tuple(float(e) for e in energy) if energy is not None else None,
        str(particle) if particle is not None else None,
        geometry,
    )


def _file_geometry(f, attrs: dict) -> str:
    """The geometry label of an open HDF5 file: its ``geometry`` attribute (a built-in name or a
    :meth:`Geometry.to_dict` as JSON), else the built-in CaloChallenge geometry of the width of its
    ``showers``, else CaloGAN (the format without a ``showers`` dataset)."""
    declared = attrs.get("geometry")
    if declared is not None:
        text = declared.decode() if isinstance(declared, bytes) else str(declared)
        try:
            return geometry_label(get_geometry(json.loads(text) if text.startswith("{") else text))
        except (CaloflowError, ValueError, KeyError, TypeError):
            pass  # an attribute this version cannot read: judge the file by its datasets
    if SHOWERS_KEY in f:
        width = f[SHOWERS_KEY].shape[-1] if f[SHOWERS_KEY].ndim else 0
        known = challenge_geometry_for_width(width)
        return geometry_label(known) if known else f"CaloChallenge, {width} voxels"
    return GEOMETRY


def report(message: str, strict: bool) -> None:
    """One-line warning on stderr, or (``strict``) a :class:`CaloflowError` with the same text."""
    if strict:
        raise CaloflowError(message)
    print(f"caloflow: warning: {message} (--strict refuses)", file=sys.stderr, flush=True)


def check_energies(domain: Domain, energies_gev, what: str, strict: bool = False) -> None:
    """Warn (or refuse) when requested incident energies leave the range the model was trained on."""
    if domain.energy_gev is None:
        return
    energies = np.asarray(energies_gev, dtype=np.float64).reshape(-1)
    lo, hi = domain.energy_gev
    outside = (energies < lo * (1 - ENERGY_SLACK)) | (energies > hi * (1 + ENERGY_SLACK))
    if energies.size and outside.any():
        report(
            f"{what}: {int(outside.sum())} of {energies.size} incident energies ({energies.min():g}-"
            f"{energies.max():g} GeV) lie outside the {lo:g}-{hi:g} GeV the model was trained on",
            strict,
        )


def check_particle(expected: Domain, other: Domain, what: str, strict: bool = False) -> None:
    """Warn (or refuse) when two sides are known to be different particles (or geometries)."""
    if expected.particle and other.particle and expected.particle != other.particle:
        report(
            f"{what}: {other.particle} showers, but the other side is {expected.particle}", strict
        )
    if expected.geometry != other.geometry:
        report(f"{what}: geometry {other.geometry}, expected {expected.geometry}", strict)


class RemembersDomain:
    """Mixin for LightningModules: record the training data's domain when fitting, keep it in the checkpoint.

    ``self.domain`` is the :class:`Domain` (empty before training).
    """

    domain: Domain = Domain()

    def on_fit_start(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        train = getattr(datamodule, "train_set", None) if datamodule is not None else None
        geometry = getattr(self, "geometry", None)
        if geometry is not None:
            check_data_geometry(geometry, datamodule, train)
        if train is not None:
            domain = _data_domain(datamodule, train.energy.numpy())
            if geometry is not None:
                domain = Domain(domain.energy_gev, domain.particle, geometry_label(geometry))
            self.domain = domain
        super().on_fit_start()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[KEY] = asdict(self.domain)
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.domain = Domain.from_dict(checkpoint.get(KEY))
        super().on_load_checkpoint(checkpoint)


def carry_geometry(module, geometry: str | Path | dict | Geometry) -> Geometry:
    """Resolve a model's ``geometry`` init argument and keep its :meth:`Geometry.to_dict` in
    ``module.hparams``, so that the checkpoint holds the detector itself (layers and bin edges, not
    the name of an XML file that may be gone) and ``load_from_checkpoint`` rebuilds the model from it.

    The model calls ``self.save_hyperparameters(ignore=["geometry"])`` first: the geometry is then
    in the checkpoint's hyperparameters but not in the initial ones Lightning logs, where it would
    clash with the DataModule's own ``geometry`` argument (Lightning refuses a key that the model
    and the DataModule log with different values).
    """
    resolved = get_geometry(geometry)
    module.hparams["geometry"] = resolved.to_dict()
    return resolved


def check_data_geometry(geometry: Geometry, datamodule, train) -> None:
    """Refuse, in one line, training data of another detector than the model's ``geometry``: the
    DataModule's own ``geometry`` when it has one, else the width of its training voxels.

    Raises:
        CaloflowError: the geometries or the voxel counts differ.
    """
    data_geometry = getattr(datamodule, "geometry", None)
    if isinstance(data_geometry, Geometry) and data_geometry != geometry:
        raise CaloflowError(
            f"the data are in the {data_geometry.name} geometry but the model is built for "
            f"{geometry.name}: set the model's geometry to the data's"
        )
    voxels = getattr(train, "voxels", None)
    if voxels is not None and len(voxels.shape) == 2 and voxels.shape[1] != geometry.n_voxels:
        raise CaloflowError(
            f"the training showers have {voxels.shape[1]} voxels but the model's geometry "
            f"{geometry.name} has {geometry.n_voxels}: set the model's geometry to the data's"
        )


def _data_domain(datamodule, energies_gev) -> Domain:
    """The domain of a DataModule's training showers: the nominal range and particle its file (or the
    embedded dataset's settings) declare, else the range of the energies seen and an unknown particle."""
    seen = of_showers(energies_gev, None)
    h = datamodule.hparams
    if h.get("path") is None:
        declared = Domain(tuple(float(e) for e in h.get("energy_range")), h.get("particle"))
    else:
        try:
            declared = of_file(h["path"])
        except OSError:
            declared = Domain()
    return Domain(declared.energy_gev or seen.energy_gev, declared.particle)


__all__ = [
    "geometry_label",
    "GEOMETRY",
    "KEY",
    "ENERGY_SLACK",
    "Domain",
    "of_showers",
    "of_file",
    "report",
    "check_energies",
    "check_particle",
    "carry_geometry",
    "check_data_geometry",
    "RemembersDomain",
]
