"""Generating showers: the CaloFlow pipeline (paper section 4.3) and ``caloflow generate``.

E_inc -> Flow I -> inverse u-transform -> (E0, E1, E2) -> Flow II -> inverse logit -> renormalise
each layer -> scale by E_i -> 10 keV threshold. Both inverse steps are the preprocessing objects
the flows were trained with (:mod:`caloflow.transforms`). A shower that comes out non-finite is
drawn again (and counted), so no NaN or inf reaches a file.
"""
from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from caloflow.data.geometry import N_VOXELS
from caloflow.data.io import Showers, read_showers, write_showers
from caloflow.errors import CaloflowError

log = logging.getLogger("caloflow")


def _load_checkpoint(cls, path, option: str, map_location="cpu"):
    path = Path(path)
    if not path.is_file():
        raise CaloflowError(f"{option} {path}: no such checkpoint file")
    try:
        return cls.load_from_checkpoint(str(path), map_location=map_location).eval()
    except Exception as e:  # torch.load and Lightning raise many types for a wrong file
        raise CaloflowError(f"{option} {path}: cannot load a {cls.__name__} checkpoint from it ({type(e).__name__})") from None


def redraw_nonfinite(draw: Callable[[Tensor], Tensor], energies: Tensor, max_rounds: int = 10) -> tuple[Tensor, int]:
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
        raise CaloflowError(f"{int((~torch.isfinite(out).all(1)).sum())} showers stayed non-finite after "
                            f"{max_rounds} redraws: the model is broken")
    return out, redraws


def sample_in_batches(
    draw: Callable[[Tensor], tuple[Tensor, int]], energies_gev, batch_size: int, progress: bool = False
) -> tuple[Showers, int]:
    """Run ``draw(chunk) -> (voxels (n, 504) MeV, redraws)`` over the incident energies (GeV) in batches.

    Returns the showers and the number of non-finite showers that were drawn again (logged).
    """
    energies = torch.as_tensor(np.asarray(energies_gev), dtype=torch.float32).reshape(-1)
    parts, redraws = [], 0
    with tqdm(total=len(energies), unit="shower", desc="generate", disable=not progress) as bar:
        for chunk in energies.split(batch_size):
            voxels, n = draw(chunk)
            parts.append(voxels.cpu().numpy())
            redraws += n
            bar.update(len(chunk))
    if redraws:
        log.warning("caloflow: %d non-finite showers were drawn again", redraws)
    voxels = np.concatenate(parts) if parts else np.zeros((0, N_VOXELS), np.float32)
    return Showers(voxels, energies.numpy()), redraws


class CaloFlow:
    """The two flows chained for generation.

    Args:
        flow1: a trained :class:`caloflow.models.FlowI`.
        flow2: a trained :class:`caloflow.models.FlowII`.
    """

    def __init__(self, flow1, flow2):
        self.flow1 = flow1.eval()
        self.flow2 = flow2.eval()

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
        self, energies_gev: Tensor, generator: torch.Generator | None = None, fast: bool = True, threshold: bool = True
    ) -> tuple[Tensor, Tensor, int]:
        """One shower per incident energy (GeV): (voxels (N, 504) MeV, layer energies (N, 3) MeV, redraws)."""
        energies_gev = torch.as_tensor(energies_gev, dtype=torch.float32).reshape(-1)
        layer_energies, n1 = redraw_nonfinite(lambda e: self.flow1.sample(e, generator), energies_gev)
        joint = torch.cat([energies_gev.to(layer_energies.device)[:, None], layer_energies], dim=1)

        def draw(rows: Tensor) -> Tensor:
            return self.flow2.sample(rows[:, 0], rows[:, 1:], generator, fast=fast, threshold=threshold)

        voxels, n2 = redraw_nonfinite(draw, joint)
        return voxels, layer_energies, n1 + n2

    def sample(
        self,
        energies_gev,
        generator: torch.Generator | None = None,
        batch_size: int = 10_000,
        fast: bool = True,
        progress: bool = False,
    ) -> Showers:
        """Generate one shower per incident energy (GeV), in batches; returns :class:`Showers` in MeV."""

        def draw(chunk: Tensor) -> tuple[Tensor, int]:
            voxels, _, redraws = self.sample_batch(chunk, generator, fast=fast)
            return voxels, redraws

        showers, self.redraws = sample_in_batches(draw, energies_gev, batch_size, progress)
        return showers


class CaloGANSampler:
    """Adapter giving the CaloGAN baseline the same ``sample`` interface as :class:`CaloFlow`."""

    def __init__(self, model):
        self.model = model.eval()

    @classmethod
    def load(cls, ckpt, device: str = "cpu") -> "CaloGANSampler":
        from caloflow.models.calogan import CaloGAN

        return cls(_load_checkpoint(CaloGAN, ckpt, "--calogan").to(device))

    @torch.no_grad()
    def sample(self, energies_gev, generator=None, batch_size: int = 10_000, fast: bool = True, progress=False) -> Showers:
        def draw(chunk: Tensor) -> tuple[Tensor, int]:
            return redraw_nonfinite(lambda e: self.model.sample(e, generator), chunk)

        showers, self.redraws = sample_in_batches(draw, energies_gev, batch_size, progress)
        return showers


def requested_energies(n: int | None, energies_file: str | None, energy_range, seed: int) -> np.ndarray:
    """Incident energies (GeV): the first ``n`` of ``energies_file`` (all if n is None), or ``n`` uniform draws."""
    if energies_file is not None:
        energies = read_showers(energies_file, stop=n).energy
        if n is not None and len(energies) < n:
            raise CaloflowError(f"--energies {energies_file}: has {len(energies)} showers, fewer than --n {n}")
        return energies
    if n is None:
        raise CaloflowError("--n is required unless --energies is given")
    lo, hi = energy_range
    return np.random.default_rng(seed).uniform(lo, hi, size=n).astype(np.float32)


# ------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from caloflow import cli_args

    model = parser.add_argument_group("model (CaloFlow: --flow1 and --flow2; or --calogan)")
    model.add_argument("--flow1", help="Flow I checkpoint (.ckpt)")
    model.add_argument("--flow2", help="Flow II checkpoint (.ckpt)")
    model.add_argument("--calogan", help="CaloGAN checkpoint (.ckpt)")
    parser.add_argument("--n", type=cli_args.positive_int,
                        help="number of showers (default: all energies of --energies)")
    parser.add_argument("--energies", type=cli_args.existing_file, help="CaloGAN file whose incident energies are used")
    parser.add_argument("--energy-range", nargs=2, type=cli_args.positive_float, default=(1.0, 100.0),
                        metavar=("LOW", "HIGH"),
                        help="uniform incident-energy range in GeV when --energies is not given (default 1 100)")
    parser.add_argument("--batch-size", type=cli_args.positive_int, default=10_000,
                        help="showers per batch (default 10000)")
    parser.add_argument("--no-fast", dest="fast", action="store_false",
                        help="sample Flow II with nflows' own inverse instead of the exact fast inverse")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--seed", type=cli_args.seed, default=0, help="random seed (default 0)")
    parser.add_argument("--out", required=True, type=cli_args.output_file, help="output CaloGAN HDF5 file")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.calogan and (args.flow1 or args.flow2):
        raise CaloflowError("give either --calogan or --flow1/--flow2, not both")
    if not args.calogan and not (args.flow1 and args.flow2):
        raise CaloflowError("--flow1 and --flow2 are both required (or --calogan)")
    lo, hi = args.energy_range
    if not lo <= hi:
        raise CaloflowError(f"--energy-range needs 0 < LOW <= HIGH, got {lo:g} {hi:g}")
    torch.manual_seed(args.seed)
    energies = requested_energies(args.n, args.energies, (lo, hi), args.seed)
    if args.calogan:
        sampler, name = CaloGANSampler.load(args.calogan, args.device), "calogan"
    else:
        sampler, name = CaloFlow.load(args.flow1, args.flow2, args.device), "caloflow"
    generator = torch.Generator().manual_seed(args.seed)
    showers = sampler.sample(energies, generator, batch_size=args.batch_size, fast=args.fast, progress=args.progress)
    redraws = getattr(sampler, "redraws", 0)
    attrs = {"generator": name, "seed": args.seed, "fast_sampling": bool(args.fast), "redrawn_nonfinite": redraws}
    out = write_showers(args.out, showers, attrs=attrs)
    print(f"caloflow generate: wrote {len(showers)} {name} showers to {out} ({redraws} non-finite showers redrawn)")
    return 0
