"""Robustness evaluation: PGD (L-inf, L2, L1) with EOT over the VOneBlock's noise, common
corruptions, and the side-by-side table and plot.

Models are tiny VOneNets (16 + 16 VOneBlock channels, 64 px, a one-convolution back-end) trained
for a few Adam steps on the generated gratings, so that attacks have accuracy to destroy.
"""
import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torchvision import datasets, transforms

from synthetic_imagefolder import grating, make_imagefolder
from vonenet_brainscore import VOneNetError, build_vonenet, vonenet_from_backend
from vonenet_brainscore.robustness import (ALL_CORRUPTIONS, BLUR_CORRUPTIONS, COMMON_CORRUPTIONS, SEVERITIES,
                                           AttackError, CorruptionError, corrupt_batch, corrupt_image,
                                           eot_gradient, evaluate_robustness, is_stochastic,
                                           perturbation_norms, pgd, pixel_space_model, plain_backend_model,
                                           plot_robustness, project_l1_ball, read_results, seeded_noise,
                                           write_results)

N_CLASSES = 4
FLOAT_SLACK = 1e-5  # relative slack for float32 rounding of images + delta


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """These models are tiny: one thread is fastest, and immune to a busy machine's thread contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vonenet(noise_mode, noise_seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backend = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                nn.Flatten(), nn.Linear(16, N_CLASSES))
    return vonenet_from_backend(backend, image_size=64, simple_channels=16, complex_channels=16,
                                noise_mode=noise_mode, noise_seed=noise_seed)


def train(model, images, labels, steps=40):
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = torch.randperm(len(images), generator=order)[:16]
        optimiser.zero_grad()
        F.cross_entropy(model(images[batch]), labels[batch]).backward()
        optimiser.step()
    return model.eval()


def stack(dataset):
    return (torch.stack([dataset[i][0] for i in range(len(dataset))]),
            torch.tensor([dataset[i][1] for i in range(len(dataset))]))


def accuracy(model, images, labels, noise_seed=0):
    with torch.no_grad(), seeded_noise(model, noise_seed):
        return float((model(images).argmax(1) == labels).float().mean())


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp('gratings'))


@pytest.fixture(scope='module')
def data(folder):
    torch.manual_seed(0)
    train_set = datasets.ImageFolder(folder / 'train', transforms.ToTensor())
    val_set = datasets.ImageFolder(folder / 'val', transforms.ToTensor())
    return stack(train_set), stack(val_set), val_set


@pytest.fixture(scope='module')
def deterministic(data):
    (images, labels), _, _ = data
    return train(pixel_space_model(tiny_vonenet(None)), images, labels)


@pytest.fixture(scope='module')
def stochastic(data):
    (images, labels), _, _ = data
    return train(pixel_space_model(tiny_vonenet('neuronal')), images, labels)


@pytest.fixture(scope='module')
def val(data):
    return data[1]


def test_trained_models_are_well_above_chance(deterministic, stochastic, val):
    images, labels = val
    assert accuracy(deterministic, images, labels) > 0.8
    assert accuracy(stochastic, images, labels) > 0.8


# --- PGD -------------------------------------------------------------------------------------------
EPS_GRIDS = {'linf': [0.0, 0.003, 0.01, 0.03, 0.1], 'l2': [0.0, 0.1, 0.3, 1.0, 3.0],
             'l1': [0.0, 3.0, 10.0, 30.0, 100.0]}


@pytest.mark.parametrize('norm', sorted(EPS_GRIDS))
def test_pgd_accuracy_falls_as_eps_grows(deterministic, val, norm):
    images, labels = val
    clean = accuracy(deterministic, images, labels)
    accuracies = [accuracy(deterministic, pgd(deterministic, images, labels, norm, eps, steps=8, seed=0), labels)
                  for eps in EPS_GRIDS[norm]]
    assert accuracies[0] == clean
    assert all(later <= earlier for earlier, later in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[-1] <= 0.25 < clean, accuracies


@pytest.mark.parametrize('norm,eps', [('linf', 0.02), ('l2', 1.0), ('l1', 20.0)])
@pytest.mark.parametrize('start', [False, True])
def test_perturbation_respects_norm_bound_and_pixel_range(stochastic, val, norm, eps, start):
    images, labels = val[0][:8], val[1][:8]
    adversarial = pgd(stochastic, images, labels, norm, eps, steps=6, eot_draws=2, random_start=start, seed=3)
    delta = adversarial - images
    norms = perturbation_norms(delta, norm)
    assert adversarial.shape == images.shape and not adversarial.requires_grad
    assert float(adversarial.min()) >= 0 and float(adversarial.max()) <= 1
    assert bool((norms <= eps * (1 + FLOAT_SLACK)).all()), (norms.max(), eps)
    assert float(norms.max()) > 0.5 * eps  # the attack uses its budget


def test_l1_steps_are_sparse(deterministic, val):
    images, labels = val[0][:8], val[1][:8]
    delta = pgd(deterministic, images, labels, 'l1', 20.0, steps=6, seed=0) - images
    changed = (delta.flatten(1).abs() > 0).float().mean(dim=1)
    assert float(changed.max()) < 0.1  # six SLIDE steps on the top 1% of coordinates each


def test_l1_projection_is_the_euclidean_projection(tmp_path):
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(5, 3, 4, 4, generator=generator, dtype=torch.float64)
    eps = 3.0
    projected = project_l1_ball(points, eps)
    for point, result in zip(points, projected):
        magnitudes = point.abs().flatten().numpy()
        low, high = 0.0, magnitudes.max()  # bisection for the soft threshold, independent of the sort-based code
        for _ in range(200):
            middle = (low + high) / 2
            low, high = (middle, high) if np.maximum(magnitudes - middle, 0).sum() > eps else (low, middle)
        expected = np.sign(point.flatten().numpy()) * np.maximum(magnitudes - high, 0)
        np.testing.assert_allclose(result.flatten().numpy(), expected, atol=1e-9)
    inside = points / points.flatten(1).abs().sum(1).view(-1, 1, 1, 1) * 2.0
    assert torch.equal(project_l1_ball(inside, eps), inside)


def test_pgd_is_reproducible_with_a_seed(stochastic, val):
    images, labels = val[0][:6], val[1][:6]
    first = pgd(stochastic, images, labels, 'linf', 0.02, steps=3, eot_draws=2, random_start=True, seed=7)
    again = pgd(stochastic, images, labels, 'linf', 0.02, steps=3, eot_draws=2, random_start=True, seed=7)
    other = pgd(stochastic, images, labels, 'linf', 0.02, steps=3, eot_draws=2, random_start=True, seed=8)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_pgd_rejects_normalised_images_and_bad_settings(deterministic, val):
    images, labels = val[0][:2], val[1][:2]
    with pytest.raises(AttackError, match=r'\[0, 1\]'):
        pgd(deterministic, (images - 0.5) / 0.5, labels, 'linf', 0.01)
    with pytest.raises(AttackError, match='norm'):
        pgd(deterministic, images, labels, 'l0', 0.01)
    with pytest.raises(AttackError, match='eot_draws'):
        pgd(deterministic, images, labels, 'linf', 0.01, eot_draws=0)


# --- EOT -------------------------------------------------------------------------------------------
def single_draw_gradient(model, images, labels, seed):
    """The gradient of one forward/backward pass with the VOneBlock's noise restarted at ``seed``."""
    model.model.vone_block.reseed_noise(seed)
    inputs = images.clone().requires_grad_(True)
    loss = F.cross_entropy(model(inputs), labels, reduction='sum')
    return torch.autograd.grad(loss, inputs)[0]


def test_eot_gradient_is_the_mean_of_single_draw_gradients(val):
    model = pixel_space_model(tiny_vonenet('neuronal')).eval()
    images, labels = val[0][:4], val[1][:4]
    seeds = [11, 12, 13, 14]
    singles = [single_draw_gradient(model, images, labels, seed) for seed in seeds]
    model.model.vone_block.reseed_noise(0)
    averaged, _ = eot_gradient(model, images, labels, noise_seeds=seeds)
    assert not torch.allclose(singles[0], singles[1])  # the draws really differ
    torch.testing.assert_close(averaged, torch.stack(singles).mean(0), rtol=1e-4, atol=1e-7)


def test_eot_gradient_variance_shrinks_with_draws(val):
    # An untrained model: a confident one has heavy-tailed gradients that need many repeats to compare.
    model = pixel_space_model(tiny_vonenet('neuronal')).eval()
    images, labels = val[0][:4], val[1][:4]

    def spread(draws):
        gradients = torch.stack([eot_gradient(model, images, labels, noise_seeds=range(100 * r, 100 * r + draws))[0]
                                 for r in range(6)])
        return float(gradients.var(dim=0).mean())
    assert 4 < spread(1) / spread(8) < 16  # independent draws: variance / 8


def test_deterministic_model_gives_identical_attacks_for_any_eot_draws(deterministic, val):
    images, labels = val[0][:6], val[1][:6]
    assert not is_stochastic(deterministic)
    for norm, eps in (('linf', 0.02), ('l2', 1.0), ('l1', 20.0)):
        one = pgd(deterministic, images, labels, norm, eps, steps=3, eot_draws=1, random_start=True, seed=1)
        many = pgd(deterministic, images, labels, norm, eps, steps=3, eot_draws=5, random_start=True, seed=1)
        assert torch.equal(one, many), norm


def test_frozen_noise_counts_as_deterministic():
    model = pixel_space_model(tiny_vonenet('neuronal'))
    assert is_stochastic(model)
    model.model.vone_block.fix_noise(batch_size=4, seed=1, image_size=64)
    assert not is_stochastic(model)


def test_seeded_noise_leaves_the_models_own_noise_stream_alone(val):
    images = val[0][:2]
    undisturbed, disturbed = tiny_vonenet('neuronal', noise_seed=5).eval(), tiny_vonenet('neuronal', noise_seed=5).eval()
    with torch.no_grad():
        with seeded_noise(disturbed, 99):
            disturbed(images)
        assert torch.equal(undisturbed(images), disturbed(images))


# --- corruptions -----------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def picture():
    return grating(2, 64, np.random.default_rng(0))


def mean_change(picture, corrupted):
    return float(np.abs(corrupted.astype(float) - picture).mean())


@pytest.mark.parametrize('name', BLUR_CORRUPTIONS)
@pytest.mark.parametrize('shape', [(64, 64), (40, 72)])
def test_blur_corruptions_keep_shape_and_range_and_grow_with_severity(name, shape):
    picture = grating(0, max(shape), np.random.default_rng(1))[:shape[0], :shape[1]]
    mild, severe = (corrupt_image(picture, name, severity, seed=0) for severity in (1, 5))
    for corrupted in (mild, severe):
        assert corrupted.shape == picture.shape and corrupted.dtype == np.uint8
    assert 0 < mean_change(picture, mild) < mean_change(picture, severe)


@pytest.mark.parametrize('name', ALL_CORRUPTIONS)
def test_every_corruption_keeps_shape_dtype_and_changes_the_image(picture, name):
    for severity in (1, 5):
        corrupted = corrupt_image(picture, name, severity, seed=0)
        assert corrupted.shape == picture.shape and corrupted.dtype == np.uint8
        assert mean_change(picture, corrupted) > 0.5, (name, severity)


def test_average_change_grows_with_severity(picture):
    changes = [np.mean([mean_change(picture, corrupt_image(picture, name, severity, seed=0))
                        for name in COMMON_CORRUPTIONS]) for severity in SEVERITIES]
    assert all(later > earlier for earlier, later in zip(changes, changes[1:])), changes


def test_gaussian_blur_blurs_each_colour_channel_on_its_own():
    picture = np.zeros((48, 48, 3), np.uint8)
    picture[16:32, 16:32, 0] = 255  # a red square: blurring across channels would leak into green and blue
    blurred = corrupt_image(picture, 'gaussian_blur', 3)
    assert blurred[..., 1:].max() == 0
    assert 0 < blurred[10, 24, 0] < 255  # red did spread outside the square


def test_corruptions_are_seeded(picture):
    first, again, other = (corrupt_image(picture, 'gaussian_noise', 3, seed=s) for s in (1, 1, 2))
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_corrupt_batch_works_on_tensors_in_unit_range(val):
    images = val[0][:2]
    corrupted = corrupt_batch(images, 'motion_blur', 2, seed=0)
    assert corrupted.shape == images.shape and corrupted.dtype == images.dtype
    assert float(corrupted.min()) >= 0 and float(corrupted.max()) <= 1
    assert float((corrupted - images).abs().mean()) > 0.01


def test_corruption_errors_name_the_problem(picture):
    with pytest.raises(CorruptionError, match='gaussian_noize'):
        corrupt_image(picture, 'gaussian_noize', 1)
    with pytest.raises(CorruptionError, match='1..5'):
        corrupt_image(picture, 'fog', 6)
    with pytest.raises(CorruptionError, match='at least 32'):
        corrupt_image(picture[:20, :20], 'fog', 1)
    with pytest.raises(VOneNetError, match='uint8'):
        corrupt_image(picture.astype(np.float32), 'fog', 1)


# --- side-by-side evaluation -------------------------------------------------------------------------
def test_evaluate_robustness_side_by_side_with_table_and_plot(deterministic, stochastic, data, tmp_path):
    _, (images, labels), val_set = data
    models = {'VOneNet': stochastic, 'deterministic VOneNet': deterministic}
    table = evaluate_robustness(models, val_set, attacks=[('linf', [0, 0.1]), ('l2', [1.0])],
                                corruptions=['gaussian_noise', 'zoom_blur'], severities=(1, 5), eot_draws=2,
                                steps=3, seed=0, device='cpu', batch_size=5, max_images=12, progress=False)
    assert set(table.columns) >= {'model', 'family', 'kind', 'strength', 'accuracy', 'n'}
    assert len(table) == 2 * (1 + 2 + 1 + 2 * 2)
    assert (table.n == 12).all() and table.accuracy.between(0, 1).all()
    for name, model in models.items():
        rows = table[table.model == name].set_index(['family', 'strength'])
        clean = rows.loc[('clean', 0.0), 'accuracy']
        assert rows.loc[('pgd_linf', 0.0), 'accuracy'] == clean
        assert rows.loc[('pgd_linf', 0.1), 'accuracy'] < clean
    clean = table[(table.model == 'deterministic VOneNet') & (table.kind == 'clean')].accuracy.item()
    assert clean == pytest.approx(accuracy(deterministic, images[:12], labels[:12]))
    written = write_results(table, tmp_path / 'robustness.csv')
    json_path = write_results(table, tmp_path / 'robustness.json')
    assert read_results(written).shape == table.shape
    assert len(json.loads(json_path.read_text())) == len(table)
    plot = plot_robustness(table, tmp_path / 'robustness.png')
    assert plot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and plot.stat().st_size > 10_000


def test_evaluate_robustness_rejects_bare_vonenets_and_normalised_data(deterministic, val):
    images, labels = val[0][:4], val[1][:4]
    bare = build_vonenet('alexnet', num_classes=N_CLASSES, image_size=64, simple_channels=16, complex_channels=16)
    with pytest.raises(ValueError, match='pixel_space_model'):
        evaluate_robustness({'bare': bare}, [(images, labels)], attacks=[], progress=False)
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        evaluate_robustness({'m': deterministic}, [((images - 0.5) / 0.5, labels)], attacks=[], progress=False)
    with pytest.raises(VOneNetError, match='fogg'):
        evaluate_robustness({'m': deterministic}, [(images, labels)], attacks=[], corruptions=['fogg'],
                            progress=False)


def test_plain_backend_model_loads_weights_and_normalises_like_imagenet(tmp_path, val):
    import torchvision
    reference = torchvision.models.squeezenet1_1(weights=None, num_classes=N_CLASSES).eval()
    torch.save({'state_dict': {f'module.{k}': v for k, v in reference.state_dict().items()}}, tmp_path / 'w.pth')
    plain = plain_backend_model('squeezenet1_1', num_classes=N_CLASSES, weights_path=tmp_path / 'w.pth').eval()
    images = val[0][:2]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(plain(images), reference((images - mean) / std))


def test_plain_backend_model_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match='CORnet-S is not in torchvision'):
        plain_backend_model('cornets')
    with pytest.raises(VOneNetError, match='does not exist'):
        plain_backend_model('squeezenet1_1', weights_path=tmp_path / 'missing.pth')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_attack_and_evaluation_on_cuda(stochastic, val):
    images, labels = val[0][:4], val[1][:4]
    model = stochastic.to('cuda')
    try:
        adversarial = pgd(model, images.cuda(), labels.cuda(), 'l1', 10.0, steps=3, eot_draws=2, seed=0)
        assert adversarial.device.type == 'cuda'
        assert bool((perturbation_norms(adversarial - images.cuda(), 'l1') <= 10.0 * (1 + FLOAT_SLACK)).all())
        table = evaluate_robustness({'m': model}, [(images, labels)], attacks=[('linf', [0.01])],
                                    corruptions=['fog'], severities=(1,), steps=2, eot_draws=2, device='cuda',
                                    progress=False)
        assert len(table) == 3
    finally:
        stochastic.to('cpu')
