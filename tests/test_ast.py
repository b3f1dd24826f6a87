"""model/ast.py: geometry, weight import (published AST layout, timm DeiT ImageNet layout),
position-grid adaptation, errors, normalisation. Random weights only; nothing downloaded."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from data.cli import InputError
from model.ast import (NORM_MEAN, NORM_STD, checkpoint_filter_fn, create_ast, is_audioset_checkpoint,
                       load_ast_checkpoint, normalisation_stats, normalise)
from model.config import ModelConfig

D, DEPTH, K = 128, 2, 7          # embed 128 -> 2 heads (embed // 64), as the loader infers
MELS, FRAMES, FS, TS = 64, 128, 12, 10
GRID = ((MELS - 16) // FS + 1, (FRAMES - 16) // TS + 1)   # (5, 12)


pytestmark = pytest.mark.usefixtures("one_thread")


def backbone(d=D, depth=DEPTH, grid=GRID, in_chans=1, seed=0) -> dict:
    """Random timm-DeiT-layout backbone tensors (with the unused 1000-class heads)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05, base=0.0):
        return base + scale * torch.randn(*shape, generator=g)

    sd = {"cls_token": r(1, 1, d, scale=1), "dist_token": r(1, 1, d, scale=1),
          "pos_embed": r(1, 2 + grid[0] * grid[1], d, scale=1),
          "patch_embed.proj.weight": r(d, in_chans, 16, 16), "patch_embed.proj.bias": r(d),
          "norm.weight": r(d, scale=0.1, base=1), "norm.bias": r(d, scale=0.1),
          "head.weight": r(1000, d), "head.bias": r(1000), "head_dist.weight": r(1000, d), "head_dist.bias": r(1000)}
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": r(d, scale=0.1, base=1), p + "norm1.bias": r(d, scale=0.1),
                   p + "attn.qkv.weight": r(3 * d, d, scale=0.2), p + "attn.qkv.bias": r(3 * d),
                   p + "attn.proj.weight": r(d, d, scale=0.1), p + "attn.proj.bias": r(d),
                   p + "norm2.weight": r(d, scale=0.1, base=1), p + "norm2.bias": r(d, scale=0.1),
                   p + "mlp.fc1.weight": r(4 * d, d, scale=0.1), p + "mlp.fc1.bias": r(4 * d),
                   p + "mlp.fc2.weight": r(d, 4 * d, scale=0.1), p + "mlp.fc2.bias": r(d)})
    return sd


def published(d=D, depth=DEPTH, grid=GRID, k=K, seed=0) -> dict:
    """A state dict in the published AST layout: DataParallel(ASTModel) keys."""
    g = torch.Generator().manual_seed(seed + 1)
    sd = {"module.v." + key: v for key, v in backbone(d, depth, grid, seed=seed).items()}
    sd.update({"module.mlp_head.0.weight": 1 + 0.1 * torch.randn(d, generator=g),
               "module.mlp_head.0.bias": 0.1 * torch.randn(d, generator=g),
               "module.mlp_head.1.weight": 0.1 * torch.randn(k, d, generator=g),
               "module.mlp_head.1.bias": 0.1 * torch.randn(k, generator=g)})
    return sd


def reference_forward(sd: dict, x: torch.Tensor, fs: int, ts: int, heads: int) -> torch.Tensor:
    """AST forward in plain torch ops on the raw published tensors. x [B, frames, mels]."""
    v = lambda k: sd["module.v." + k]                                    # noqa: E731
    h = F.conv2d(x.transpose(1, 2).unsqueeze(1), v("patch_embed.proj.weight"), v("patch_embed.proj.bias"),
                 stride=(fs, ts)).flatten(2).transpose(1, 2)             # [B, f*t, D] freq-major
    b, d = x.shape[0], h.shape[-1]
    h = torch.cat([v("cls_token").expand(b, -1, -1), v("dist_token").expand(b, -1, -1), h], 1) + v("pos_embed")
    n, hd = h.shape[1], d // heads
    depth = 1 + max(int(k.split(".")[3]) for k in sd if ".blocks." in k)
    for i in range(depth):
        p = f"blocks.{i}."
        a = F.layer_norm(h, (d,), v(p + "norm1.weight"), v(p + "norm1.bias"), eps=1e-6)
        q, k, val = F.linear(a, v(p + "attn.qkv.weight"), v(p + "attn.qkv.bias")) \
            .reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1)
        o = (att @ val).transpose(1, 2).reshape(b, n, d)
        h = h + F.linear(o, v(p + "attn.proj.weight"), v(p + "attn.proj.bias"))
        m = F.layer_norm(h, (d,), v(p + "norm2.weight"), v(p + "norm2.bias"), eps=1e-6)
        m = F.linear(F.gelu(F.linear(m, v(p + "mlp.fc1.weight"), v(p + "mlp.fc1.bias"))),
                     v(p + "mlp.fc2.weight"), v(p + "mlp.fc2.bias"))
        h = h + m
    h = F.layer_norm(h, (d,), v("norm.weight"), v("norm.bias"), eps=1e-6)
    pooled = (h[:, 0] + h[:, 1]) / 2
    pooled = F.layer_norm(pooled, (d,), sd["module.mlp_head.0.weight"], sd["module.mlp_head.0.bias"], eps=1e-5)
    return F.linear(pooled, sd["module.mlp_head.1.weight"], sd["module.mlp_head.1.bias"])


def grid_of(pos: torch.Tensor, grid) -> torch.Tensor:
    """[1, 2 + f*t, D] -> [1, D, f, t]."""
    return pos[:, 2:].reshape(1, *grid, -1).permute(0, 3, 1, 2)


@pytest.fixture
def ckpt(tmp_path):
    sd = published()
    path = tmp_path / f"toy_{FS}_{TS}_0.1234.pth"
    torch.save(sd, path)
    return path, sd


def test_published_layout_matches_independent_forward(ckpt):
    path, sd = ckpt
    model = load_ast_checkpoint(path, frames=FRAMES, mels=MELS).eval()
    assert model.patch_embed.proj.stride == (FS, TS) and model.patch_embed.grid_size == GRID
    assert model.n_classes == K
    x = normalise(torch.randn(3, FRAMES, MELS) * 4 - 4)
    with torch.no_grad():
        got, want = model(x), reference_forward(sd, x, FS, TS, heads=D // 64)
    assert got.shape == (3, K)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("length,stride", [(1214, 10), (852, 12), (659, 14), (514, 16)])
def test_stride_inferred_from_published_pos_length(tmp_path, length, stride):
    grid = (112 // stride + 1, 1008 // stride + 1)
    assert 2 + grid[0] * grid[1] == length
    path = tmp_path / "weights.pth"
    torch.save(published(d=64, depth=1, grid=grid), path)
    model = load_ast_checkpoint(path)
    assert model.patch_embed.proj.stride == (stride, stride)
    assert model.patch_embed.grid_size == grid and model.pos_embed.shape == (1, length, 64)
    other = 16 if stride != 16 else 10
    with pytest.raises(InputError, match=f"stride-{stride}"):
        create_ast(ModelConfig(embed_dim=64, depth=1, num_heads=1, fstride=other, tstride=other, weights=str(path)))


def test_stride_not_inferable_raises(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(published(), path)
    with pytest.raises(InputError, match="stride"):
        load_ast_checkpoint(path, frames=FRAMES, mels=MELS)


@pytest.mark.parametrize("frames", [96, 208])   # 9 time patches (cut) and 20 (interpolated)
def test_frame_change_adapts_pos_embed(ckpt, frames):
    path, sd = ckpt
    model = load_ast_checkpoint(path, frames=frames, mels=MELS)
    t = (frames - 16) // TS + 1
    pos, src = model.pos_embed.detach(), sd["module.v.pos_embed"]
    assert pos.shape == (1, 2 + GRID[0] * t, D)
    torch.testing.assert_close(pos[:, :2], src[:, :2])
    old = grid_of(src, GRID)
    if t < GRID[1]:
        start = GRID[1] // 2 - t // 2
        want = old[..., start:start + t]
    else:
        want = F.interpolate(old, size=(GRID[0], t), mode="bilinear", align_corners=False, antialias=False)
    torch.testing.assert_close(grid_of(pos, (GRID[0], t)), want)
    assert model(torch.zeros(2, frames, MELS)).shape == (2, K)


def test_n_classes_change_reinitialises_only_the_linear(ckpt):
    path, sd = ckpt
    model = load_ast_checkpoint(path, n_classes=3, frames=FRAMES, mels=MELS)
    state = model.state_dict()
    assert state["mlp_head.1.weight"].shape == (3, D)
    torch.testing.assert_close(state["mlp_head.0.weight"], sd["module.mlp_head.0.weight"])
    torch.testing.assert_close(state["blocks.1.attn.qkv.weight"], sd["module.v.blocks.1.attn.qkv.weight"])


def test_create_ast_loads_ast_weights_and_filter_is_pure(ckpt):
    path, sd = ckpt
    cfg = ModelConfig(embed_dim=D, depth=DEPTH, num_heads=2, frames=FRAMES, mels=MELS, fstride=FS, tstride=TS,
                      n_classes=K, weights=str(path))
    model = create_ast(cfg)
    before = {k: v.clone() for k, v in sd.items()}
    out = checkpoint_filter_fn(sd, model)
    assert {k: tuple(v.shape) for k, v in out.items()} == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sd.keys() == before.keys() and all(torch.equal(sd[k], before[k]) for k in sd)
    torch.testing.assert_close(model.cls_token.detach(), sd["module.v.cls_token"])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_deit_imagenet_layout_adapts_stem_and_grid(tmp_path, suffix):
    src_grid, mels, frames, stride = (6, 6), 64, 160, 16
    grid = ((mels - 16) // stride + 1, (frames - 16) // stride + 1)    # (4, 10): cut rows, stretch time
    sd = backbone(grid=src_grid, in_chans=3)
    path = tmp_path / f"deit{suffix}"
    save_file(sd, path) if suffix == ".safetensors" else torch.save({"model": sd}, path)
    model = create_ast(ModelConfig(embed_dim=D, depth=DEPTH, num_heads=2, frames=frames, mels=mels,
                                   fstride=stride, tstride=stride, n_classes=5, weights=str(path)))
    torch.testing.assert_close(model.patch_embed.proj.weight.detach(), sd["patch_embed.proj.weight"].sum(1, keepdim=True))
    pos = model.pos_embed.detach()
    torch.testing.assert_close(pos[:, :2], sd["pos_embed"][:, :2])
    stretched = F.interpolate(grid_of(sd["pos_embed"], src_grid), size=(src_grid[0], grid[1]), mode="bilinear",
                              align_corners=False, antialias=False)
    rows = src_grid[0] // 2 - grid[0] // 2                              # centre cut: rows 1..4 of 6
    torch.testing.assert_close(grid_of(pos, grid), stretched[:, :, rows:rows + grid[0]])
    assert model.mlp_head[1].weight.shape == (5, D)
    assert model(torch.zeros(2, frames, mels)).shape == (2, 5)


def test_wrong_shape_raises_naming_key(ckpt):
    path, sd = ckpt
    model = create_ast(ModelConfig(embed_dim=D, depth=DEPTH, num_heads=2, frames=FRAMES, mels=MELS,
                                   fstride=FS, tstride=TS, n_classes=K))
    bad = dict(sd, **{"module.v.blocks.0.mlp.fc1.weight": torch.zeros(3 * D, D)})
    with pytest.raises(InputError, match=r"blocks\.0\.mlp\.fc1\.weight.*\(384, 128\).*\(512, 128\)"):
        checkpoint_filter_fn(bad, model)
    missing = {k: v for k, v in sd.items() if k != "module.v.norm.bias"}
    with pytest.raises(InputError, match="missing key 'norm.bias'"):
        checkpoint_filter_fn(missing, model)
    other = create_ast(ModelConfig(embed_dim=D, depth=DEPTH, num_heads=2, frames=FRAMES, mels=80, n_classes=K))
    with pytest.raises(InputError, match="pos_embed"):
        checkpoint_filter_fn(sd, other)


def test_sizes_and_geometry():
    small = create_ast(ModelConfig(size="small", frames=16, mels=16, n_classes=2))
    assert small.embed_dim == 384 and len(small.blocks) == 12 and small.blocks[0].attn.num_heads == 6
    tiny = create_ast(ModelConfig(frames=FRAMES, mels=MELS, fstride=FS, tstride=TS, depth=1))
    assert tiny.embed_dim == 192 and len(tiny.blocks) == 1 and tiny.pos_embed.shape == (1, 2 + 60, 192)
    with pytest.raises(InputError, match="size"):
        create_ast(ModelConfig(size="huge"))
    with pytest.raises(InputError, match="divisible"):
        create_ast(ModelConfig(embed_dim=100, num_heads=3, frames=16, mels=16))


def test_the_classifier_runs_in_fp32_under_autocast():
    """Under bf16 autocast the backbone runs in bf16 and the logits still come out of the head in
    fp32: distinct scores for distinct clips, within bf16's error of the fp32 forward."""
    model = create_ast(ModelConfig(frames=32, mels=32, fstride=16, tstride=16, embed_dim=64, depth=1,
                                   num_heads=2, n_classes=5)).eval()
    x = torch.randn(256, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
    assert mixed.dtype == torch.float32
    assert mixed[:, 0].unique().numel() == 256          # bf16 logits would tie on these
    torch.testing.assert_close(mixed, full, atol=0.1, rtol=0.05)


def test_an_audioset_checkpoint_is_recognised_and_refused_for_an_audioset_sweep(tmp_path, ckpt):
    """A published-layout AST file with AudioSet's 527-class head is an AudioSet model; a sweep on
    AudioSet's classes refuses it unless confirmed, one on other classes takes it (transfer)."""
    from types import SimpleNamespace

    from sweep.config import ConfigError
    from sweep.prepare import refuse_audioset_checkpoint
    audioset = tmp_path / "audioset_10_10_0.4593.pth"
    torch.save(published(k=527), audioset)
    assert is_audioset_checkpoint(audioset) and not is_audioset_checkpoint(ckpt[0])
    deit = tmp_path / "deit.pth"
    torch.save(backbone(), deit)
    assert not is_audioset_checkpoint(deit)
    as_store = SimpleNamespace(mids=["/m/09x0r", "/m/04rlf", "/t/dd00001"], n_classes=3)
    with pytest.raises(ConfigError, match=r"model\.weights .*audioset_10_10.* trained on AudioSet.*"
                                          r"3 of 3 AudioSet MIDs.*model\.allow_audioset_weights=true"):
        refuse_audioset_checkpoint(str(audioset), as_store)
    refuse_audioset_checkpoint(str(audioset), SimpleNamespace(mids=["/x/dog", "/x/car"], n_classes=2))
    refuse_audioset_checkpoint(str(deit), as_store)


def test_normalisation():
    x = torch.tensor([NORM_MEAN, NORM_MEAN + 2 * NORM_STD])
    torch.testing.assert_close(normalise(x), torch.tensor([0.0, 1.0]))
    rng = np.random.default_rng(0)
    batches = [rng.normal(-4, 3, (5, 20, 8)).astype(np.float16), torch.randn(3, 20, 8) * 2 + 1]
    allv = np.concatenate([np.asarray(b, dtype=np.float64).ravel() for b in batches])
    mean, std = normalisation_stats(iter(batches))
    assert mean == pytest.approx(allv.mean(), abs=1e-9) and std == pytest.approx(allv.std(), abs=1e-9)
    with pytest.raises(ValueError):
        normalisation_stats([])


def test_missing_or_numpy_weights_are_named(tmp_path):
    cfg = ModelConfig(embed_dim=D, depth=DEPTH, num_heads=2, frames=FRAMES, mels=MELS, n_classes=K,
                      weights=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match=r"weights file not found: .*nope\.pth"):
        create_ast(cfg)
    with pytest.raises(FileNotFoundError, match=r"weights file not found: .*nope\.pth"):
        load_ast_checkpoint(tmp_path / "nope.pth")
    np.savez(tmp_path / "jax.npz", x=np.zeros(1))
    cfg.weights = str(tmp_path / "jax.npz")
    with pytest.raises(InputError, match="NumPy weights are not supported"):
        create_ast(cfg)
