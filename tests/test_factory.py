"""model/factory.py: every `model.arch` - a timm architecture by name, a user's
`package.module:function` - built for [batch, frames, mels] log-mel, with local weights loaded by
timm's own path; what the training step does to every model (augmentation, autocast; compile in
tests/test_step.py);
checkpoints that rebuild any arch; the errors, each naming the arch or the file. Real timm models
with random weights, saved to local files here; nothing downloaded."""
import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from data.cli import InputError
from model.augment import AugmentConfig
from model.config import ModelConfig
from model.factory import SpectrogramImage, build_model, parameter_count
from model.step import OptimConfig, make_optimizer, predict, train_step
from sweep.checkpoint import save_checkpoint
from sweep.evaluate import load_model
from sweep.history import TrialState
from sweep.trial import Trial
from tests.own_models import Unsafe

FRAMES, MELS, K = 32, 48, 5
FACTORY = "tests.own_models:frame_tagger"

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(arch, **kw) -> ModelConfig:
    return ModelConfig(arch=arch, frames=FRAMES, mels=MELS, n_classes=K, **kw)


def batch(n=8, seed=0):
    """Learnable raw log-mel [n, FRAMES, MELS]: class k raises mel bins 8k..8k+7; y multi-hot [n, K]."""
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, K, generator=g) < 0.4).float()
    x = torch.randn(n, FRAMES, MELS, generator=g) - 6
    for k in range(K):
        x[:, :, 8 * k:8 * k + 8] += 6 * y[:, k, None, None]
    return x, y


@pytest.mark.parametrize("arch", ["resnet10t", "mobilenetv3_small_050"])
def test_a_timm_cnn_sees_the_log_mel_as_a_one_channel_image(arch):
    model = build_model(cfg(arch))
    reference = timm.create_model(arch, in_chans=1, num_classes=K)   # independent of the factory
    assert isinstance(model, SpectrogramImage) and parameter_count(model) == parameter_count(reference)
    x, _ = batch(3)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        reference.load_state_dict(model.net.state_dict())
        want = reference.eval()(x.unsqueeze(1))                     # [batch, 1, frames, mels]
    assert logits.shape == (3, K)
    torch.testing.assert_close(logits, want)


def test_a_vit_takes_its_input_size_from_the_store():
    model = build_model(cfg("vit_tiny_patch16_224"))
    assert model.net.patch_embed.grid_size == (FRAMES // 16, MELS // 16)
    assert model(batch(2)[0]).shape == (2, K)


def test_timm_options_reach_the_architecture():
    assert build_model(cfg("resnet10t", options={"drop_rate": 0.25})).net.drop_rate == 0.25
    with pytest.raises(InputError, match=r"model\.options\.num_classes: set from the store"):
        build_model(cfg("resnet10t", options={"num_classes": 3}))
    with pytest.raises(InputError, match=r"model.arch 'resnet10t': timm cannot build it .*no_such_option"):
        build_model(cfg("resnet10t", options={"no_such_option": 1}))
    with pytest.raises(InputError, match=r"model\.options .*the AST takes none"):
        build_model(cfg("ast", options={"drop_rate": 0.1}))


def test_imagenet_weights_load_through_timm(tmp_path):
    """A timm file in its own layout (3-channel stem, 1000 classes): the stem summed over RGB, every
    other tensor as in the file, the classifier new; a file with the store's classes keeps its
    classifier; a ViT's position grid is resampled to the store's."""
    torch.manual_seed(1)
    imagenet = timm.create_model("resnet10t").state_dict()
    path = tmp_path / "resnet10t.pth"
    torch.save(imagenet, path)
    net = build_model(cfg("resnet10t", weights=str(path))).net.state_dict()
    torch.testing.assert_close(net["conv1.0.weight"], imagenet["conv1.0.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(net["layer4.0.conv2.weight"], imagenet["layer4.0.conv2.weight"])
    assert net["fc.weight"].shape == (K, 512)
    mine = timm.create_model("resnet10t", in_chans=1, num_classes=K).state_dict()
    save_file(mine, tmp_path / "mine.safetensors")
    net = build_model(cfg("resnet10t", weights=str(tmp_path / "mine.safetensors"))).net.state_dict()
    torch.testing.assert_close(net["fc.weight"], mine["fc.weight"])
    vit = timm.create_model("vit_tiny_patch16_224").state_dict()
    torch.save(vit, tmp_path / "vit.pth")
    net = build_model(cfg("vit_tiny_patch16_224", weights=str(tmp_path / "vit.pth"))).net
    assert net.pos_embed.shape == (1, 1 + (FRAMES // 16) * (MELS // 16), 192)
    torch.testing.assert_close(net.state_dict()["blocks.0.attn.qkv.weight"], vit["blocks.0.attn.qkv.weight"])


def test_weights_that_do_not_fit_are_named(tmp_path):
    other = tmp_path / "mobilenet.pth"
    torch.save(timm.create_model("mobilenetv3_small_050").state_dict(), other)
    with pytest.raises(InputError, match=r"mobilenet\.pth: not resnet10t weights in timm's layout: 79 of its tensors "
                                         r"missing \(conv1\.0\.weight, .*tensors it does not have"):
        build_model(cfg("resnet10t", weights=str(other)))
    wider = tmp_path / "wider.pth"
    sd = timm.create_model("resnet10t").state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(80, 64, 3, 3)
    torch.save(sd, wider)
    with pytest.raises(InputError, match=r"wider\.pth: does not load into resnet10t \(size mismatch for "
                                         r"layer1\.0\.conv1\.weight"):
        build_model(cfg("resnet10t", weights=str(wider)))


@pytest.mark.parametrize("arch", ["ast", "resnet10t", FACTORY])
def test_unreadable_weights_are_named_for_every_arch(tmp_path, arch):
    with pytest.raises(FileNotFoundError, match=r"weights file not found: .*nope\.pth"):
        build_model(cfg(arch, weights=str(tmp_path / "nope.pth")))
    torch.save({"w": torch.zeros(1), "obj": Unsafe()}, tmp_path / "pickle.pth")
    with pytest.raises(InputError, match=r"pickle\.pth: not a readable weights file .*weights_only"):
        build_model(cfg(arch, weights=str(tmp_path / "pickle.pth")))


def test_a_factory_takes_the_store_geometry_and_its_weights(tmp_path):
    model = build_model(cfg(FACTORY, options={"width": 7}))
    assert model.conv.in_channels == MELS and model.conv.out_channels == 7 and model.out.out_features == K
    path = tmp_path / "tagger.pth"
    torch.save(model.state_dict(), path)
    again = build_model(cfg(FACTORY, options={"width": 7}, weights=str(path)))
    x = batch(4)[0]
    torch.testing.assert_close(again(x), model(x))
    with pytest.raises(InputError, match=r"tagger\.pth: does not fit tests\.own_models:frame_tagger \(size mismatch"):
        build_model(cfg(FACTORY, options={"width": 9}, weights=str(path)))


@pytest.mark.parametrize("arch, why", [
    ("resnet9000", r"not 'ast', package\.module:function or a timm architecture \(timm has resnet"),
    ("tests.own_models:nothing_here", r"cannot import nothing_here from tests\.own_models \(AttributeError"),
    ("no_such_package.models:tagger", r"cannot import tagger from no_such_package\.models \(ModuleNotFoundError"),
    ("tests.own_models:needs_a_file", r"the factory failed \(FileNotFoundError: vocab\.txt\)"),
    ("tests.own_models:not_a_module", r"the factory returned a dict, not a torch\.nn\.Module"),
    ("tests.own_models:per_frame_logits", rf"returns \[2, {FRAMES}, {K}\] for log-mel \[batch, frames, mels\] = "
                                          rf"\[2, {FRAMES}, {MELS}\]: expected logits \[batch, classes\] = \[2, {K}\]"),
])
def test_a_model_that_cannot_be_built_is_named(arch, why):
    with pytest.raises(InputError, match=rf"model\.arch '{arch}'.*{why}"):
        build_model(cfg(arch))


def test_an_input_too_small_for_the_architecture_is_named():
    with pytest.raises(InputError, match=r"model\.arch 'vit_tiny_patch16_224' cannot take log-mel \[batch, frames, mels\] "
                                         r"= \[2, 8, 8\] \(RuntimeError: .*Kernel size can't be greater"):
        build_model(ModelConfig(arch="vit_tiny_patch16_224", frames=8, mels=8, n_classes=K))


@pytest.mark.parametrize("arch", ["mobilenetv3_small_050", FACTORY])
def test_the_step_trains_every_model_with_augmentation(arch):
    """MixUp and SpecAugment on, as for the AST: the loss falls on a learnable batch, and
    prediction gives sigmoid scores [batch, classes]."""
    torch.manual_seed(0)
    model = build_model(cfg(arch))
    opt_cfg = OptimConfig(lr=3e-3)
    opt = make_optimizer(model, opt_cfg)
    x, y = batch(16)
    aug = AugmentConfig(freqm=8, timem=8)
    losses = [train_step(model, opt, x, y, s, opt_cfg, aug, torch.Generator().manual_seed(s)) for s in range(40)]
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    scores, targets = predict(model, [(x, y)], "cpu")
    assert scores.shape == targets.shape == (16, K) and ((scores > 0) & (scores < 1)).all()


def test_a_timm_classifier_runs_in_fp32_under_autocast():
    model = build_model(cfg("resnet10t")).eval()
    x = torch.randn(64, FRAMES, MELS, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(x)
    assert mixed.dtype == torch.float32 and mixed[:, 0].unique().numel() == 64
    torch.testing.assert_close(mixed, full, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("arch, options", [("resnet10t", {"drop_rate": 0.1}), (FACTORY, {"width": 6})])
def test_a_checkpoint_rebuilds_its_model_alone(tmp_path, arch, options):
    """state.json records the model config (arch, options, geometry); sweep.evaluate's load_model
    rebuilds the same model from it and model.pt, without the weights file it started from."""
    torch.manual_seed(3)
    model_cfg = cfg(arch, options=options)
    model = build_model(model_cfg)
    start = tmp_path / "start.pth"
    torch.save((model.net if arch == "resnet10t" else model).state_dict(), start)
    model_cfg.weights = str(start)
    opt_cfg = OptimConfig(lr=1e-3)
    opt = make_optimizer(model, opt_cfg)
    x, y = batch(8)
    train_step(model, opt, x, y, 0, opt_cfg, AugmentConfig(specaugment=False, mixup=False))
    save_checkpoint(tmp_path, model, opt, TrialState(Trial("moore", 1.0, 1e-3, 0), 8, 1), model_cfg)
    start.unlink()
    rebuilt = load_model(tmp_path)
    assert type(rebuilt) is type(model) and not rebuilt.training
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model.eval()(x))
