"""model/step.py: schedule, optimizer, training step (learning, micro-batch accumulation,
DDP unwrapping, torch.compile) and prediction, on a tiny AST on CPU (torch.compile on a timm CNN
too; more of the step on other models in tests/test_factory.py)."""
import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from model.ast import create_ast, normalise
from model.config import ModelConfig
from model.factory import build_model
from model.augment import AugmentConfig
from model.step import OptimConfig, lr_at, make_optimizer, predict, train_step

FRAMES, MELS, K = 32, 32, 4
NO_AUG = AugmentConfig(specaugment=False, mixup=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(seed=0):
    torch.manual_seed(seed)
    return create_ast(ModelConfig(embed_dim=32, depth=1, num_heads=2, frames=FRAMES, mels=MELS,
                                  fstride=16, tstride=16, n_classes=K))


def timm_cnn(seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="mobilenetv3_small_050", frames=FRAMES, mels=MELS, n_classes=K))


def toy_batch(n=16, seed=0):
    """Learnable raw log-mel: class k adds +6 to mel band k*8..k*8+7; y the multi-hot labels."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, K, generator=g) < 0.4).float()
    x = torch.randn(n, FRAMES, MELS, generator=g) - 6
    for k in range(K):
        x[:, :, k * 8:(k + 1) * 8] += 6 * y[:, k, None, None]
    return x, y


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_lr_schedule_and_optimizer():
    cfg = OptimConfig(lr=1e-3, warmup_steps=4, adam_betas=(0.95, 0.999))
    assert [lr_at(s, cfg) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert lr_at(0, OptimConfig(lr=3e-4)) == 3e-4
    opt = make_optimizer(tiny(), cfg)
    assert isinstance(opt, torch.optim.Adam) and len(opt.param_groups) == 1
    assert opt.param_groups[0]["betas"] == (0.95, 0.999) and opt.param_groups[0]["weight_decay"] == 0.0


def test_training_reduces_loss():
    model = tiny()
    cfg = OptimConfig(lr=1e-3, warmup_steps=3)
    opt = make_optimizer(model, cfg)
    x, y = toy_batch()
    losses = [train_step(model, opt, x, y, s, cfg, NO_AUG) for s in range(40)]
    assert all(isinstance(v, float) for v in losses)
    assert opt.param_groups[0]["lr"] == 1e-3
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])


def test_augmented_step_runs_from_float16():
    model = tiny()
    cfg = OptimConfig(lr=1e-4)
    x, y = toy_batch(8)
    loss = train_step(model, make_optimizer(model, cfg), x.half(), y, 0, cfg, AugmentConfig(), torch.Generator().manual_seed(0))
    assert np.isfinite(loss)


def test_step_never_writes_its_inputs():
    """The training loop hands the step tensors that share Ray's read-only object store."""
    model = tiny()
    cfg = OptimConfig(lr=1e-4)
    for dtype in (torch.float16, torch.float32):
        x, y = toy_batch(8)
        x = x.to(dtype)
        x0, y0 = x.clone(), y.clone()
        train_step(model, make_optimizer(model, cfg), x, y, 0, cfg, AugmentConfig(), torch.Generator().manual_seed(0))
        assert torch.equal(x, x0) and torch.equal(y, y0)


def test_resumed_steps_repeat_exactly():
    """A worker restarted from a checkpoint at step 3 (model and optimizer state restored, the
    augmentation re-seeded by sweep.train.step_seed) redoes steps 3-5 bit for bit."""
    from sweep.history import step_seed
    cfg, aug = OptimConfig(lr=1e-3), AugmentConfig(mixup=True)
    batches = [toy_batch(8, seed=i) for i in range(6)]

    def run(model, opt, steps):
        g = torch.Generator()
        out = []
        for s in steps:
            g.manual_seed(step_seed(0, 0, s))
            out.append(train_step(model, opt, *batches[s], s, cfg, aug, g))
        return out

    model = tiny()
    opt = make_optimizer(model, cfg)
    straight = run(model, opt, range(6))
    first = tiny()
    first_opt = make_optimizer(first, cfg)
    run(first, first_opt, range(3))
    resumed = tiny(seed=1)  # a new process: other initial weights, overwritten by the checkpoint
    resumed.load_state_dict(first.state_dict())
    resumed_opt = make_optimizer(resumed, cfg)
    resumed_opt.load_state_dict(first_opt.state_dict())
    assert run(resumed, resumed_opt, range(3, 6)) == straight[3:]
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert len({step_seed(0, r, s) for r in range(4) for s in range(10_000)}) == 40_000


@pytest.mark.parametrize("build", [tiny, timm_cnn])
def test_compiled_step_matches_eager_and_keeps_state_dict_keys(monkeypatch, build):
    """OptimConfig(compile=True) (configs/audioset.yaml): the model (the AST, a timm CNN) is
    compiled in place once, runs through the compiler, gives eager's losses, and its checkpoint
    loads strictly into an uncompiled model. The compile goes through TorchDynamo and AOTAutograd with eager kernels
    (backend "aot_eager"): what this tests is model/step.py's use of torch.compile, and
    inductor's C++ code generation would add half a minute of g++ on CPU to it."""
    x, y = toy_batch(8)
    keys = list(build().state_dict())
    losses, compiling, compiles = {}, {}, []
    try:
        for flag in (False, True):
            model = build()
            real_compile = model.compile
            monkeypatch.setattr(model, "compile", lambda **k: (compiles.append(1),
                                                               real_compile(**k, backend="aot_eager")))
            seen = compiling[flag] = []
            model.register_forward_pre_hook(lambda mod, args, seen=seen: seen.append(torch.compiler.is_compiling()))
            cfg = OptimConfig(lr=1e-3, compile=flag)
            opt = make_optimizer(model, cfg)
            losses[flag] = [train_step(model, opt, x, y, s, cfg, AugmentConfig(), torch.Generator().manual_seed(s))
                            for s in range(2)]
    finally:
        torch.compiler.reset()
    assert compiles == [1]                                   # once, on the first compiled step
    assert compiling == {False: [False, False], True: [True, True]}   # the forward ran compiled
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert list(model.state_dict()) == keys                  # no `_orig_mod.` prefix
    build(seed=1).load_state_dict(model.state_dict())        # strict


def test_micro_batches_give_the_full_batch_gradient():
    x, y = toy_batch(8)
    out = {}
    for micro in (None, 3):                                   # 3 + 3 + 2: unequal micro-batches
        model = tiny()
        cfg = OptimConfig(lr=0.0, micro_batch=micro)          # lr 0: parameters stay, gradients remain
        loss = train_step(model, make_optimizer(model, cfg), x, y, 0, cfg, NO_AUG)
        out[micro] = loss, grads(model)
    assert out[3][0] == pytest.approx(out[None][0], rel=1e-6)
    for a, b in zip(out[None][1], out[3][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_predict_scores_and_mode():
    model = tiny().train()
    x, y = toy_batch(10)
    batches = [(x[:6], y[:6]), (x[6:].numpy(), y[6:].numpy())]
    scores, targets = predict(model, batches, "cpu")
    assert scores.dtype == np.float32 and targets.dtype == np.float32
    assert scores.shape == targets.shape == (10, K) and model.training
    np.testing.assert_array_equal(targets, y.numpy())
    with torch.no_grad():
        want = torch.sigmoid(model.eval()(normalise(x))).numpy()
    np.testing.assert_allclose(scores, want, atol=1e-6)
    with pytest.raises(ValueError):
        predict(model, [], "cpu")


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_wrapped_model(process_group):
    x, y = toy_batch(8)
    plain = tiny()
    cfg = OptimConfig(lr=0.0, micro_batch=3)
    train_step(plain, make_optimizer(plain, cfg), x, y, 0, cfg, NO_AUG)
    wrapped = DistributedDataParallel(tiny())
    loss = train_step(wrapped, make_optimizer(wrapped, cfg), x, y, 0, cfg, NO_AUG)
    assert np.isfinite(loss)
    for a, b in zip(grads(plain), grads(wrapped.module)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    scores, _ = predict(wrapped, [(x, y)], "cpu")
    assert scores.shape == (8, K)
