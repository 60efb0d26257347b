"""ImageNet-style validation and training on a tiny generated image folder (4 classes, 64 px)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision

from synthetic_imagefolder import make_imagefolder
from vonenet_brainscore import CheckpointError, DataError, VOneBlockConfig, build_vonenet, get_model
from vonenet_brainscore.errors import DataWarning, DeviceError
from vonenet_brainscore.published.checkpoints import checkpoint_dict, save_checkpoint
from vonenet_brainscore.training.data import image_folder
from vonenet_brainscore.training.evaluate import validate
from vonenet_brainscore.training.models import model_for_training
from vonenet_brainscore.training.train import train

# A small VOneNet: few Gabor channels at 64 px. ResNet50 is the back-end that learns the toy task in a
# few steps (its batch norms; AlexNet's plain stack needs hundreds of steps to leave chance).
ARCH = 'resnet50'
TINY = dict(image_size=64, simple_channels=16, complex_channels=16)
RECIPE = dict(batch_size=8, lr=0.003, step_size=4, step_factor=0.1, seed=0, workers=0, progress=False)
EPOCHS = 8
PUBLISHED_KEYS = {'flags', 'epoch', 'state_dict', 'optimizer'}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp('imagefolder'))


@pytest.fixture(scope='module')
def run(folder, tmp_path_factory):
    """One uninterrupted training run, shared by the tests that inspect its results and files."""
    output = tmp_path_factory.mktemp('run')
    history = train(folder, output, ARCH, epochs=EPOCHS, **RECIPE, **TINY)
    yield output, history
    shutil.rmtree(output, ignore_errors=True)  # checkpoints are ~200 MB each


@pytest.fixture(scope='module')
def tiny_model():
    """An untrained small VOneNet; validation leaves it as it was, so the tests share it."""
    return build_vonenet(ARCH, num_classes=4, **TINY)


def small_folder(path, **counts):
    return make_imagefolder(path, **{'per_class_train': 1, 'per_class_val': 3, **counts})


# --- training ----------------------------------------------------------------------------------------

def test_training_raises_val_accuracy_above_chance(run):
    _, history = run
    assert [record['epoch'] for record in history] == list(range(1, EPOCHS + 1))
    assert all(record['n_train_images'] == 48 for record in history)
    assert history[-1]['val_top1'] >= 0.6, [record['val_top1'] for record in history]  # chance is 0.25
    assert history[-1]['val_loss'] < history[0]['val_loss']


def test_learning_rate_steps_as_the_recipe(run):
    _, history = run
    assert [record['lr'] for record in history] == pytest.approx([3e-3] * 4 + [3e-4] * 4)


def test_checkpoint_has_the_published_format(run):
    output, _ = run
    files = sorted(path.name for path in output.iterdir())
    assert files == [f'epoch_{epoch:02d}.pth.tar' for epoch in range(1, EPOCHS + 1)] + ['history.json']
    checkpoint = torch.load(output / f'epoch_{EPOCHS:02d}.pth.tar', map_location='cpu', weights_only=True)
    assert set(checkpoint) == PUBLISHED_KEYS
    assert checkpoint['epoch'] == EPOCHS
    assert checkpoint['state_dict'] and all(key.startswith('module.') for key in checkpoint['state_dict'])
    assert 'module.model.fc.weight' in checkpoint['state_dict']
    assert set(checkpoint['optimizer']) == {'state', 'param_groups'}
    flags = checkpoint['flags']
    expected_config = VOneBlockConfig(**TINY).as_dict()
    assert {name: flags[name] for name in expected_config} == expected_config
    assert flags['arch'] == ARCH and flags['num_classes'] == 4
    assert (flags['lr'], flags['momentum'], flags['weight_decay'], flags['batch_size'], flags['epochs']) == \
        (0.003, 0.9, 1e-4, 8, EPOCHS)
    assert (flags['step_size'], flags['step_factor'], flags['torch_seed']) == (4, 0.1, 0)


def test_checkpoint_reloads_and_validates_as_during_training(run, folder):
    output, history = run
    model = get_model(ARCH, weights_path=output / f'epoch_{EPOCHS:02d}.pth.tar')
    result = validate(model, folder, batch_size=RECIPE['batch_size'], workers=0, noise_seed=RECIPE['seed'],
                      progress=False)
    assert result['top1'] == history[-1]['val_top1']
    assert result['top5'] == history[-1]['val_top5']
    assert result['loss'] == pytest.approx(history[-1]['val_loss'], rel=1e-5)
    assert (result['n_images'], result['n_classes']) == (24, 4)


def test_resume_continues_as_an_uninterrupted_run(run, folder, tmp_path):
    output, history = run
    shutil.copy(output / 'epoch_04.pth.tar', tmp_path / 'epoch_04.pth.tar')
    resumed = train(folder, tmp_path, ARCH, epochs=EPOCHS, resume=tmp_path, **RECIPE, **TINY)
    assert [record['epoch'] for record in resumed] == [5, 6, 7, 8]
    assert [record['lr'] for record in resumed] == pytest.approx([3e-4] * 4)  # the step after epoch 4
    straight = torch.load(output / f'epoch_{EPOCHS:02d}.pth.tar', map_location='cpu', weights_only=True)
    again = torch.load(tmp_path / f'epoch_{EPOCHS:02d}.pth.tar', map_location='cpu', weights_only=True)
    assert again['epoch'] == EPOCHS
    for key, value in straight['state_dict'].items():
        assert torch.equal(value, again['state_dict'][key]), key
    momentum = [state['momentum_buffer'] for state in straight['optimizer']['state'].values()]
    assert all(torch.equal(a, b['momentum_buffer']) for a, b in zip(momentum, again['optimizer']['state'].values()))
    assert resumed[-1]['train_loss'] == pytest.approx(history[-1]['train_loss'], rel=1e-6)
    for path in tmp_path.glob('*.pth.tar'):  # ~200 MB each; pytest keeps tmp folders of recent runs
        path.unlink()


def test_fine_tuning_replaces_the_classifier(run):
    output, _ = run
    model = model_for_training(ARCH, weights_path=output / 'epoch_01.pth.tar', num_classes=3)
    reference = get_model(ARCH, weights_path=output / 'epoch_01.pth.tar')
    assert model.model.fc.out_features == 3
    assert set(model.state_dict()) == set(reference.state_dict())
    assert torch.equal(model.bottleneck.weight, reference.bottleneck.weight)
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 3)


def test_resume_needs_a_checkpoint(folder, tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path)):
        train(folder, tmp_path / 'out', ARCH, epochs=1, resume=tmp_path, **RECIPE, **TINY)


# --- validation --------------------------------------------------------------------------------------

def test_validation_is_reproducible_and_survives_a_checkpoint_round_trip(tiny_model, tmp_path):
    root = small_folder(tmp_path / 'data')
    model = tiny_model
    first = validate(model, root, batch_size=4, workers=0, noise_seed=3, progress=False)
    second = validate(model, root, batch_size=4, workers=0, noise_seed=3, progress=False)
    assert (first['top1'], first['loss']) == (second['top1'], second['loss'])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    flags = {'arch': ARCH, **model.config.as_dict(), 'num_classes': 4}
    path = save_checkpoint(tmp_path / 'model.pth.tar', checkpoint_dict(model, optimizer, 1, flags))
    reloaded = validate(get_model(ARCH, weights_path=path), root, batch_size=4, workers=0, noise_seed=3,
                        progress=False)
    assert (reloaded['top1'], reloaded['top5']) == (first['top1'], first['top5'])
    assert reloaded['loss'] == pytest.approx(first['loss'], rel=1e-6)
    other_noise = validate(model, root, batch_size=4, workers=0, noise_seed=4, progress=False)
    assert other_noise['loss'] != first['loss'], 'the noise seed must reach the VOneBlock'


def test_stray_entries_are_skipped_with_a_warning_naming_them(tiny_model, tmp_path):
    root = small_folder(tmp_path / 'data')
    model = tiny_model
    clean = validate(model, root, batch_size=4, workers=0, progress=False)
    (root / 'val' / 'leftover.tar').write_bytes(b'not a class')
    (root / 'val' / '.DS_Store').write_bytes(b'')
    with pytest.warns(DataWarning, match=r"leftover\.tar.*\.DS_Store|\.DS_Store.*leftover\.tar"):
        stray = validate(model, root, batch_size=4, workers=0, progress=False)
    assert (stray['top1'], stray['loss'], stray['n_images'], stray['n_classes']) == \
        (clean['top1'], clean['loss'], clean['n_images'], clean['n_classes'])


def test_top5_with_four_classes_counts_every_image(tiny_model, tmp_path):
    result = validate(tiny_model, small_folder(tmp_path / 'data'), batch_size=4, workers=0, progress=False)
    assert (result['top5'], result['topk'], result['n_classes']) == (1.0, 4, 4)
    assert 0.0 <= result['top1'] <= 1.0


def test_missing_val_folder_is_a_clear_error(tiny_model, tmp_path):
    root = small_folder(tmp_path / 'data')
    shutil.rmtree(root / 'val')
    with pytest.raises(DataError, match=r"no 'val' folder") as info:
        validate(tiny_model, root, workers=0, progress=False)
    assert str(root / 'val') in str(info.value) and '<class>/<image>' in str(info.value)


def test_loose_images_without_class_folders_are_a_clear_error(tiny_model, tmp_path):
    root = small_folder(tmp_path / 'data')
    for image in list((root / 'val').rglob('*.png')):
        image.rename(root / 'val' / f'{image.parent.name}_{image.name}')
    for folder in [path for path in (root / 'val').iterdir() if path.is_dir()]:
        folder.rmdir()
    with pytest.raises(DataError, match='images but no class folders'):
        validate(tiny_model, root, workers=0, progress=False)


def test_empty_class_folder_is_a_clear_error(tiny_model, tmp_path):
    root = small_folder(tmp_path / 'data')
    (root / 'val' / 'n99999999').mkdir()
    (root / 'val' / 'n99999999' / 'notes.txt').write_text('no images here')
    with pytest.raises(DataError, match=r"class folder 'n99999999'.*no image files"):
        validate(tiny_model, root, workers=0, progress=False)


def test_unreadable_image_is_named(tiny_model, tmp_path):
    root = small_folder(tmp_path / 'data')
    broken = next((root / 'val').iterdir()) / 'broken.png'
    broken.write_bytes(b'\x89PNG truncated')
    with pytest.raises(DataError, match='broken.png'):
        validate(tiny_model, root, batch_size=4, workers=0, progress=False)


def test_class_order_and_samples_match_torchvision(tmp_path):
    root = small_folder(tmp_path / 'data')
    ours = image_folder(root, 'val')
    theirs = torchvision.datasets.ImageFolder(str(root / 'val'))
    assert ours.classes == theirs.classes and ours.class_to_idx == theirs.class_to_idx
    assert [(os.path.normpath(p), t) for p, t in ours.samples] == [(os.path.normpath(p), t) for p, t in theirs.samples]


def test_more_classes_than_outputs_is_refused(tmp_path):
    root = small_folder(tmp_path / 'data')
    with pytest.raises(DataError, match='4 classes but the model has 2 outputs'):
        validate(build_vonenet(ARCH, num_classes=2, **TINY), root, workers=0, progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the error raised without a GPU')
def test_missing_gpus_are_a_clear_error(tiny_model, tmp_path):
    with pytest.raises(DeviceError, match='ngpus=0'):
        validate(tiny_model, small_folder(tmp_path / 'data'), ngpus=1, progress=False)


# --- several processes -------------------------------------------------------------------------------

DDP_SCRIPT = """
import json, os, sys
import torch
from vonenet_brainscore.training.train import train
root, output = sys.argv[1], sys.argv[2]
history = train(root, output, {arch!r}, epochs=1, **{recipe!r}, **{tiny!r})
with open(os.path.join(output, 'rank%s.json' % os.environ['RANK']), 'w') as stream:
    json.dump(history, stream)
"""


def test_distributed_training_with_torchrun_writes_a_loadable_checkpoint(tmp_path):
    root = small_folder(tmp_path / 'data', per_class_train=4, per_class_val=2)
    output = tmp_path / 'out'
    script = tmp_path / 'train_ddp.py'
    script.write_text(textwrap.dedent(DDP_SCRIPT).format(arch=ARCH, recipe={**RECIPE, 'batch_size': 8},
                                                          tiny=TINY))
    environment = {**os.environ, 'PYTHONPATH': str(REPO), 'OMP_NUM_THREADS': '1'}
    completed = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(script),
         str(root), str(output)], env=environment, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    ranks = [json.loads((output / f'rank{rank}.json').read_text()) for rank in (0, 1)]
    assert [len(history) for history in ranks] == [1, 1]
    assert ranks[0][0]['n_train_images'] == ranks[1][0]['n_train_images'] == 16  # each image once, over both
    assert ranks[0][0]['train_loss'] == pytest.approx(ranks[1][0]['train_loss'])
    assert ranks[0][0]['val_top1'] == ranks[1][0]['val_top1']
    assert sorted(path.name for path in output.iterdir()) == ['epoch_01.pth.tar', 'history.json', 'rank0.json',
                                                              'rank1.json']
    checkpoint = torch.load(output / 'epoch_01.pth.tar', map_location='cpu', weights_only=True)
    assert set(checkpoint) == PUBLISHED_KEYS and checkpoint['flags']['world_size'] == 2
    model = get_model(ARCH, weights_path=output / 'epoch_01.pth.tar')
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 4)
    (output / 'epoch_01.pth.tar').unlink()
