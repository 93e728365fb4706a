"""Generating showers: the CaloFlow pipeline (paper section 4.3) and ``caloflow generate``.

E_inc -> Flow I -> inverse u-transform -> (E0, E1, E2) -> Flow II -> inverse logit -> renormalise
each layer -> scale by E_i -> 10 keV threshold. Both inverse steps are the preprocessing objects
the flows were trained with (:mod:`caloflow.transforms`). A shower that comes out non-finite is
drawn again (and counted), so no NaN or inf reaches a file.

``--refiner R.ckpt`` (a LaSeR refiner written by ``python -m refine.laser --flow1 ...``, for these
very checkpoints, checked by sha256): the latent points y are drawn per batch exactly as without a
refiner, mapped to Phi(y, E_inc) and decoded (:mod:`refine.shower_refiner`).
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
from caloflow.data.io import Showers, ShowerWriter, check_disk_space, count_showers, iter_showers
from caloflow.domain import Domain, check_energies, check_particle, of_file
from caloflow.errors import CaloflowError

log = logging.getLogger("caloflow")


def _load_checkpoint(cls, path, option: str, map_location="cpu"):
    path = Path(path)
    if not path.is_file():
        raise CaloflowError(f"{option} {path}: no such checkpoint file")
    from caloflow.lightning_cli import checkpoint_model_mismatch, read_checkpoint

    # a file that is not a checkpoint, or one of another model, is named as such before loading
    mismatch = checkpoint_model_mismatch(read_checkpoint(path, option), cls)
    if mismatch:
        raise CaloflowError(f"{option} {path}: {mismatch}")
    try:
        model = cls.load_from_checkpoint(str(path), map_location=map_location).eval()
    except Exception as e:  # torch.load and Lightning raise many types for a wrong file
        raise CaloflowError(f"{option} {path}: cannot load a {cls.__name__} checkpoint from it ({type(e).__name__})") from None
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise CaloflowError(f"{option} {path}: the weights are not finite (NaN or inf): the model is broken")
    return model


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


def _energy_batches(energies_gev, batch_size: int):
    """The incident energies (GeV) as float32 tensors of ``batch_size`` (the last one shorter)."""
    if isinstance(energies_gev, IncidentEnergies):
        for batch in energies_gev.batches(batch_size):
            yield torch.as_tensor(batch, dtype=torch.float32)
        return
    yield from energies_gev.split(batch_size)


def sample_in_batches(
    draw: Callable[[Tensor], tuple[Tensor, int]], energies_gev, batch_size: int, progress: bool = False,
    out: ShowerWriter | None = None,
) -> tuple[Showers | None, int]:
    """Run ``draw(chunk) -> (voxels (n, 504) MeV, redraws)`` over the incident energies (GeV) in batches.

    ``energies_gev`` is an array or an :class:`IncidentEnergies` (read or drawn batch by batch).
    Returns the showers and the number of non-finite showers that were drawn again (logged). With
    ``out`` (an open :class:`caloflow.data.io.ShowerWriter`) each batch is appended to it as soon as
    it is drawn and nothing is kept: memory does not grow with the number of showers, and the
    showers returned are ``None``. The batches, and so the showers, are the same either way.
    """
    if not isinstance(energies_gev, IncidentEnergies):
        energies_gev = torch.as_tensor(np.asarray(energies_gev), dtype=torch.float32).reshape(-1)
    parts, energies, redraws = [], [], 0
    with tqdm(total=len(energies_gev), unit="shower", desc="generate", disable=not progress) as bar:
        for chunk in _energy_batches(energies_gev, batch_size):
            voxels, n = draw(chunk)
            if out is not None:
                out.append(voxels.cpu().numpy(), chunk.numpy())
            else:
                parts.append(voxels.cpu().numpy())
                energies.append(chunk.numpy())
            redraws += n
            bar.update(len(chunk))
    if redraws:
        log.warning("caloflow: %d non-finite showers were drawn again", redraws)
    if out is not None:
        return None, redraws
    voxels = np.concatenate(parts) if parts else np.zeros((0, N_VOXELS), np.float32)
    return Showers(voxels, np.concatenate(energies) if energies else np.zeros(0, np.float32)), redraws


class CaloFlow:
    """The two flows chained for generation.

    Args:
        flow1: a trained :class:`caloflow.models.FlowI`.
        flow2: a trained :class:`caloflow.models.FlowII`.
    """

    def __init__(self, flow1, flow2):
        self.flow1 = flow1.eval()
        self.flow2 = flow2.eval()

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
        out: ShowerWriter | None = None,
    ) -> Showers | None:
        """Generate one shower per incident energy (GeV), in batches; returns :class:`Showers` in MeV.

        With ``out`` (an open :class:`caloflow.data.io.ShowerWriter`) the showers are appended to it
        batch by batch instead (see :func:`sample_in_batches`) and ``None`` is returned.
        """

        def draw(chunk: Tensor) -> tuple[Tensor, int]:
            voxels, _, redraws = self.sample_batch(chunk, generator, fast=fast)
            return voxels, redraws

        showers, self.redraws = sample_in_batches(draw, energies_gev, batch_size, progress, out=out)
        return showers


class CaloGANSampler:
    """Adapter giving the CaloGAN baseline the same ``sample`` interface as :class:`CaloFlow`."""

    def __init__(self, model):
        self.model = model.eval()

    @property
    def domain(self) -> Domain:
        return self.model.domain

    @classmethod
    def load(cls, ckpt, device: str = "cpu") -> "CaloGANSampler":
        from caloflow.models.calogan import CaloGAN

        return cls(_load_checkpoint(CaloGAN, ckpt, "--calogan").to(device))

    @torch.no_grad()
    def sample(self, energies_gev, generator=None, batch_size: int = 10_000, fast: bool = True, progress=False,
               out: ShowerWriter | None = None) -> Showers | None:
        def draw(chunk: Tensor) -> tuple[Tensor, int]:
            return redraw_nonfinite(lambda e: self.model.sample(e, generator), chunk)

        showers, self.redraws = sample_in_batches(draw, energies_gev, batch_size, progress, out=out)
        return showers


class IncidentEnergies:
    """The incident energies (GeV, float32) of a generation run, produced batch by batch.

    The first ``n`` of ``energies_file`` (all if ``n`` is None), read and validated in blocks of
    :attr:`READ_ROWS` showers, or ``n`` uniform draws in ``energy_range`` from
    ``numpy.random.default_rng(seed)``, drawn in blocks (the same numbers as one draw of ``n``).
    Only the file's row count is read at construction; :meth:`batches` streams the energies, and
    ``numpy.asarray(energies)`` gives them all at once (4 bytes per shower).

    Raises:
        CaloflowError: no ``n`` and no file, a file with no showers or fewer than ``n``.
        DataFormatError: the file is not a valid CaloGAN file (when counting, or in the block read).
    """

    READ_ROWS = 8192
    DRAW_ROWS = 1 << 16

    def __init__(self, n: int | None, energies_file: str | None, energy_range, seed: int):
        self.file, self.energy_range, self.seed = energies_file, energy_range, seed
        if energies_file is not None:
            available = count_showers(energies_file)
            if available == 0:
                raise CaloflowError(f"--energies {energies_file}: holds no showers")
            if n is not None and available < n:
                raise CaloflowError(f"--energies {energies_file}: has {available} showers, fewer than --n {n}")
            self.n = available if n is None else int(n)
        elif n is None:
            raise CaloflowError("--n is required unless --energies is given")
        else:
            self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def _blocks(self):
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


def requested_energies(n: int | None, energies_file: str | None, energy_range, seed: int) -> np.ndarray:
    """Incident energies (GeV): the first ``n`` of ``energies_file`` (all if n is None), or ``n`` uniform draws."""
    return np.asarray(IncidentEnergies(n, energies_file, energy_range, seed))


# ------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    from caloflow import cli_args

    model = parser.add_argument_group("model (CaloFlow: --flow1 and --flow2; or --calogan)")
    model.add_argument("--flow1", help="Flow I checkpoint (.ckpt)")
    model.add_argument("--flow2", help="Flow II checkpoint (.ckpt)")
    model.add_argument("--calogan", help="CaloGAN checkpoint (.ckpt)")
    model.add_argument("--refiner", type=cli_args.existing_file,
                       help="LaSeR refiner checkpoint (refiner.ckpt of python -m refine.laser) trained for these "
                            "checkpoints: showers g(Phi(y, E_inc)) with y drawn as without it")
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
    parser.add_argument("--device", type=cli_args.device, default="cpu",
                        help="torch device that this machine has: cpu, cuda, cuda:N (default cpu)")
    parser.add_argument("--seed", type=cli_args.seed, default=0, help="random seed (default 0)")
    parser.add_argument("--out", required=True, type=cli_args.output_file, help="output CaloGAN HDF5 file")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    parser.add_argument("--strict", action="store_true",
                        help="refuse (instead of warning) energies or a particle outside what the model was trained on")


def run(args: argparse.Namespace) -> int:
    if args.calogan and (args.flow1 or args.flow2):
        raise CaloflowError("give either --calogan or --flow1/--flow2, not both")
    if not args.calogan and not (args.flow1 and args.flow2):
        raise CaloflowError("--flow1 and --flow2 are both required (or --calogan)")
    lo, hi = args.energy_range
    if not lo <= hi:
        raise CaloflowError(f"--energy-range needs 0 < LOW <= HIGH, got {lo:g} {hi:g}")
    torch.manual_seed(args.seed)
    energies = IncidentEnergies(args.n, args.energies, (lo, hi), args.seed)  # counted, not read yet
    check_output(args, len(energies))
    refiner = _check_refiner(args)
    if args.calogan:
        sampler, name = CaloGANSampler.load(args.calogan, args.device), "calogan"
    else:
        sampler, name = CaloFlow.load(args.flow1, args.flow2, args.device), "caloflow"
    attrs = {"generator": name, "seed": args.seed, "fast_sampling": bool(args.fast),
             "training_domain": sampler.domain.to_json()}
    if refiner is not None:
        from refine.shower_refiner import RefinedSampler

        sampler = RefinedSampler(sampler, refiner)
        attrs.update(refiner=str(args.refiner), batch_size=args.batch_size)
    check_domain(sampler.domain, energies, args)
    generator = torch.Generator().manual_seed(args.seed)
    # batch by batch into the file: memory does not grow with --n; the file appears only when complete
    with ShowerWriter(args.out, attrs=attrs, expected_rows=len(energies)) as out:
        sampler.sample(energies, generator, batch_size=args.batch_size, fast=args.fast, progress=args.progress,
                       out=out)
        redraws = getattr(sampler, "redraws", 0)
        out.attrs["redrawn_nonfinite"] = redraws
    print(f"caloflow generate: wrote {out.n} {name} showers to {out.path} ({redraws} non-finite showers redrawn)")
    return 0


def _check_refiner(args: argparse.Namespace):
    """The ``--refiner`` (None without one), refused in one line unless it was trained for the given
    checkpoints (sha256)."""
    if not getattr(args, "refiner", None):
        return None
    from refine.shower_refiner import load_refiner

    checkpoints = {"calogan": args.calogan} if args.calogan else {"flow1": args.flow1, "flow2": args.flow2}
    return load_refiner(args.refiner, "--refiner", checkpoints)[0]


def check_output(args: argparse.Namespace, n: int) -> None:
    """Refuse, before any work, an --out that is one of the inputs or whose showers would not fit on its disk."""
    from caloflow import cli_args

    cli_args.check_not_an_input(args.out, {"--energies": args.energies, "--flow1": args.flow1,
                                           "--flow2": args.flow2, "--calogan": args.calogan,
                                           "--refiner": getattr(args, "refiner", None)})
    check_disk_space(args.out, n, f"--n {args.n}" if args.n is not None else f"--energies {args.energies} ({n} showers)")


def check_domain(domain: Domain, energies_gev, args: argparse.Namespace) -> None:
    """Warn in one line (refuse with ``--strict``) before generating outside the model's training domain."""
    what = f"--energies {args.energies}" if args.energies else f"--energy-range {args.energy_range[0]:g} " \
                                                                f"{args.energy_range[1]:g}"
    check_energies(domain, energies_gev, what, args.strict)
    if args.energies:
        check_particle(domain, of_file(args.energies), f"--energies {args.energies}", args.strict)
