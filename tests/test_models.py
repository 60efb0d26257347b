"""Model construction: back-ends, custom torchvision back-ends, seeds, noise control, settings."""
import numpy as np
import pytest
import torch
import torchvision

from vonenet_brainscore import (VOneBlock, VOneBlockConfig, build_vonenet, get_model, list_backends,
                                strip_stem, vonenet_from_backend)
from vonenet_brainscore.vone.filters import gabor_kernels


def test_registered_backends():
    assert list_backends() == ['alexnet', 'cornets', 'resnet50']


@pytest.mark.parametrize('arch, first_key', [('resnet50', 'model.layer1.0.conv1.weight'),
                                             ('alexnet', 'model.features.0.weight'),
                                             ('cornets', 'model.V2.conv_input.weight')])
def test_module_names_match_the_published_checkpoints(arch, first_key):
    keys = list(build_vonenet(arch).state_dict())
    assert keys[:2] == ['vone_block.simple_conv_q0.weight', 'vone_block.simple_conv_q1.weight']
    assert keys[2] == 'bottleneck.weight' and keys[3] == first_key


def test_torchvision_backend_behind_a_vone_block():
    backend = strip_stem(torchvision.models.resnet18(num_classes=10))
    model = vonenet_from_backend(backend, noise_mode=None).eval()
    assert model.bottleneck.out_channels == 64
    assert not any(k.startswith('model.conv1') or k.startswith('model.bn1') for k in model.state_dict())
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 10)


def test_strip_stem_names_what_is_missing():
    with pytest.raises(ValueError, match="no stem module"):
        strip_stem(torchvision.models.alexnet())


def test_building_leaves_torch_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    build_vonenet('alexnet')
    assert torch.equal(torch.rand(3), expected)


def test_build_is_reproducible_and_seeds_matter():
    a, b = build_vonenet('alexnet', init_seed=1), build_vonenet('alexnet', init_seed=1)
    c = build_vonenet('alexnet', init_seed=2)
    assert torch.equal(a.model.features[0].weight, b.model.features[0].weight)
    assert not torch.equal(a.model.features[0].weight, c.model.features[0].weight)
    assert not torch.equal(VOneBlock(gabor_seed=0).simple_conv_q0.weight, VOneBlock(gabor_seed=1).simple_conv_q0.weight)


def test_each_filter_reads_one_colour_channel():
    weight = VOneBlock(simple_channels=32, complex_channels=32).simple_conv_q0.weight
    nonzero_channels = (weight.abs().sum(dim=(2, 3)) > 0).sum(dim=1)
    assert (nonzero_channels == 1).all()


def test_gabor_kernel_formula():
    """One kernel against the Gabor formula written out: x runs down rows, y along columns."""
    f, sx, sy, theta, phase, k = 0.1, 3.0, 2.0, 0.3, 0.7, 9
    kernel = gabor_kernels([f], [sx], [sy], [theta], [phase], k)[0].double()
    x, y = np.meshgrid(np.arange(-4, 5), np.arange(-4, 5), indexing='ij')
    rx, ry = x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)
    expected = np.exp(-0.5 * (rx ** 2 / sx ** 2 + ry ** 2 / sy ** 2)) / (2 * np.pi * sx * sy) \
        * np.cos(2 * np.pi * f * rx + phase)
    np.testing.assert_allclose(kernel.numpy(), expected, atol=1e-7)


def test_simple_and_complex_cells():
    block = VOneBlock(simple_channels=8, complex_channels=8, noise_mode=None).eval()
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        q0, q1 = block.simple_conv_q0(images), block.simple_conv_q1(images)
        out = block(images)
    torch.testing.assert_close(out[:, :8], block.k_exc * q0[:, :8].clamp(min=0))
    torch.testing.assert_close(out[:, 8:], block.k_exc * torch.sqrt(q0[:, 8:] ** 2 + q1[:, 8:] ** 2) / np.sqrt(2))


def test_fixed_noise_is_per_image_and_needs_enough_rows():
    block = VOneBlock(simple_channels=4, complex_channels=4, image_size=64).eval()
    block.fix_noise(batch_size=4, seed=3)
    images = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        full, first_two = block(images), block(images[:2])
        torch.testing.assert_close(first_two, full[:2])
        assert torch.equal(block(images), full)
        block.fix_noise(batch_size=2, seed=3)
        with pytest.raises(ValueError, match='fix_noise'):
            block(images)


def test_noise_seed_makes_per_forward_noise_reproducible():
    block = VOneBlock(simple_channels=4, complex_channels=4, image_size=64, noise_seed=5).eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        first, second = block(images), block(images)
        block.reseed_noise(5)
        again = block(images)
    assert not torch.equal(first, second)
    assert torch.equal(first, again)


def test_noise_modes_change_the_output_and_none_is_deterministic():
    images = torch.rand(1, 3, 64, 64)
    outputs = {}
    for mode in (None, 'gaussian', 'neuronal'):
        block = VOneBlock(simple_channels=4, complex_channels=4, image_size=64, noise_mode=mode, noise_seed=0)
        with torch.no_grad():
            outputs[mode] = block(images)
    assert not torch.equal(outputs[None], outputs['gaussian'])
    assert not torch.equal(outputs[None], outputs['neuronal'])
    assert (outputs['neuronal'] >= 0).all()


def test_invalid_settings_are_named():
    with pytest.raises(ValueError, match='noise_mode'):
        VOneBlockConfig(noise_mode='poisson')
    with pytest.raises(ValueError, match='ksize'):
        VOneBlockConfig(ksize=24)
    with pytest.raises(TypeError, match='unknown VOneBlock setting'):
        VOneBlock(k_exec=3)


def test_untrained_published_architectures_build_without_weights():
    model = get_model('resnet50_ns', pretrained=False)
    assert model.vone_block.noise_mode is None and not model.training
    assert get_model('cornets', pretrained=False).arch == 'cornets'
