"""Our models against the original VOneNet code: same parameters, filters, outputs and logits."""
import numpy as np
import pytest
import torch
from torch import nn

from published_checkpoint import published_checkpoint as _published_checkpoint, randomise_ as _randomise_
from vonenet_brainscore import get_model
from vonenet_brainscore.vone.block import VOneBlock
from vonenet_brainscore.vone.params import sample_gabor_parameters

ATOL = 1e-5


@pytest.mark.parametrize('seed', [0, 1, 42])
@pytest.mark.parametrize('rand_param', [False, True])
def test_gabor_parameters_equal_reference(reference, seed, rand_param):
    from _reference_vonenet.params import generate_gabor_param
    expected = generate_gabor_param(512, seed, rand_param, 0.75, 9, 0)
    ours = sample_gabor_parameters(512, seed=seed, rand_param=rand_param, sf_corr=0.75, sf_max=9, sf_min=0)
    for name, value in zip(('sf', 'theta', 'phase', 'nx', 'ny'), expected):
        np.testing.assert_array_equal(getattr(ours, name), value, err_msg=name)


def test_gabor_parameters_with_restricted_sf_range_equal_reference(reference):
    from _reference_vonenet.params import generate_gabor_param
    expected = generate_gabor_param(128, 5, False, 0.5, 6, 1)
    ours = sample_gabor_parameters(128, seed=5, sf_corr=0.5, sf_max=6, sf_min=1)
    np.testing.assert_array_equal(ours.sf, expected[0])
    np.testing.assert_array_equal(ours.ny, expected[4])


def test_sampling_leaves_global_numpy_rng_alone():
    np.random.seed(123)
    expected = np.random.rand(3)
    np.random.seed(123)
    sample_gabor_parameters(64, seed=7)
    np.testing.assert_array_equal(np.random.rand(3), expected)


@pytest.mark.parametrize('colour_seed', [1, 7])
def test_filters_equal_reference_for_same_seed(reference, colour_seed):
    torch.manual_seed(colour_seed)
    original = reference.VOneNet(model_arch=None, noise_mode=None)
    ours = VOneBlock(noise_mode=None, colour_seed=colour_seed)
    for bank in ('simple_conv_q0', 'simple_conv_q1'):
        theirs, mine = getattr(original, bank).weight, getattr(ours, bank).weight
        # Same colour channel for every filter, and the same kernels to float32 rounding.
        assert torch.equal(theirs.abs().sum((2, 3)).argmax(1), mine.abs().sum((2, 3)).argmax(1))
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=1e-5)


def test_colour_assignment_is_seeded_and_seed_matters():
    a, b, c = VOneBlock(colour_seed=0), VOneBlock(colour_seed=0), VOneBlock(colour_seed=1)
    assert torch.equal(a.simple_conv_q0.colour_channels(), b.simple_conv_q0.colour_channels())
    assert not torch.equal(a.simple_conv_q0.colour_channels(), c.simple_conv_q0.colour_channels())
    # The original draws q0 and q1 channels independently; so do we.
    assert not torch.equal(a.simple_conv_q0.colour_channels(), a.simple_conv_q1.colour_channels())


@pytest.mark.parametrize('noise_mode', [None, 'neuronal', 'gaussian'])
def test_vone_block_output_equals_reference_with_fixed_noise(reference, noise_mode):
    torch.manual_seed(5)
    original = reference.VOneNet(model_arch=None, noise_mode=noise_mode, noise_scale=0.35, noise_level=0.07)
    ours = VOneBlock(noise_mode=noise_mode, colour_seed=5)
    images = torch.rand(3, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    original.fix_noise(batch_size=3, seed=11)
    ours.fix_noise(batch_size=3, seed=11)
    with torch.no_grad():
        expected, actual = original(images.clone()), ours(images)
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(actual, expected, atol=ATOL * scale, rtol=0)


def test_per_forward_noise_follows_torch_global_rng_like_reference(reference):
    torch.manual_seed(5)
    original = reference.VOneNet(model_arch=None)
    ours = VOneBlock(colour_seed=5)
    images = torch.rand(2, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        torch.manual_seed(99)
        expected = original(images.clone())
        torch.manual_seed(99)
        actual = ours(images)
    torch.testing.assert_close(actual, expected, atol=ATOL * expected.abs().max(), rtol=0)


@pytest.mark.parametrize('arch', ['resnet50', 'alexnet', 'cornets'])
@pytest.mark.parametrize('noise_mode', [None, 'neuronal'])
def test_published_checkpoint_gives_reference_logits(reference, tmp_path, arch, noise_mode):
    path = tmp_path / f'vone{arch}_e70.pth.tar'
    original = _published_checkpoint(reference, arch, path, noise_mode)
    ours = get_model(arch, weights_path=path)
    assert not isinstance(ours, nn.DataParallel) and not ours.training
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 2 - 1
    if noise_mode:
        original.vone_block.fix_noise(batch_size=2, seed=17)
        ours.vone_block.fix_noise(batch_size=2, seed=17)
    with torch.no_grad():
        expected_v1, actual_v1 = original.vone_block(images.clone()), ours.vone_block(images)
        expected, actual = original(images.clone()), ours(images)
    torch.testing.assert_close(actual_v1, expected_v1, atol=ATOL * expected_v1.abs().max(), rtol=0)
    assert expected.std() > 0
    torch.testing.assert_close(actual, expected, atol=ATOL * expected.abs().max(), rtol=1e-4)


def test_checkpoint_without_module_prefix_and_extra_keys_loads(reference, tmp_path):
    """The adversarially trained ResNet50 is saved without 'module.' and with two unused layers."""
    path = tmp_path / 'voneresnet50_at_e96.pth.tar'
    original = _published_checkpoint(reference, 'resnet50', path, None, module_prefix=False)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint['state_dict']['vone_block.div_u.weight'] = torch.ones(512, 1, 1, 1)
    checkpoint['state_dict']['vone_block.div_t.weight'] = torch.ones(512, 1, 1, 1)
    torch.save(checkpoint, path)
    ours = get_model('resnet50_at', weights_path=path)
    images = torch.rand(1, 3, 224, 224) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ours(images), original(images.clone()), atol=1e-4, rtol=1e-4)


def test_legacy_serialisation_format_loads(reference, tmp_path):
    """Checkpoints from 2020 predate torch's zip format."""
    path = tmp_path / 'legacy.pth.tar'
    _published_checkpoint(reference, 'alexnet', path, None)
    checkpoint = torch.load(path, weights_only=True)
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    model = get_model('alexnet', weights_path=path)
    torch.testing.assert_close(model.bottleneck.weight, checkpoint['state_dict']['module.bottleneck.weight'])
