"""Calorimeter-shower generators behind refine's generator protocol, conditional on the incident energy.

LaSeR (Winterhalder, Bellagente, Nachman, arXiv:2106.00792) refines a generator g: z -> x with
latent density p_Z by training a classifier between data and generated x, and pulling its weights
w(x) back to the latent space: w(z) = w(g(z)). The refined latent density p_Z(z) w(g(z)) is then
sampled without weights (rejection sampling, Hamiltonian Monte Carlo of log N(z) + log w(g(z)), or
a weighted-GAN refiner Phi, :mod:`refine`). Here g is a shower model of a calorimeter with L layers
and V voxels (the models' ``geometry``, :mod:`caloflow.geometry`), conditional on the incident
energy E_inc:

* :class:`CaloFlowGenerator`: z = (z_I, z_II) in R^L x R^V = R^(L + V),
  g(z) = FlowII^-1(z_II | E_inc, E_k) with E_k = FlowI^-1(z_I | E_inc), after the post-processing of
  ``caloflow generate`` (section 4.3 of CaloFlow, arXiv:2106.05285);
* :class:`CaloGANGenerator`: z in R^latent_dim (1024 for the published CaloGAN), g(z) the CaloGAN
  generator at E_inc (CaloGAN geometry only).

E_inc is a condition, not a latent coordinate: one value per latent row, given at construction (so
that the protocol's ``decode(z)`` works, for every z with that many rows or for any z when a single
energy is given) or per call, ``decode(z, incident_gev)``. (:func:`refine.generate` splits z into
batches but not the energies: with per-row energies, decode all rows in one batch or call ``decode``
per batch with its energies.) Units: E_inc in GeV, showers (N, V) in MeV, in the flat voxel order
of the geometry (:meth:`caloflow.geometry.Geometry.join_layers`).

Both decodes are differentiable in z (HMC needs grad_z [log N(z) + log w(g(z))]). CaloFlow's keeps
the graph when grad mode is on and z (or E_inc) requires grad, and otherwise runs on the fast,
graph-free path of ``caloflow generate`` (as under ``torch.no_grad()``, e.g. :func:`refine.generate`);
CaloGAN's follows grad mode like any ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from caloflow.models.calogan import CaloGAN
from caloflow.models.calogan import CaloGANGenerator as CaloGANNetwork
from caloflow.models.flows import FlowI, FlowII, standard_normal

__all__ = ["CaloFlowGenerator", "CaloGANGenerator"]


def _incident_rows(given: Tensor | float | None, default: Tensor | None, n: int) -> Tensor:
    """The incident energies (n,) in GeV for n latent rows: ``given``, else ``default``; one value is broadcast."""
    energies = default if given is None else given
    if energies is None:
        raise ValueError("no incident energies: pass incident_gev to decode() or to the generator")
    energies = torch.as_tensor(energies).reshape(-1)
    if energies.numel() == 1 and n != 1:
        energies = energies.expand(n)
    if energies.numel() != n:
        raise ValueError(f"{energies.numel()} incident energies for {n} latent points")
    return energies


def _wants_graph(z: Tensor, energies: Tensor) -> bool:
    """Decode on the differentiable path: grad mode is on and z or E_inc requires grad."""
    return torch.is_grad_enabled() and (z.requires_grad or energies.requires_grad)


def _check_latent(z: Tensor, dim: int) -> None:
    if z.dim() != 2 or z.shape[1] != dim:
        raise ValueError(f"latent points must have shape (n, {dim}), got {tuple(z.shape)}")


class CaloFlowGenerator:
    """CaloFlow (Flow I then Flow II) as a LaSeR generator g: R^(L + V) -> R^V, conditional on E_inc.

    The latent point is z = (z_I, z_II), z_I in R^L (Flow I's base space, one coordinate per layer)
    and z_II in R^V (Flow II's, one per voxel), both standard normal. ``decode`` is the map of
    ``caloflow generate``: layer energies E_k = FlowI.decode(z_I, E_inc) (MeV), then voxels
    FlowII.decode(z_II, E_inc, E_k) (MeV): inverse
    logit, each layer renormalised to E_k, voxels below 10 keV set to zero (``threshold``). For the
    same latent draws and energies, decoded in the same batches on the graph-free path, the showers
    are those of ``caloflow generate`` bit for bit (on the same device); another batch size, or the
    differentiable path, agrees up to float rounding. A non-finite shower comes out as a NaN row
    instead of being drawn again (g is a function of z).

    Gradients: with grad mode on and ``z`` (or E_inc) requiring grad, ``decode`` keeps the graph
    through both flows (with ``fast`` the exact fast inverse of :func:`caloflow.flows.fast_inverse`
    with ``differentiable=True``, else nflows' inverse) and the post-processing, so classifier
    weights w(g(z)) pulled back to the latent space can be differentiated in z (HMC); otherwise it
    runs graph-free, as fast as ``caloflow generate``. z_I moves the layer energies that condition and scale
    Flow II's shower, so the gradient w.r.t. z_I is the total one. Voxels zeroed by the threshold
    have zero gradient, and the threshold makes g discontinuous where a voxel crosses 10 keV
    (``threshold=False`` gives a smooth g whose layer sums are E_k exactly).

    Args:
        flow1: a :class:`caloflow.models.FlowI` (trained, or any weights).
        flow2: a :class:`caloflow.models.FlowII` on the same device, with the same dtype and the
            same geometry.
        incident_gev: default incident energies (GeV), one per latent row, or one for all; None: give
            them to every ``decode``.
        fast: Flow II's inverse: the exact fast inverse (True, as ``caloflow generate``) or nflows'.
        threshold: zero voxels below Flow II's threshold (10 keV), as ``caloflow generate`` does.
    """

    deterministic = True

    def __init__(
        self,
        flow1: FlowI,
        flow2: FlowII,
        incident_gev: Tensor | None = None,
        fast: bool = True,
        threshold: bool = True,
    ):
        if flow1.geometry != flow2.geometry:
            raise ValueError(
                f"Flow I is built for the {flow1.geometry.name} geometry, Flow II for "
                f"{flow2.geometry.name}"
            )
        g = flow2.geometry
        if (flow1.latent_dim, flow2.latent_dim) != (g.n_layers, g.n_voxels):
            raise ValueError(
                f"the flows' latent spaces R^{flow1.latent_dim} x R^{flow2.latent_dim} are not "
                f"those of the {g.name} geometry, R^{g.n_layers} x R^{g.n_voxels}"
            )
        self.flow1 = flow1
        self.flow2 = flow2
        self.incident_gev = (
            None if incident_gev is None else torch.as_tensor(incident_gev).reshape(-1)
        )
        self.fast = fast
        self.threshold = threshold

    @property
    def geometry(self):
        """The detector of both flows (:class:`caloflow.geometry.Geometry`)."""
        return self.flow2.geometry

    @property
    def split(self) -> tuple[int, int]:
        """Dimensions of (z_I, z_II): (L, V), the layers and voxels of the geometry."""
        return self.geometry.n_layers, self.geometry.n_voxels

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (sum(self.split),)

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """z ~ N(0, 1) (n, L + V) in the flows' dtype, on Flow I's device; drawn on the CPU from ``generator``.

        z_I (n, L) is drawn first, then z_II (n, V), as ``caloflow generate`` draws them for one
        batch of n showers: with the same seeded generator, one call per batch of ``--batch-size``
        reproduces its latent points (when no shower is drawn again).
        """
        device, dtype = self.flow1.device, self.flow1.flow_dtype
        z_1 = standard_normal(n, self.split[0], generator, device, dtype)
        z_2 = standard_normal(n, self.split[1], generator, device, dtype)
        return torch.cat([z_1, z_2], dim=1)

    def decode(self, z: Tensor, incident_gev: Tensor | None = None) -> Tensor:
        """g(z): showers (n, V) in MeV for the latent points ``z`` (n, L + V) at ``incident_gev`` (n,) GeV.

        ``incident_gev`` defaults to the energies given at construction. Differentiable in ``z``
        when grad mode is on and ``z`` requires grad (see the class docstring); computed in the
        flows' dtype.
        """
        _check_latent(z, self.latent_shape[0])
        energies = _incident_rows(incident_gev, self.incident_gev, z.shape[0])
        differentiable = _wants_graph(z, energies)
        z_1, z_2 = (part.contiguous() for part in z.split(self.split, dim=1))
        layer_energies = self.flow1.decode(z_1, energies, differentiable=differentiable)
        return self.flow2.decode(
            z_2,
            energies,
            layer_energies,
            fast=self.fast,
            threshold=self.threshold,
            differentiable=differentiable,
        )

    def layer_energies(self, z: Tensor, incident_gev: Tensor | None = None) -> Tensor:
        """Flow I's part of g: the layer energies E_k (n, L) in MeV that ``decode(z)`` is conditioned on."""
        _check_latent(z, self.latent_shape[0])
        energies = _incident_rows(incident_gev, self.incident_gev, z.shape[0])
        z_1 = z[:, : self.split[0]].contiguous()
        return self.flow1.decode(z_1, energies, differentiable=_wants_graph(z, energies))


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class CaloGANGenerator:
    """The CaloGAN generator as a LaSeR generator g: R^latent_dim -> R^V, conditional on E_inc.

    z ~ N(0, 1) in R^latent_dim (the module's, 1024 for the published CaloGAN); the network scales z
    by E_inc / 100 GeV and returns the three layer images, flattened to (n, V) voxels in MeV,
    the map of ``caloflow generate --calogan`` (:meth:`caloflow.models.calogan.CaloGAN.sample`).
    ``decode`` runs the network in eval mode (BatchNorm with its running averages, as for
    generation) and is differentiable in z when grad mode is on; the final ReLU gives zero gradient
    to empty voxels.

    Args:
        generator_module: a :class:`caloflow.models.calogan.CaloGAN` or its generator network
            (:class:`caloflow.models.calogan.CaloGANGenerator`).
        incident_gev: default incident energies (GeV), one per latent row, or one for all.
    """

    deterministic = True

    def __init__(
        self, generator_module: CaloGAN | CaloGANNetwork, incident_gev: Tensor | None = None
    ):
        self.network = (
            generator_module.generator
            if isinstance(generator_module, CaloGAN)
            else generator_module
        )
        if not isinstance(self.network, CaloGANNetwork):
            raise TypeError(
                "expected a CaloGAN or its CaloGANGenerator network, "
                f"got {type(generator_module).__name__}"
            )
        self.incident_gev = (
            None if incident_gev is None else torch.as_tensor(incident_gev).reshape(-1)
        )

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.network.latent_dim,)

    def _reference(self) -> Tensor:
        return next(self.network.parameters())

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """z ~ N(0, 1) (n, latent_dim), drawn on the generator's device (CPU without one), then moved to the
        network's: the draw of :meth:`CaloGAN.sample` for one chunk of n showers."""
        ref = self._reference()
        noise_device = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(
            n, self.latent_shape[0], generator=generator, device=noise_device, dtype=ref.dtype
        )
        return z.to(ref.device)

    def decode(self, z: Tensor, incident_gev: Tensor | None = None) -> Tensor:
        """g(z): showers (n, V) in MeV (float32) for ``z`` (n, latent_dim) at ``incident_gev`` (n,) GeV."""
        _check_latent(z, self.latent_shape[0])
        ref = self._reference()
        energies = _incident_rows(incident_gev, self.incident_gev, z.shape[0]).to(
            ref.device, torch.float32
        )
        with _eval_mode(self.network):
            return self.network.decode(z.to(ref.device), energies)
