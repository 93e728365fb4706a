"""fast_inverse must reproduce nflows' own (one pass per feature) inverse of MADE flows."""

from __future__ import annotations

import pytest
import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.transforms import (
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    MaskedPiecewiseQuadraticAutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
    Permutation,
    RandomPermutation,
    ReversePermutation,
)
from nflows.transforms.lu import LULinear

from caloflow.flows.build import REFERENCE_SPLINE, build_flow1, build_flow2
from caloflow.flows.fast_inverse import fast_inverse, fast_sample
from caloflow.flows.permutations import (
    LayerwiseRandomPermutation,
    LayerwiseReversal,
    SeededRandomPermutation,
)

TOL = {torch.float32: 1e-4, torch.float64: 1e-9}
ROUND_TRIP_TOL = {torch.float32: 1e-3, torch.float64: 1e-9}


def perturb(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Add Gaussian noise to every weight so that no block is close to the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def rqs(features, hidden, context, num_blocks, residual, tails="linear", random_mask=False):
    return MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
        features=features,
        hidden_features=hidden,
        context_features=context,
        num_bins=6,
        tails=tails,
        tail_bound=4.0 if tails else 1.0,
        num_blocks=num_blocks,
        use_residual_blocks=residual,
        random_mask=random_mask,
        dropout_probability=0.1,
    )


def permutations(features):
    """One of each permutation kind, cycling."""
    sizes = (features // 2, features - features // 2) if features > 1 else (1,)
    return [
        ReversePermutation(features),
        RandomPermutation(features),
        Permutation(torch.randperm(features)),
        LayerwiseReversal(sizes),
        LayerwiseRandomPermutation(sizes, seed=3),
        SeededRandomPermutation(features, 1),
    ]


def stack(blocks, perms):
    out = []
    for i, block in enumerate(blocks):
        out.append(block)
        if i < len(blocks) - 1:
            out.append(perms[i % len(perms)])
    return CompositeTransform(out)


def check(transform, z, context, dtype, min_change=0.3):
    with torch.no_grad():
        ref = transform.inverse(z, context)[0]
    out = fast_inverse(transform, z, context)
    assert out.dtype == dtype and out.shape == z.shape
    # The flow must really move the points, else the comparison is weak.
    assert (ref - z).abs().max() > min_change
    # Absolute tolerance for points within +-10 (all spline flows here), relative beyond that
    # (affine blocks can stretch by up to 1/1e-3 per block).
    assert (out - ref).abs().max().item() <= TOL[dtype] * max(1.0, ref.abs().max().item() / 10)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "features,hidden,context,num_blocks,residual,random_mask",
    [
        (5, 16, None, 1, False, False),  # hidden > features: degrees repeat
        (7, 4, 3, 2, False, False),  # hidden < features: one group of trailing features
        (6, 12, 2, 2, False, True),  # random masks
        (7, 16, 3, 1, True, False),  # residual blocks
        (4, 8, None, 2, True, False),
        (1, 8, 2, 1, False, False),  # a single feature depends on the context alone
        (2, 8, None, 2, False, False),
    ],
)
def test_rqs_stacks_match_nflows(
    dtype, features, hidden, context, num_blocks, residual, random_mask
):
    torch.manual_seed(features * 10 + num_blocks)
    blocks = [
        rqs(features, hidden, context, num_blocks, residual, random_mask=random_mask)
        for _ in range(4)
    ]
    transform = stack(blocks, permutations(features)).to(dtype).eval()
    # Noise 0.1 moves points by several units; much larger noise makes some splines so steep
    # (slopes up to 1/min_derivative = 1e3) that float32 itself cannot resolve the inverse.
    perturb(transform, 0.1, seed=1)
    g = torch.Generator().manual_seed(2)
    z = 2.0 * torch.randn(
        64, features, generator=g, dtype=dtype
    )  # some points fall in the linear tails
    c = torch.randn(64, context, generator=g, dtype=dtype) if context else None
    x = check(transform, z, c, dtype)
    with torch.no_grad():
        back = transform(x, c)[0]
    assert (back - z).abs().max().item() <= ROUND_TRIP_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rqs_without_tails(dtype):
    torch.manual_seed(0)
    blocks = [rqs(6, 10, 2, 2, False, tails=None) for _ in range(3)]
    transform = stack(blocks, permutations(6)).to(dtype).eval()
    perturb(transform, 0.1, seed=4)
    z = torch.rand(64, 6, dtype=dtype)
    c = torch.randn(64, 2, dtype=dtype)
    check(transform, z, c, dtype, min_change=0.1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("residual,context", [(False, 3), (True, None)])
def test_affine_stacks_match_nflows(dtype, residual, context):
    torch.manual_seed(1)
    blocks = [
        MaskedAffineAutoregressiveTransform(
            6, 12, context_features=context, num_blocks=2, use_residual_blocks=residual
        )
        for _ in range(3)
    ]
    transform = stack(blocks, permutations(6)).to(dtype).eval()
    perturb(transform, 0.03, seed=5)
    z = torch.randn(64, 6, dtype=dtype)
    c = torch.randn(64, context, dtype=dtype) if context else None
    check(transform, z, c, dtype)


def test_flow2_shape_504_features_with_layerwise_permutations():
    """The CaloFlow Flow II stack (504 voxels, layer-wise permutations) with a small MADE."""
    torch.manual_seed(0)
    flow = build_flow2(hidden_features=24, n_blocks=3).eval()
    perturb(flow, 0.05, seed=6)
    g = torch.Generator().manual_seed(7)
    z = torch.randn(16, 504, generator=g)
    c = torch.randn(16, 4, generator=g)
    check(flow._transform, z, c, torch.float32)
    # A Flow is accepted directly (its embedding net is the identity here).
    assert (fast_inverse(flow, z, c) - fast_inverse(flow._transform, z, c)).abs().max() == 0


def test_flow1_and_fast_sample_match_nflows_and_are_seeded():
    torch.manual_seed(0)
    flow = build_flow1().double().eval()
    perturb(flow, 0.05, seed=8)
    c = torch.linspace(-1, 1, 50, dtype=torch.float64)[:, None]
    x = fast_sample(flow, context=c, generator=torch.Generator().manual_seed(11))
    again = fast_sample(flow, context=c, generator=torch.Generator().manual_seed(11))
    assert x.shape == (50, 3) and torch.equal(x, again)
    z = torch.randn(50, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    with torch.no_grad():
        ref = flow._transform.inverse(z, c)[0]
    assert (x - ref).abs().max().item() <= 1e-9
    # The samples have the density nflows assigns: log p(x) = log N(z) + log|det dz/dx|.
    with torch.no_grad():
        logp = flow.log_prob(x, c)
        z_back, logdet = flow._transform(x, c)
    normal = -0.5 * (z**2).sum(1) - 1.5 * torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))
    assert torch.allclose(logp, normal + logdet, atol=1e-9) and torch.allclose(z_back, z, atol=1e-9)
    with pytest.raises(ValueError, match="one sample per context row"):
        fast_sample(flow, 10, context=c)


def test_unconditional_fast_sample():
    torch.manual_seed(0)
    flow = Flow(
        stack([rqs(3, 8, None, 1, False) for _ in range(2)], [ReversePermutation(3)]),
        StandardNormal([3]),
    )
    x = fast_sample(flow.eval(), 20, generator=torch.Generator().manual_seed(1))
    z = torch.randn(20, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (x - flow._transform.inverse(z)[0]).abs().max() <= 1e-5


def test_weight_updates_invalidate_the_cached_plan():
    torch.manual_seed(0)
    transform = stack([rqs(5, 8, 2, 1, False) for _ in range(2)], [ReversePermutation(5)]).eval()
    z, c = torch.randn(32, 5), torch.randn(32, 2)
    before = fast_inverse(transform, z, c)
    perturb(transform, 0.3, seed=9)
    check(transform, z, c, torch.float32)
    assert (fast_inverse(transform, z, c) - before).abs().max() > 1e-2


def test_logit_scaling_when_the_net_reports_hidden_features():
    """nflows divides width/height logits by sqrt(hidden) only if the MADE has ``hidden_features``."""
    torch.manual_seed(0)
    block = rqs(4, 9, 2, 1, False).eval()
    perturb(block, 0.3, seed=10)
    z, c = 2 * torch.randn(32, 4), torch.randn(32, 2)
    plain = check(block, z, c, torch.float32)
    block.autoregressive_net.hidden_features = 9
    scaled = check(block, z, c, torch.float32)
    assert (plain - scaled).abs().max() > 1e-3


def test_unsupported_blocks_raise_or_fall_back():
    torch.manual_seed(0)
    lu = LULinear(4)
    transform = CompositeTransform([rqs(4, 8, None, 1, False), lu]).eval()
    perturb(transform, 0.2, seed=12)
    z = torch.randn(16, 4)
    with pytest.raises(NotImplementedError, match="LULinear"):
        fast_inverse(transform, z)
    with pytest.warns(UserWarning, match="LULinear"):
        out = fast_inverse(transform, z, fallback=True)
    with torch.no_grad():
        assert (out - transform.inverse(z)[0]).abs().max() <= 1e-4

    quadratic = MaskedPiecewiseQuadraticAutoregressiveTransform(4, 8, tails="linear")
    with pytest.raises(
        NotImplementedError, match="MaskedPiecewiseQuadraticAutoregressiveTransform"
    ):
        fast_inverse(quadratic, z)
    batch_norm = MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
        4, 8, tails="linear", use_batch_norm=True
    )
    with pytest.raises(NotImplementedError, match="batch normalisation"):
        fast_inverse(batch_norm.eval(), z)


def test_bad_inputs_are_named():
    block = rqs(4, 8, 2, 1, False).eval()
    with pytest.raises(ValueError, match="float64"):
        fast_inverse(
            block, torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 2, dtype=torch.float64)
        )
    with pytest.raises(ValueError, match="context has 3 rows"):
        fast_inverse(block, torch.randn(8, 4), torch.randn(3, 2))
    with pytest.warns(UserWarning, match="training mode"):
        fast_inverse(block.train(), torch.randn(8, 4), torch.randn(8, 2))


NFLOWS_SPLINE = {"min_bin_width": 1e-3, "min_bin_height": 1e-3, "min_derivative": 1e-3}


def spline_settings(module):
    return [
        (m.min_bin_width, m.min_bin_height, m.min_derivative)
        for m in module.modules()
        if isinstance(m, MaskedPiecewiseRationalQuadraticAutoregressiveTransform)
    ]


@pytest.mark.parametrize(
    "spline", [None, REFERENCE_SPLINE], ids=["nflows-default", "reference-1e-6"]
)
def test_spline_minima_reach_every_block_and_fast_inverse_honours_them(spline):
    """Flow I and Flow II built with the minima: every nflows transform has them, and fast_inverse
    (which reads them from each transform) equals nflows' inverse in float64."""
    expected = tuple(
        (spline or NFLOWS_SPLINE)[k] for k in ("min_bin_width", "min_bin_height", "min_derivative")
    )
    kwargs = spline or {}
    for i, (flow, c_dim, n) in enumerate(
        [
            (build_flow1(**kwargs), 1, 128),
            (build_flow2(hidden_features=24, n_blocks=3, **kwargs), 4, 16),
        ]
    ):
        settings = spline_settings(flow)
        assert len(settings) == (6 if c_dim == 1 else 3) and set(settings) == {expected}
        torch.manual_seed(i)
        flow = flow.double().eval()
        perturb(flow, 0.05, seed=20 + i)
        g = torch.Generator().manual_seed(21 + i)
        z = 2.0 * torch.randn(n, flow._distribution._shape[0], generator=g, dtype=torch.float64)
        c = torch.randn(n, c_dim, generator=g, dtype=torch.float64)
        check(flow._transform, z, c, torch.float64)


def test_the_minima_change_the_spline_and_fast_inverse_follows():
    """Same weights, minima 1e-3 vs 1e-6: different maps, each inverted exactly by fast_inverse."""
    torch.manual_seed(0)
    block = rqs(5, 12, 2, 1, False).double().eval()
    perturb(block, 0.5, seed=22)
    g = torch.Generator().manual_seed(23)
    z = 2 * torch.randn(64, 5, generator=g, dtype=torch.float64)
    c = torch.randn(64, 2, generator=g, dtype=torch.float64)
    default = check(block, z, c, torch.float64)
    block.min_bin_width = block.min_bin_height = block.min_derivative = 1e-6
    reference = check(block, z, c, torch.float64)
    assert (default - reference).abs().max() > 1e-6


def test_models_keep_the_minima_in_their_checkpoints(tmp_path):
    import lightning as L

    from caloflow.models import FlowI, FlowII

    for cls, kwargs in ((FlowI, {}), (FlowII, {"hidden_features": 8, "n_blocks": 2})):
        default = cls(**kwargs)
        assert set(spline_settings(default)) == {(1e-3, 1e-3, 1e-3)}
        model = cls(**kwargs, min_bin_width=1e-6, min_bin_height=2e-6, min_derivative=3e-6)
        path = tmp_path / f"{cls.__name__}.ckpt"
        torch.save(
            {
                "state_dict": model.state_dict(),
                "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": L.__version__,
            },
            path,
        )
        restored = cls.load_from_checkpoint(path)
        assert restored.hparams.min_derivative == 3e-6
        assert set(spline_settings(restored)) == {(1e-6, 2e-6, 3e-6)}
