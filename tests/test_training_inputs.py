"""Bad input to training and to image folders: resumes that contradict their checkpoint, folders
that torchvision's ImageFolder counts differently, output folders that cannot be written."""
import json
import os
import shutil
import warnings

import pytest
import torch
import torchvision

from synthetic_imagefolder import CLASSES, make_imagefolder
from vonenet_brainscore import DataError, build_vonenet
from vonenet_brainscore.cli import main
from vonenet_brainscore.errors import DataWarning
from vonenet_brainscore.training.data import image_folder
from vonenet_brainscore.training.evaluate import validate
from vonenet_brainscore.training.train import train

# One epoch on 8 images of 64 px: a real checkpoint in seconds.
FIRST_RUN = ['--epochs', '1', '--batch-size', '4', '--lr', '0.001', '--step-size', '5', '--workers', '0',
             '--image-size', '64', '--quiet']


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp('images'), per_class_train=2, per_class_val=1, size=32)


@pytest.fixture(scope='module')
def run(folder, tmp_path_factory):
    """A one-epoch resnet50 run: epoch_01.pth.tar with lr 0.001, image size 64, noise on."""
    output = tmp_path_factory.mktemp('run')
    assert main(['train', 'resnet50', '--in-path', str(folder), '--output-path', str(output)] + FIRST_RUN) == 0
    yield output
    shutil.rmtree(output, ignore_errors=True)  # ~200 MB a checkpoint


@pytest.fixture
def resumable(run, tmp_path):
    """A copy of the run's folder, so a resumed run never changes the shared one."""
    copy = tmp_path / 'resumed'
    shutil.copytree(run, copy)
    yield copy
    shutil.rmtree(copy, ignore_errors=True)


def _resume(folder, output, *extra):
    return main(['train', *extra, '--in-path', str(folder), '--output-path', str(output), '--resume', str(output),
                 '--workers', '0', '--quiet'])


def _checkpoints(output):
    return sorted(path.name for path in output.glob('epoch_*.pth.tar'))


# --- item 5: a resume never drops an argument without a word --------------------------------------

@pytest.mark.parametrize('arguments, setting, saved, given', [
    (['alexnet', '--epochs', '2'], 'model', 'resnet50', 'alexnet'),
    (['resnet50', '--epochs', '2', '--image-size', '32'], 'image_size', '64', '32'),
    (['resnet50', '--epochs', '2', '--no-noise'], 'noise_mode', "'neuronal'", 'None'),
    (['resnet50', '--epochs', '2', '--num-classes', '7'], 'num_classes', '4', '7'),
    (['resnet50', '--epochs', '2', '--lr', '0.01'], 'lr', '0.001', '0.01'),
])
def test_resume_refuses_arguments_that_contradict_the_checkpoint(folder, resumable, capsys, arguments, setting,
                                                                   saved, given):
    assert _resume(folder, resumable, *arguments) == 2
    error = capsys.readouterr().err
    assert 'epoch_01.pth.tar' in error and 'contradict' in error
    line = next(line for line in error.splitlines() if line.strip().startswith(f'- {setting} '))
    assert saved in line and given in line, line
    assert _checkpoints(resumable) == ['epoch_01.pth.tar'], 'nothing may be trained'
    if setting == 'lr':
        assert '--change-recipe' in error
    else:
        assert '--weights' in error  # what to do instead: fine-tune from the checkpoint as a new run


def test_resume_names_every_contradiction_at_once(folder, resumable, capsys):
    assert _resume(folder, resumable, 'alexnet', '--epochs', '2', '--image-size', '32', '--momentum', '0.5') == 2
    error = capsys.readouterr().err
    for setting in ('model', 'image_size', 'momentum'):
        assert f'- {setting} ' in error


def test_resume_with_other_weights_is_refused(folder, resumable, run, capsys):
    assert _resume(folder, resumable, 'resnet50', '--epochs', '2', '--weights', str(run / 'epoch_01.pth.tar')) == 2
    assert 'weights_path (--weights)' in capsys.readouterr().err


def test_resume_without_recipe_arguments_continues_the_checkpoints_recipe(folder, resumable):
    """The checkpoint was trained with lr 0.001; the resumed epoch must not fall back to the default 0.1."""
    assert _resume(folder, resumable, 'resnet50', '--epochs', '2') == 0
    history = json.loads((resumable / 'history.json').read_text())
    assert [record['epoch'] for record in history] == [1, 2]
    assert history[1]['lr'] == pytest.approx(0.001)
    flags = torch.load(resumable / 'epoch_02.pth.tar', map_location='cpu', weights_only=True)['flags']
    assert (flags['lr'], flags['batch_size'], flags['step_size'], flags['image_size']) == (0.001, 4, 5, 64)


def test_change_recipe_lets_the_learning_rate_change_and_says_so(folder, resumable):
    with pytest.warns(UserWarning, match=r'changed recipe.*lr 0\.001 -> 0\.01'):
        assert _resume(folder, resumable, 'resnet50', '--epochs', '2', '--lr', '0.01', '--change-recipe') == 0
    history = json.loads((resumable / 'history.json').read_text())
    assert history[1]['lr'] == pytest.approx(0.01)


def test_change_recipe_still_refuses_the_architecture(folder, resumable, capsys):
    assert _resume(folder, resumable, 'alexnet', '--epochs', '2', '--change-recipe') == 2
    assert '- model ' in capsys.readouterr().err


def test_resume_on_other_class_folders_is_refused(resumable, tmp_path):
    other = make_imagefolder(tmp_path / 'other', per_class_train=2, per_class_val=1, size=32)
    (other / 'train' / CLASSES[0]).rename(other / 'train' / 'zebra')
    (other / 'val' / CLASSES[0]).rename(other / 'val' / 'zebra')
    with pytest.raises(DataError, match=r"only in the checkpoint: 'horizontal_red'.*only in the folder: 'zebra'"):
        train(other, resumable, 'resnet50', epochs=2, workers=0, resume=resumable, progress=False)


def test_resume_past_the_last_epoch_says_there_is_nothing_to_train(folder, resumable):
    with pytest.warns(UserWarning, match='nothing to train'):
        assert _resume(folder, resumable, 'resnet50', '--epochs', '1') == 0


# --- output folder, before any work ----------------------------------------------------------------

def test_train_output_path_that_is_a_file_fails_before_training(folder, tmp_path):
    from vonenet_brainscore.training.train import OutputPathError
    target = tmp_path / 'checkpoints'
    target.write_text('a file')
    with pytest.raises(OutputPathError, match='is an existing file'):
        train(folder, target, 'resnet50', epochs=1, workers=0, progress=False, image_size=64)
    assert main(['train', 'resnet50', '--in-path', str(folder), '--output-path', str(target)] + FIRST_RUN) == 2


# --- item 7: image folders counted as torchvision's ImageFolder counts them ------------------------

def _awkward_folder(root):
    """8 plain images; one in a nested sub-folder, one as a symlink, one symlink to a missing file."""
    root = make_imagefolder(root, per_class_train=2, per_class_val=2, size=16)
    for split in ('train', 'val'):
        first = root / split / CLASSES[0]
        (first / 'more' / 'deeper').mkdir(parents=True)
        (root / split / CLASSES[1] / '001.png').rename(first / 'more' / 'deeper' / 'nested.png')
        os.symlink(root / split / CLASSES[2] / '000.png', root / split / CLASSES[3] / 'linked.png')
        os.symlink(root / 'nowhere.png', root / split / CLASSES[3] / 'dangling.png')
    return root


def test_nested_and_linked_images_count_as_in_torchvision_and_dangling_links_are_named(tmp_path):
    root = _awkward_folder(tmp_path / 'data')
    theirs = torchvision.datasets.ImageFolder(str(root / 'val'))
    assert len(theirs.samples) == 10  # 8 - 1 moved + 1 nested + 1 linked + 1 dangling
    dangling = os.path.join(root, 'val', CLASSES[3], 'dangling.png')
    with pytest.warns(DataWarning, match=r"links to missing files: 'antidiagonal_grey/dangling\.png -> "):
        ours = image_folder(root, 'val')
    assert ours.classes == theirs.classes
    expected = [(os.path.normpath(path), target) for path, target in theirs.samples if path != dangling]
    assert [(os.path.normpath(path), target) for path, target in ours.samples] == expected
    assert len(ours) == 9


def test_validate_and_train_see_every_image_of_a_nested_folder(tmp_path):
    root = _awkward_folder(tmp_path / 'data')
    model = build_vonenet('resnet50', num_classes=4, image_size=64, simple_channels=16, complex_channels=16)
    with pytest.warns(DataWarning, match='dangling'):
        result = validate(model, root, batch_size=4, workers=0, progress=False)
    assert result['n_images'] == 9
    with pytest.warns(DataWarning, match='dangling'):
        assert len(image_folder(root, 'train')) == 9


def test_a_link_back_up_the_tree_is_named_not_walked_forever(tmp_path):
    root = make_imagefolder(tmp_path / 'data', per_class_train=1, per_class_val=2, size=16)
    os.symlink(root / 'val' / CLASSES[0], root / 'val' / CLASSES[0] / 'loop')
    with pytest.warns(DataWarning, match=r"links to a folder above them: 'horizontal_red/loop -> "):
        assert len(image_folder(root, 'val')) == 8


def test_hidden_entries_in_class_folders_are_named(tmp_path):
    root = make_imagefolder(tmp_path / 'data', per_class_train=1, per_class_val=2, size=16)
    first = root / 'val' / CLASSES[0]
    (first / '.ipynb_checkpoints').mkdir()
    shutil.copy(first / '000.png', first / '.ipynb_checkpoints' / '000-checkpoint.png')
    (first / '._000.png').write_bytes(b'AppleDouble')
    with pytest.warns(DataWarning) as record:
        assert len(image_folder(root, 'val')) == 8
    message = ' '.join(str(warning.message) for warning in record)
    assert "'horizontal_red/.ipynb_checkpoints/'" in message and "'horizontal_red/._000.png'" in message


def test_a_plain_folder_gives_no_warning(tmp_path):
    root = make_imagefolder(tmp_path / 'data', per_class_train=1, per_class_val=2, size=16)
    with warnings.catch_warnings():
        warnings.simplefilter('error', DataWarning)
        assert len(image_folder(root, 'val')) == 8


@pytest.mark.skipif(os.geteuid() == 0, reason='root can list any folder')
def test_an_unreadable_sub_folder_is_an_error(tmp_path):
    root = make_imagefolder(tmp_path / 'data', per_class_train=1, per_class_val=2, size=16)
    locked = root / 'val' / CLASSES[0] / 'locked'
    locked.mkdir()
    locked.chmod(0)
    try:
        with pytest.raises(DataError, match='cannot list the folder'):
            image_folder(root, 'val')
    finally:
        locked.chmod(0o755)
