"""model/augment.py: SpecAugment masks, energy-domain MixUp, Beta draws, determinism."""
import pytest
import torch

from model.augment import AugmentConfig, augment, energy_mixup, partners, sample_beta, spec_augment

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
B, T, M = 64, 100, 40


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(device="cpu", seed=0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def bands(zero: torch.Tensor, dim: int) -> torch.Tensor:
    """zero [B, T, M] bool -> per example, the indices along `dim` that are zero across the other axis."""
    return zero.all(dim=3 - dim)


@pytest.mark.parametrize("device", DEVICES)
def test_spec_augment_masks_within_limits(device):
    x = torch.rand(B, T, M, device=device) + 1                        # no zeros before masking
    out = spec_augment(x, freqm=12, timem=30, generator=gen(device))
    assert out.shape == x.shape and out.dtype == x.dtype and x.min() >= 1  # input untouched
    zero = (out == 0).cpu()
    freq, time = bands(zero, 2), bands(zero, 1)                       # [B, M], [B, T]
    assert (freq.sum(1) < 12).all() and (time.sum(1) < 30).all()
    for rows in (freq, time):                                         # one contiguous band each
        first, last = rows.float().argmax(1), rows.shape[1] - 1 - rows.flip(1).float().argmax(1)
        width = rows.sum(1)
        assert ((width == 0) | (last - first + 1 == width)).all()
    assert torch.equal(zero, freq[:, None, :] | time[:, :, None])     # nothing else masked
    assert len({tuple(r.nonzero().flatten().tolist()) for r in freq}) > 10  # drawn per example
    assert freq.sum(1).max() >= 8 and time.sum(1).max() >= 20


def test_spec_augment_zero_param_and_determinism():
    x = torch.randn(8, T, M)
    assert torch.equal(spec_augment(x, 0, 0), x)
    a, b = spec_augment(x, 10, 20, gen(seed=3)), spec_augment(x, 10, 20, gen(seed=3))
    assert torch.equal(a, b) and not torch.equal(a, spec_augment(x, 10, 20, gen(seed=4)))


@pytest.mark.parametrize("alpha", [10.0, 0.5])
def test_beta_draws_follow_beta_alpha_alpha(alpha):
    stats = pytest.importorskip("scipy.stats")
    lam = sample_beta(alpha, 20000, torch.empty(0), gen())
    assert lam.dtype == torch.float32 and ((lam >= 0) & (lam <= 1)).all()
    if alpha >= 1:                      # below 1, lam within 6e-8 of 1 rounds to 1.0 in float32
        assert ((lam > 0) & (lam < 1)).all()
    assert lam.mean().item() == pytest.approx(0.5, abs=0.01)
    assert lam.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)  # Var Beta(a, a)
    draws = lam.double().numpy()
    assert stats.kstest(draws, "beta", args=(alpha, alpha)).pvalue > 1e-3
    assert stats.kstest(draws, "beta", args=(1.2 * alpha, 1.2 * alpha)).pvalue < 1e-3  # the test has power


@pytest.mark.parametrize("device", DEVICES)
def test_beta_draws_reproducible_from_the_generator(device):
    like = torch.empty(0, device=device)
    a, b = sample_beta(0.5, 64, like, gen(device, 3)), sample_beta(0.5, 64, like, gen(device, 3))
    assert a.device.type == device and torch.equal(a, b)
    assert not torch.equal(a, sample_beta(0.5, 64, like, gen(device, 4)))


def test_beta_draws_tiny_alpha_and_bad_alpha():
    lam = sample_beta(0.01, 1000, torch.empty(0), gen())                # Gammas far below float32's range
    assert torch.isfinite(lam).all() and ((lam >= 0) & (lam <= 1)).all()
    assert (lam < 0.01).float().mean() > 0.3 and (lam > 0.99).float().mean() > 0.3  # U-shaped
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            sample_beta(bad, 4, torch.empty(0), gen())


def test_mixup_keeps_label_mass_and_mixes_energy():
    x, y = torch.randn(B, T, M) * 3 - 4, (torch.rand(B, 10) < 0.3).float()
    lam = torch.rand(B)
    g = gen(seed=1)
    perm = partners(B, "cpu", gen(seed=1))                            # the partners mixup draws
    xm, ym = energy_mixup(x, y, 10.0, g, lam=lam)
    assert xm.shape == x.shape and ym.shape == y.shape
    torch.testing.assert_close(ym.sum(1), lam * y.sum(1) + (1 - lam) * y[perm].sum(1))
    lx = lam[:, None, None].double()
    want = torch.log(lx * x.double().exp() + (1 - lx) * x[perm].double().exp())
    torch.testing.assert_close(xm.double(), want, atol=1e-5, rtol=1e-5)


def test_mixup_partners_are_a_derangement():
    """No example is mixed with itself and each is a partner once (a plain random permutation
    leaves about one fixed point a batch: over 200 batches of 32, about 200)."""
    g = gen(seed=2)
    for n in (2, 3, 32):
        for _ in range(200):
            p = partners(n, "cpu", g)
            assert sorted(p.tolist()) == list(range(n)) and not (p == torch.arange(n)).any()
    assert partners(1, "cpu", g).tolist() == [0]                      # nobody else to mix with
    fixed = sum(int((torch.randperm(32, generator=g) == torch.arange(32)).sum()) for _ in range(200))
    assert fixed > 100


def test_mixup_identity_at_lam_one_and_stable():
    x, y = torch.randn(B, T, M), torch.rand(B, 5)
    xm, ym = energy_mixup(x, y, 10.0, gen(), lam=torch.ones(B))
    assert torch.equal(xm, x) and torch.equal(ym, y)
    big = torch.full((4, T, M), 200.0)
    big[1::2] = -200.0
    xm, _ = energy_mixup(big, torch.zeros(4, 2), 10.0, gen(), lam=torch.full((4,), 0.5))
    assert torch.isfinite(xm).all() and xm.max() <= 200.0


@pytest.mark.parametrize("device", DEVICES)
def test_augment_shapes_dtype_scaling_determinism(device):
    x = (torch.rand(16, 256, 64, device=device) + 1).half()
    y = (torch.rand(16, 6, device=device) < 0.5).float()
    cfg = AugmentConfig(mixup=False)                                  # masks only: widths scale
    out, yo = augment(x, y, cfg, gen(device))
    assert out.shape == x.shape and out.dtype == torch.float16 and torch.equal(yo, y)
    zero = (out == 0).cpu()
    assert (bands(zero, 2).sum(1) < 48 * 64 / 128).all() and (bands(zero, 1).sum(1) < 192 * 256 / 1024).all()
    full = AugmentConfig()
    a, b = augment(x, y, full, gen(device, 5)), augment(x, y, full, gen(device, 5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert ((a[1] >= 0) & (a[1] <= 1)).all() and not torch.equal(a[1], y)
    assert torch.equal(augment(x, y, AugmentConfig(specaugment=False, mixup=False))[0], x)
