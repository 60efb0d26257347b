"""Bad checkpoints and names: each gives a clear error and leaves the file as it was."""
import argparse
import hashlib

import pytest
import torch

from vonenet_brainscore import CheckpointError, UnknownModelError, build_vonenet, get_model, list_models

FLAGS = {'arch': 'resnet50', 'stride': 4, 'simple_channels': 256, 'complex_channels': 256, 'k_exc': 25,
         'noise_mode': None, 'noise_scale': 0.35, 'noise_level': 0.07}


@pytest.fixture(scope='module')
def resnet_state():
    return {f'module.{k}': v for k, v in build_vonenet('resnet50', noise_mode=None).state_dict().items()}


def _save(path, state_dict, flags=FLAGS, **extra):
    torch.save({'flags': dict(flags), 'epoch': 70, 'state_dict': state_dict, 'optimizer': {}, **extra}, path)
    return path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _assert_refused(path, match, name='resnet50'):
    before = _digest(path)
    with pytest.raises(CheckpointError, match=match) as info:
        get_model(name, weights_path=path)
    assert str(path) in str(info.value)
    assert _digest(path) == before, 'a failed load must not modify the file'
    return info.value


def test_truncated_checkpoint(tmp_path, resnet_state):
    path = _save(tmp_path / 'full.pth.tar', resnet_state)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _assert_refused(path, 'truncated or corrupt: its zip archive is incomplete')


def test_random_bytes(tmp_path):
    path = tmp_path / 'noise.pth.tar'
    path.write_bytes(bytes(range(256)) * 40)
    _assert_refused(path, 'corrupt or not a PyTorch checkpoint')


def test_text_file(tmp_path):
    path = tmp_path / 'readme.pth.tar'
    path.write_text('these are not weights\n')
    _assert_refused(path, "is a text file .* Starts with: 'these are not weights")


def test_tensor_instead_of_checkpoint(tmp_path):
    path = tmp_path / 'tensor.pth'
    torch.save(torch.zeros(3), path)
    _assert_refused(path, "not a VOneNet checkpoint: expected a dict with 'flags' and 'state_dict'")


def test_checkpoint_needing_pickle_is_refused_with_reason(tmp_path, resnet_state):
    path = tmp_path / 'namespace.pth.tar'
    torch.save({'flags': argparse.Namespace(**FLAGS), 'state_dict': resnet_state}, path)
    error = _assert_refused(path, 'pickle')
    assert 'argparse.Namespace' in str(error) and 'arbitrary code' in str(error)


def test_checkpoint_of_another_architecture(tmp_path, resnet_state):
    path = _save(tmp_path / 'resnet.pth.tar', resnet_state)
    _assert_refused(path, 'is a resnet50 checkpoint but a alexnet model was requested', name='alexnet')


def test_flags_that_do_not_match_the_weights(tmp_path, resnet_state):
    path = _save(tmp_path / 'edited.pth.tar', resnet_state, flags={**FLAGS, 'arch': 'cornets'})
    _assert_refused(path, 'does not fit a VOnecornets', name='cornets')


def test_unknown_architecture_in_flags(tmp_path, resnet_state):
    path = _save(tmp_path / 'vgg.pth.tar', resnet_state, flags={**FLAGS, 'arch': 'vgg16'})
    _assert_refused(path, "architecture 'vgg16'")


def test_missing_and_unexpected_keys(tmp_path, resnet_state):
    state = dict(resnet_state)
    state.pop('module.model.layer4.2.bn3.running_var')
    state['module.model.extra.weight'] = torch.zeros(1)
    path = _save(tmp_path / 'keys.pth.tar', state)
    error = _assert_refused(path, '1 missing, 1 unexpected')
    assert 'model.layer4.2.bn3.running_var' in str(error) and 'model.extra.weight' in str(error)


def test_wrong_tensor_shape(tmp_path, resnet_state):
    state = dict(resnet_state)
    state['module.bottleneck.weight'] = torch.zeros(32, 512, 1, 1)
    _assert_refused(_save(tmp_path / 'shape.pth.tar', state), 'wrong shape')


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        get_model('resnet50', weights_path=tmp_path / 'nowhere.pth.tar')


def test_folder_instead_of_file_says_so(tmp_path, resnet_state):
    _save(tmp_path / 'epoch_70.pth.tar', resnet_state)
    with pytest.raises(CheckpointError) as info:
        get_model('resnet50', weights_path=tmp_path)
    message = str(info.value)
    assert f'{tmp_path} is a folder, but a checkpoint file is expected' in message
    assert 'does not exist' not in message
    assert 'epoch_70.pth.tar' in message  # the candidates in it are named


def test_broken_symlink(tmp_path):
    link = tmp_path / 'weights.pth.tar'
    link.symlink_to(tmp_path / 'moved-away.pth.tar')
    with pytest.raises(CheckpointError, match='broken symbolic link .*moved-away.pth.tar'):
        get_model('resnet50', weights_path=link)


def test_unknown_model_name_lists_the_valid_ones():
    with pytest.raises(UnknownModelError) as info:
        get_model('resnet18')
    for name in list_models():
        assert name in str(info.value)


def test_overrides_change_vone_settings_of_a_loaded_checkpoint(tmp_path, resnet_state):
    path = _save(tmp_path / 'ok.pth.tar', resnet_state, flags={**FLAGS, 'noise_mode': 'neuronal'})
    assert get_model('resnet50', weights_path=path).vone_block.noise_mode == 'neuronal'
    assert get_model('resnet50', weights_path=path, noise_mode=None).vone_block.noise_mode is None
    with pytest.raises(TypeError, match='unknown VOneBlock setting'):
        get_model('resnet50', weights_path=path, noise_mod=None)
