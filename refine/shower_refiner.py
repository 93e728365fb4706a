"""The LaSeR refiner of a shower model: its checkpoint, and generation with it (``caloflow generate --refiner``).

A shower model g(z | E_inc) (:class:`refine.showers.CaloFlowGenerator`, z in R^(L + V), or
:class:`refine.showers.CaloGANGenerator`) is refined by a conditional refiner Phi(y, E_inc), c(E_inc)
= log10(E_inc / 10 GeV) (CaloFlow eq. 4.4): the weighted GAN Phi(y, E_inc) = y + MLP([y, c(E_inc)])
(:class:`refine.gan.WeightedGANRefiner` with ``residual``, ``context_dim = 1`` and aux_dim = latent
dim) or the flow trained by weighted maximum likelihood (:class:`refine.flow_refiner.WeightedFlowRefiner`,
``context_dim = 1``); the checkpoint records which (``refiner_class`` of its ``laser`` entry).
A refined shower is g(Phi(y, E_inc) | E_inc), with y ~ N(0, I) drawn exactly as the unrefined
model draws its latent points (:meth:`CaloFlowGenerator.sample_latent`: z_I (n, L) then z_II
(n, V) per batch of ``caloflow generate``; L layers and V voxels of the flows' geometry), so for
a seed and a batch size the refined and the unrefined showers of one energy file share their y.

The checkpoint (``refiner.ckpt``, written by ``python -m refine.laser --flow1 ...``) is a Lightning
checkpoint of the refiner (``state_dict``, ``hyper_parameters``) with a ``laser`` entry: the
generator kind (``caloflow`` or ``calogan``), the latent dimension, the context, and the sha256 of
the generator checkpoints it was trained for; generation with other checkpoints is refused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from caloflow.errors import CaloflowError
from caloflow.transforms import encode_incident_energy
from refine.flow_refiner import WeightedFlowRefiner
from refine.gan import WeightedGANRefiner

#: the checkpoint entry that describes what a refiner was trained for
CHECKPOINT_KEY = "laser"
#: the refiner's condition, as recorded in its checkpoint
CONTEXT = "log10(E_inc / 10 GeV)"
#: the checkpoints of each generator kind, by option name
CHECKPOINT_NAMES = {"caloflow": ("flow1", "flow2"), "calogan": ("calogan",)}
#: the refiners a checkpoint may hold, by class path (``refiner_class`` of its ``laser`` entry; a
#: checkpoint without it holds the weighted GAN, the only refiner before the flow)
REFINER_CLASSES = {
    f"{c.__module__}.{c.__qualname__}": c for c in (WeightedGANRefiner, WeightedFlowRefiner)
}
Refiner = WeightedGANRefiner | WeightedFlowRefiner


def incident_context(incident_gev: Tensor) -> Tensor:
    """The refiner's condition c(E_inc) = log10(E_inc / 10 GeV) (CaloFlow eq. 4.4): (n,) GeV -> (n, 1) float32."""
    return encode_incident_energy(torch.as_tensor(incident_gev, dtype=torch.float64)).to(
        torch.float32
    )


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@torch.no_grad()
def draw_latent_showers(
    g,
    energies: Tensor,
    generator: torch.Generator | None = None,
    phi: Callable[[Tensor, Tensor], Tensor] | None = None,
    max_rounds: int = 10,
) -> tuple[Tensor, Tensor, Tensor, int]:
    """One shower per incident energy (GeV) from latent draws: y ~ N(0, I) (``g.sample_latent``),
    z = phi(y, E) (z = y without ``phi``), x = g(z | E) (MeV), graph-free.

    Rows whose shower is not finite are drawn again (new y for those rows, in order), at most
    ``max_rounds`` times. Returns ``(y, z, x, redraws)``.
    """
    energies = torch.as_tensor(energies, dtype=torch.float32).reshape(-1)

    def draw(e: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        y = g.sample_latent(len(e), generator)
        z = y if phi is None else phi(y, e)
        return y, z, g.decode(z, e)

    y, z, x = draw(energies)
    redraws = 0
    for _ in range(max_rounds):
        bad = ~torch.isfinite(x).all(dim=1)
        if not bad.any():
            return y, z, x, redraws
        redraws += int(bad.sum())
        y[bad], z[bad], x[bad] = draw(energies[bad.cpu()])
    raise CaloflowError(
        f"{int((~torch.isfinite(x).all(1)).sum())} showers stayed non-finite after {max_rounds} "
        "redraws: the model is broken"
    )


def save_refiner(
    path: str | Path,
    refiner: Refiner,
    generator: str,
    checkpoints: dict[str, str],
    **extra: Any,
) -> Path:
    """Write ``refiner`` as a Lightning checkpoint with its ``laser`` entry (atomically).

    Args:
        generator: ``caloflow`` or ``calogan``.
        checkpoints: the generator's checkpoint files by name (``flow1``, ``flow2`` or ``calogan``);
            their sha256 is recorded.
        extra: further plain values recorded in the entry (seed, batch size, ...).
    """
    import lightning as L

    from caloflow.atomic import atomic_output

    entry = {
        "generator": generator,
        "latent_dim": int(refiner.hparams.latent_dim),
        "refiner_class": f"{type(refiner).__module__}.{type(refiner).__qualname__}",
        "context": CONTEXT,
        "checkpoints_sha256": {name: file_sha256(p) for name, p in checkpoints.items()},
        **extra,
    }
    state = {
        "state_dict": {k: v.detach().cpu().clone() for k, v in refiner.state_dict().items()},
        "hyper_parameters": dict(refiner.hparams),
        "pytorch-lightning_version": L.__version__,
        CHECKPOINT_KEY: entry,
    }
    with atomic_output(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def _check_trained_for(entry: dict, checkpoints: dict[str, str], where: str) -> None:
    """Refuse, in one line, generator checkpoints other than those the refiner was trained for (by sha256)."""
    shas = entry.get("checkpoints_sha256") or {}
    kind = entry.get("generator")
    if set(shas) != set(checkpoints):
        given = "/".join(f"--{n}" for n in checkpoints)
        raise CaloflowError(
            f"{where}: a refiner of {kind} (trained for {', '.join(sorted(shas)) or 'nothing'}), "
            f"not for {given}"
        )
    for name, path in checkpoints.items():
        if not Path(path).is_file():
            raise CaloflowError(f"--{name} {path}: no such checkpoint file")
        sha = file_sha256(path)
        if sha != shas[name]:
            raise CaloflowError(
                f"{where}: trained for a --{name} checkpoint with sha256 {shas[name][:12]}..., but "
                f"--{name} {path} has sha256 {sha[:12]}...; refusing to refine another model"
            )


def load_refiner(
    path: str | Path, option: str = "--refiner", checkpoints: dict[str, str] | None = None
) -> tuple[Refiner, dict]:
    """The refiner of a ``refiner.ckpt`` (evaluation mode, frozen) and its ``laser`` entry.

    With ``checkpoints`` (the generator's checkpoint files by name) the refiner must have been
    trained for exactly those files (sha256). Every problem is one :class:`CaloflowError` line.
    """
    from caloflow.checkpoints import checkpoint_model_mismatch, read_checkpoint

    where = f"{option} {path}"
    ckpt = read_checkpoint(path, option)
    entry = ckpt.get(CHECKPOINT_KEY)
    saved = entry.get("refiner_class") if isinstance(entry, dict) else None
    cls = REFINER_CLASSES.get(saved or "refine.gan.WeightedGANRefiner")
    if cls is None:
        raise CaloflowError(
            f"{where}: holds a refiner of class {saved}, not one of {', '.join(REFINER_CLASSES)}"
        )
    mismatch = checkpoint_model_mismatch(ckpt, cls)
    if mismatch:
        raise CaloflowError(f"{where}: {mismatch}")
    if not isinstance(entry, dict):
        raise CaloflowError(
            f"{where}: not a LaSeR shower refiner (no '{CHECKPOINT_KEY}' entry; written by "
            "python -m refine.laser --flow1 ... or --calogan ...)"
        )
    if checkpoints is not None:
        _check_trained_for(entry, checkpoints, where)
    try:
        refiner = cls(**ckpt.get("hyper_parameters", {}))
        refiner.load_state_dict(ckpt["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CaloflowError(
            f"{where}: cannot build the refiner from it ({type(e).__name__})"
        ) from None
    if not all(
        torch.isfinite(p).all() for p in refiner.state_dict().values() if p.is_floating_point()
    ):
        raise CaloflowError(
            f"{where}: the weights are not finite (NaN or inf): the refiner is broken"
        )
    return refiner.eval().requires_grad_(False), entry


class RefinedSampler:
    """Refined shower generation g(Phi(y, E) | E), with the ``sample`` interface of
    :class:`caloflow.sampling.CaloFlow` (``caloflow generate --refiner``).

    Args:
        base: the unrefined sampler, :class:`caloflow.sampling.CaloFlow` or
            :class:`caloflow.sampling.CaloGANSampler`.
        refiner: a conditional :class:`WeightedGANRefiner` or :class:`WeightedFlowRefiner` for the
            base's latent space.
    """

    def __init__(self, base, refiner: Refiner):
        from refine.showers import CaloFlowGenerator, CaloGANGenerator

        self.base = base
        if hasattr(base, "flow1"):
            self.g = CaloFlowGenerator(base.flow1, base.flow2)
            device = base.flow1.device
        else:
            self.g = CaloGANGenerator(base.model)
            device = next(base.model.parameters()).device
        dim = self.g.latent_shape[0]
        # the flow's y has the latent dimension by construction (a bijection)
        aux = refiner.hparams.get("aux_dim", refiner.hparams.latent_dim)
        if refiner.hparams.latent_dim != dim or aux != dim or refiner.hparams.context_dim != 1:
            raise CaloflowError(
                f"the refiner maps R^{aux} (context {refiner.hparams.context_dim}) "
                f"to R^{refiner.hparams.latent_dim}; the model's latent space is R^{dim} (context 1)"
            )
        self.refiner = refiner.to(device).eval()
        self.redraws = 0

    @property
    def domain(self):
        return self.base.domain

    @property
    def geometry(self):
        """The detector of the base model (:class:`caloflow.geometry.Geometry`)."""
        return self.base.geometry

    def phi(self, y: Tensor, incident_gev: Tensor) -> Tensor:
        """Phi(y, E_inc): the refined latent points (n, N) of y (n, N) at E_inc (n,) GeV."""
        context = incident_context(incident_gev).to(y.device)
        return self.refiner.decode(y.to(self.refiner.dtype), context).to(y.dtype)

    def sample(
        self,
        energies_gev,
        generator: torch.Generator | None = None,
        batch_size: int = 10_000,
        fast: bool = True,
        progress: bool = False,
        out=None,
    ):
        """One refined shower per incident energy (GeV), in batches of ``batch_size``, each batch's y drawn
        from ``generator`` as the unrefined model draws its latent points; see
        :func:`caloflow.sampling.sample_in_batches` (``out``: stream into a ShowerWriter)."""
        from caloflow.sampling import sample_in_batches

        if hasattr(self.g, "fast"):
            self.g.fast = fast

        def draw(chunk: Tensor) -> tuple[Tensor, int]:
            _, _, voxels, redraws = draw_latent_showers(self.g, chunk, generator, self.phi)
            return voxels, redraws

        showers, self.redraws = sample_in_batches(
            draw, energies_gev, batch_size, progress, out=out, geometry=self.geometry
        )
        return showers


__all__ = [
    "CHECKPOINT_KEY",
    "CONTEXT",
    "CHECKPOINT_NAMES",
    "REFINER_CLASSES",
    "incident_context",
    "file_sha256",
    "draw_latent_showers",
    "save_refiner",
    "load_refiner",
    "RefinedSampler",
]
