"""Generating showers: the CaloFlow pipeline (paper section 4.3), the CaloGAN sampler, incident energies.

E_inc -> Flow I -> inverse u-transform -> (E_0 .. E_{L-1}) -> Flow II -> inverse logit ->
renormalise each layer -> scale by E_i -> 10 keV threshold. Both inverse steps are the preprocessing
objects the flows were trained with (:mod:`caloflow.transforms`). A shower that comes out
non-finite is drawn again (and counted), so no NaN or inf reaches a file. The detector is the
models' (``geometry``, saved in their checkpoints); the two flows must agree on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from caloflow.checkpoints import checkpoint_model_mismatch, read_checkpoint
from caloflow.data.io import Showers, ShowerWriter, count_showers, iter_showers
from caloflow.domain import Domain
from caloflow.errors import CaloflowError
from caloflow.geometry import Geometry

log = logging.getLogger("caloflow")


def _load_checkpoint(cls, path, option: str, map_location="cpu"):
    path = Path(path)
    if not path.is_file():
        raise CaloflowError(f"{option} {path}: no such checkpoint file")
    # a file that is not a checkpoint, or one of another model, is named as such before loading
    mismatch = checkpoint_model_mismatch(read_checkpoint(path, option), cls)
    if mismatch:
        raise CaloflowError(f"{option} {path}: {mismatch}")
    try:
        model = cls.load_from_checkpoint(str(path), map_location=map_location).eval()
    except Exception as e:  # torch.load and Lightning raise many types for a wrong file
        raise CaloflowError(
            f"{option} {path}: cannot load a {cls.__name__} checkpoint from it ({type(e).__name__})"
        ) from None
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise CaloflowError(
            f"{option} {path}: the weights are not finite (NaN or inf): the model is broken"
        )
    return model


def redraw_nonfinite(
    draw: Callable[[Tensor], Tensor], energies: Tensor, max_rounds: int = 10
) -> tuple[Tensor, int]:
    """Call ``draw(energies)`` and draw again the rows that are not finite; returns (samples, redraws)."""
    out = draw(energies)
    redraws = 0
    for _ in range(max_rounds):
        bad = ~torch.isfinite(out).all(dim=1)
        if not bad.any():
            return out, redraws
        redraws += int(bad.sum())
        out[bad] = draw(energies[bad])
    if not torch.isfinite(out).all():
        raise CaloflowError(
            f"{int((~torch.isfinite(out).all(1)).sum())} showers stayed non-finite after "
            f"{max_rounds} redraws: the model is broken"
        )
    return out, redraws


def _energy_batches(energies_gev, batch_size: int):
    """The incident energies (GeV) in batches of ``batch_size`` (the last one shorter): (float32
    tensor for the model, the energies as given for the file; a CaloChallenge file's float64
    energies are written back exactly)."""
    if isinstance(energies_gev, IncidentEnergies):
        for batch in energies_gev.batches(batch_size):
            yield torch.as_tensor(batch, dtype=torch.float32), batch
        return
    for chunk in energies_gev.split(batch_size):
        yield chunk, chunk.numpy()


def sample_in_batches(
    draw: Callable[[Tensor], tuple[Tensor, int]],
    energies_gev,
    batch_size: int,
    progress: bool = False,
    out: ShowerWriter | None = None,
    *,
    geometry: Geometry,
) -> tuple[Showers | None, int]:
    """Run ``draw(chunk) -> (voxels (n, V) MeV, redraws)`` over the incident energies (GeV) in batches.

    ``energies_gev`` is an array or an :class:`IncidentEnergies` (read or drawn batch by batch).
    Returns the showers and the number of non-finite showers that were drawn again (logged). With
    ``out`` (an open :class:`caloflow.data.io.ShowerWriter`) each batch is appended to it as soon as
    it is drawn and nothing is kept: memory does not grow with the number of showers, and the
    showers returned are ``None``. The batches, and so the showers, are the same either way.
    ``geometry`` is the generator's detector (V = ``geometry.n_voxels``): the showers returned
    carry it, and ``out`` must be a writer of the same geometry.

    Raises:
        CaloflowError: ``out`` writes another geometry (checked before any shower is drawn).
    """
    if out is not None and out.geometry != geometry:
        raise CaloflowError(
            f"{out.path}: the file is written in the {out.geometry.name} geometry but the model "
            f"generates {geometry.name} showers"
        )
    if not isinstance(energies_gev, IncidentEnergies):
        energies_gev = torch.as_tensor(np.asarray(energies_gev), dtype=torch.float32).reshape(-1)
    parts, energies, redraws = [], [], 0
    with tqdm(total=len(energies_gev), unit="shower", desc="generate", disable=not progress) as bar:
        for chunk, given in _energy_batches(energies_gev, batch_size):
            voxels, n = draw(chunk)
            if out is not None:
                out.append(voxels.cpu().numpy(), given)
            else:
                parts.append(voxels.cpu().numpy())
                energies.append(given)
            redraws += n
            bar.update(len(chunk))
    if redraws:
        log.warning("caloflow: %d non-finite showers were drawn again", redraws)
    if out is not None:
        return None, redraws
    voxels = np.concatenate(parts) if parts else np.zeros((0, geometry.n_voxels), np.float32)
    energy = np.concatenate(energies) if energies else np.zeros(0, np.float32)
    return Showers(voxels, energy, geometry=geometry), redraws


class CaloFlow:
    """The two flows chained for generation.

    Args:
        flow1: a trained :class:`caloflow.models.FlowI`.
        flow2: a trained :class:`caloflow.models.FlowII` of the same geometry.

    Raises:
        CaloflowError: the two flows are built for different geometries.
    """

    def __init__(self, flow1, flow2):
        if flow1.geometry != flow2.geometry:
            raise CaloflowError(
                f"Flow I is built for the {flow1.geometry.name} geometry and Flow II for "
                f"{flow2.geometry.name}: both flows must be trained on the same detector"
            )
        self.flow1 = flow1.eval()
        self.flow2 = flow2.eval()

    @property
    def geometry(self) -> Geometry:
        """The detector of both flows."""
        return self.flow2.geometry

    @property
    def domain(self) -> Domain:
        """What Flow I was trained on (it decides the energies Flow II is asked for)."""
        return self.flow1.domain

    @classmethod
    def load(cls, flow1_ckpt, flow2_ckpt, device: str = "cpu") -> "CaloFlow":
        """Load both flows from their Lightning checkpoints."""
        from caloflow.models.flows import FlowI, FlowII

        return cls(
            _load_checkpoint(FlowI, flow1_ckpt, "--flow1").to(device),
            _load_checkpoint(FlowII, flow2_ckpt, "--flow2").to(device),
        )

    @torch.no_grad()
    def sample_batch(
        self,
        energies_gev: Tensor,
        generator: torch.Generator | None = None,
        fast: bool = True,
        threshold: bool = True,
    ) -> tuple[Tensor, Tensor, int]:
        """One shower per incident energy (GeV): (voxels (N, V) MeV, layer energies (N, L) MeV, redraws)."""
        energies_gev = torch.as_tensor(energies_gev, dtype=torch.float32).reshape(-1)
        layer_energies, n1 = redraw_nonfinite(
            lambda e: self.flow1.sample(e, generator), energies_gev
        )
        joint = torch.cat([energies_gev.to(layer_energies.device)[:, None], layer_energies], dim=1)

        def draw(rows: Tensor) -> Tensor:
            return self.flow2.sample(
                rows[:, 0], rows[:, 1:], generator, fast=fast, threshold=threshold
            )

        voxels, n2 = redraw_nonfinite(draw, joint)
        return voxels, layer_energies, n1 + n2

    def sample(
        self,
        energies_gev,
        generator: torch.Generator | None = None,
        batch_size: int = 10_000,
        fast: bool = True,
        progress: bool = False,
        out: ShowerWriter | None = None,
    ) -> Showers | None:
        """Generate one shower per incident energy (GeV), in batches; returns :class:`Showers` in MeV.

        With ``out`` (an open :class:`caloflow.data.io.ShowerWriter`) the showers are appended to it
        batch by batch instead (see :func:`sample_in_batches`) and ``None`` is returned.
        """

        def draw(chunk: Tensor) -> tuple[Tensor, int]:
            voxels, _, redraws = self.sample_batch(chunk, generator, fast=fast)
            return voxels, redraws

        showers, self.redraws = sample_in_batches(
            draw, energies_gev, batch_size, progress, out=out, geometry=self.geometry
        )
        return showers


class CaloGANSampler:
    """Adapter giving the CaloGAN baseline the same ``sample`` interface as :class:`CaloFlow`."""

    def __init__(self, model):
        self.model = model.eval()

    @property
    def domain(self) -> Domain:
        return self.model.domain

    @property
    def geometry(self) -> Geometry:
        """The detector of the model (the CaloGAN baseline knows only CaloGAN)."""
        return self.model.geometry

    @classmethod
    def load(cls, ckpt, device: str = "cpu") -> "CaloGANSampler":
        from caloflow.models.calogan import CaloGAN

        return cls(_load_checkpoint(CaloGAN, ckpt, "--calogan").to(device))

    @torch.no_grad()
    def sample(
        self,
        energies_gev,
        generator=None,
        batch_size: int = 10_000,
        fast: bool = True,
        progress=False,
        out: ShowerWriter | None = None,
    ) -> Showers | None:
        def draw(chunk: Tensor) -> tuple[Tensor, int]:
            return redraw_nonfinite(lambda e: self.model.sample(e, generator), chunk)

        showers, self.redraws = sample_in_batches(
            draw, energies_gev, batch_size, progress, out=out, geometry=self.geometry
        )
        return showers


class IncidentEnergies:
    """The incident energies (GeV) of a generation run, produced batch by batch.

    The given ``values``; else the first ``n`` of ``energies_file`` (all if ``n`` is None), read
    and validated in blocks of :attr:`READ_ROWS` showers (float64 for a CaloChallenge file, whose
    MeV energies then come back exactly when written, float32 for a CaloGAN file); or ``n``
    float32 uniform draws in ``energy_range`` from ``numpy.random.default_rng(seed)``, drawn in
    blocks (the same numbers as one draw of ``n``). Only the file's row count is read at
    construction; :meth:`batches` streams the energies, and ``numpy.asarray(energies)`` gives them
    all at once.

    Raises:
        CaloflowError: no ``n`` and no file, a file with no showers or fewer than ``n``.
        DataFormatError: the file is not a valid shower file (when counting, or in the block read).
    """

    READ_ROWS = 8192
    DRAW_ROWS = 1 << 16

    def __init__(
        self,
        n: int | None,
        energies_file: str | None,
        energy_range,
        seed: int,
        values: np.ndarray | None = None,
    ):
        self.file, self.energy_range, self.seed = energies_file, energy_range, seed
        self.values = None if values is None else np.asarray(values).reshape(-1)
        if self.values is not None:
            self.n = len(self.values)
        elif energies_file is not None:
            available = count_showers(energies_file)
            if available == 0:
                raise CaloflowError(f"--energies {energies_file}: holds no showers")
            if n is not None and available < n:
                raise CaloflowError(
                    f"--energies {energies_file}: has {available} showers, fewer than --n {n}"
                )
            self.n = available if n is None else int(n)
        elif n is None:
            raise CaloflowError("--n is required unless --energies is given")
        else:
            self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def _blocks(self):
        if self.values is not None:
            yield self.values
            return
        if self.file is not None:
            for showers in iter_showers(self.file, self.READ_ROWS, stop=self.n):
                yield showers.energy
            return
        rng = np.random.default_rng(self.seed)
        lo, hi = self.energy_range
        for start in range(0, self.n, self.DRAW_ROWS):
            yield rng.uniform(lo, hi, size=min(self.DRAW_ROWS, self.n - start)).astype(np.float32)

    def batches(self, batch_size: int):
        """float32 arrays of ``batch_size`` energies (the last one shorter), in order."""
        buffer = np.zeros(0, np.float32)
        for block in self._blocks():
            buffer = np.concatenate([buffer, block]) if len(buffer) else block
            start = 0
            while len(buffer) - start >= batch_size:
                yield buffer[start : start + batch_size]
                start += batch_size
            buffer = buffer[start:]
        if len(buffer):
            yield buffer

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        energies = np.concatenate(list(self._blocks()))
        return energies if dtype is None else energies.astype(dtype)


def requested_energies(
    n: int | None, energies_file: str | None, energy_range, seed: int
) -> np.ndarray:
    """Incident energies (GeV): the first ``n`` of ``energies_file`` (all if n is None), or ``n`` uniform draws."""
    return np.asarray(IncidentEnergies(n, energies_file, energy_range, seed))


__all__ = [
    "redraw_nonfinite",
    "sample_in_batches",
    "CaloFlow",
    "CaloGANSampler",
    "IncidentEnergies",
    "requested_energies",
]
