"""Checkpoint flags and file contents are checked before anything is built (issue 13, item 3).

Every refusal names the file, the flag (or tensor) at fault, its value and what is allowed. The
calls run under a cap on this process's memory, so that code which trusted a forged flag fails
here with an allocation error instead of taking the machine's memory.
"""
import argparse
import os
import resource
import time
import warnings
from contextlib import contextmanager

import pytest
import torch

from vonenet_brainscore import CheckpointError, build_vonenet, get_model

PUBLISHED_FLAGS = {'arch': 'resnet50', 'stride': 4, 'simple_channels': 256, 'complex_channels': 256, 'k_exc': 25,
                   'noise_mode': 'neuronal', 'noise_scale': 0.35, 'noise_level': 0.07}
FILTERS = ('module.vone_block.simple_conv_q0.weight', 'module.vone_block.simple_conv_q1.weight')


def _vm_data() -> int:
    with open('/proc/self/status') as status:
        for line in status:
            if line.startswith('VmData:'):
                return int(line.split()[1]) * 1024
    raise RuntimeError('no VmData in /proc/self/status')


@contextmanager
def memory_cap(extra=3 * 1024 ** 3):
    """At most ``extra`` more bytes of heap for this process while the block runs (Linux; elsewhere no cap)."""
    if not os.path.exists('/proc/self/status'):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = _vm_data() + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _tiny(path, flags, state_dict=None):
    """A forged checkpoint of about a kilobyte: the published layout, with tiny tensors."""
    state_dict = state_dict if state_dict is not None else {key: torch.zeros(1) for key in FILTERS}
    torch.save({'flags': dict(flags), 'epoch': 70, 'state_dict': state_dict, 'optimizer': {}}, path)
    return path


def _refused(path, *fragments, name='resnet50', **overrides):
    started = time.monotonic()
    with memory_cap():
        with pytest.raises(CheckpointError) as info:
            get_model(name, weights_path=path, **overrides)
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, f'{fragment!r} not in: {message}'
    assert time.monotonic() - started < 5, 'refusing a bad flag must not build anything'
    return message


@pytest.fixture(scope='module')
def resnet_state():
    return {f'module.{k}': v for k, v in build_vonenet('resnet50', noise_mode=None).state_dict().items()}


def test_issue_example_huge_channel_count_is_refused_before_allocating(tmp_path):
    path = _tiny(tmp_path / 'forged.pth.tar', {**PUBLISHED_FLAGS, 'simple_channels': 5_000_000})
    assert path.stat().st_size < 4096

    message = _refused(path, 'flag simple_channels=5000000', 'allowed', 'from 0 to')

    assert 'published models use 256' in message


BAD_FLAGS = [
    ('simple_channels', 5_000_000, 'out of range'),
    ('complex_channels', -1, 'out of range'),
    ('simple_channels', True, 'not an integer'),
    ('simple_channels', '256', 'not an integer'),
    ('simple_channels', 256.0, 'not an integer'),
    ('ksize', 24, 'is even'),
    ('ksize', 10_001, 'out of range'),
    ('ksize', '25', 'not an integer'),
    ('stride', 0, 'out of range'),
    ('stride', 1000, 'out of range'),
    ('noise_mode', 'poisson', 'not a known noise mode'),
    ('noise_mode', 3, 'not a known noise mode'),
    ('noise_scale', -0.35, 'out of range'),
    ('noise_level', float('nan'), 'not finite'),
    ('k_exc', float('inf'), 'not finite'),
    ('k_exc', 0, 'out of range'),
    ('visual_degrees', 0, 'out of range'),
    ('visual_degrees', -8, 'out of range'),
    ('visual_degrees', 1e9, 'out of range'),
    ('visual_degrees', '8', 'not a number'),
    ('image_size', 10 ** 6, 'out of range'),
    ('image_size', 0, 'out of range'),
    ('sf_corr', 2.0, 'out of range'),
    ('sf_max', -1, 'out of range'),
    ('gabor_seed', -1, 'out of range'),
    ('gabor_seed', 2 ** 40, 'out of range'),
    ('colour_seed', 1.5, 'not an integer'),
    ('rand_param', 'yes', 'not a boolean'),
    ('num_classes', 10 ** 9, 'out of range'),
    ('num_classes', 0, 'out of range'),
]


@pytest.mark.parametrize('flag, value, problem', BAD_FLAGS, ids=[f'{f}={v!r}' for f, v, _ in BAD_FLAGS])
def test_each_bad_flag_names_file_flag_value_and_what_is_allowed(tmp_path, flag, value, problem):
    path = _tiny(tmp_path / 'bad.pth.tar', {**PUBLISHED_FLAGS, flag: value})
    _refused(path, f'flag {flag}={value!r}', problem, 'allowed:')


@pytest.mark.parametrize('flags, names', [
    ({'simple_channels': 0, 'complex_channels': 0}, ['simple_channels=0 (flag)', 'complex_channels=0 (flag)']),
    ({'simple_channels': 4096, 'complex_channels': 4096, 'ksize': 101}, ['ksize=101 (flag)', 'at most']),
    ({'sf_min': 5, 'sf_max': 2}, ['sf_min=5 (flag)', 'sf_max=2 (flag)']),
    ({'noise_mode': 'neuronal', 'noise_scale': 0}, ['noise_scale=0 (flag)']),
], ids=['no-channels', 'filter-bank-too-large', 'sf-range-reversed', 'neuronal-noise-scale-zero'])
def test_flags_that_are_wrong_together_name_each_flag(tmp_path, flags, names):
    path = _tiny(tmp_path / 'combo.pth.tar', {**PUBLISHED_FLAGS, **flags})
    _refused(path, *names)


def test_flags_within_range_but_larger_than_the_tensors_are_refused_before_building(tmp_path):
    # 4096 + 4096 channels are allowed as such, but this 1 KB file holds no such filters
    path = _tiny(tmp_path / 'forged.pth.tar', {**PUBLISHED_FLAGS, 'simple_channels': 4096, 'complex_channels': 4096})
    message = _refused(path, 'simple_channels=4096', 'vone_block.simple_conv_q0.weight', 'shape (1,)')
    assert '8192 Gabor filters' in message


def test_flags_that_contradict_the_weights_name_flag_and_tensor(tmp_path, resnet_state):
    path = tmp_path / 'edited.pth.tar'
    torch.save({'flags': {**PUBLISHED_FLAGS, 'simple_channels': 128}, 'state_dict': resnet_state}, path)
    _refused(path, 'simple_channels=128', 'vone_block.simple_conv_q0.weight', '(512, 3, 25, 25)')


def test_ksize_that_contradicts_the_weights(tmp_path, resnet_state):
    path = tmp_path / 'edited.pth.tar'
    torch.save({'flags': {**PUBLISHED_FLAGS, 'ksize': 31}, 'state_dict': resnet_state}, path)
    _refused(path, 'ksize=31', 'vone_block.simple_conv_q0.weight')


def test_num_classes_that_contradicts_the_classifier(tmp_path, resnet_state):
    path = tmp_path / 'edited.pth.tar'
    torch.save({'flags': {**PUBLISHED_FLAGS, 'num_classes': 10}, 'state_dict': resnet_state}, path)
    _refused(path, 'num_classes=10', 'model.fc.weight', '1000 outputs')


def test_published_flags_still_load(tmp_path, resnet_state):
    path = tmp_path / 'ok.pth.tar'
    torch.save({'flags': {**PUBLISHED_FLAGS, 'noise_mode': 'None', 'lr': 0.1, 'epochs': 70}, 'epoch': 70,
                'state_dict': resnet_state, 'optimizer': {}}, path)
    model = get_model('resnet50', weights_path=path)
    assert model.vone_block.noise_mode is None
    assert model.config.simple_channels == 256 and model.config.ksize == 25


def test_bad_override_names_the_argument(tmp_path, resnet_state):
    path = tmp_path / 'ok.pth.tar'
    torch.save({'flags': dict(PUBLISHED_FLAGS), 'state_dict': resnet_state}, path)
    with pytest.raises(ValueError, match=r'argument visual_degrees=-1 is out of range; allowed: a finite number above 0'):
        get_model('resnet50', weights_path=path, visual_degrees=-1)


@pytest.mark.parametrize('flags', [['not', 'a', 'dict'], 'resnet50'])
def test_flags_that_are_not_a_dict(tmp_path, flags):
    path = tmp_path / 'flags.pth.tar'
    torch.save({'flags': flags, 'state_dict': {}}, path)
    _refused(path, "'flags' must be a dict")


def test_arch_that_is_not_a_name(tmp_path):
    path = _tiny(tmp_path / 'arch.pth.tar', {**PUBLISHED_FLAGS, 'arch': 50})
    _refused(path, 'flag arch=50', 'not a name')


@pytest.mark.parametrize('state_dict, fragment', [
    ([1, 2, 3], "'state_dict' must map parameter names to tensors, got list"),
    ({'module.vone_block.simple_conv_q0.weight': [0.0]}, "holds 'module.vone_block.simple_conv_q0.weight': list"),
], ids=['list', 'not-a-tensor'])
def test_state_dict_that_is_not_tensors(tmp_path, state_dict, fragment):
    path = tmp_path / 'state.pth.tar'
    torch.save({'flags': dict(PUBLISHED_FLAGS), 'state_dict': state_dict}, path)
    _refused(path, fragment)


def test_state_dict_without_the_vone_filters_is_not_a_vonenet_checkpoint(tmp_path):
    path = tmp_path / 'plain-resnet.pth.tar'
    torch.save({'flags': dict(PUBLISHED_FLAGS), 'state_dict': {'module.conv1.weight': torch.zeros(2, 3, 7, 7)}}, path)
    _refused(path, 'has no vone_block.simple_conv_q0.weight', 'not a VOneNet checkpoint')


# --- what the file is, told apart -----------------------------------------------------------------
class RunsAShellCommand:
    """Unpickling this with full pickle would run ``touch <marker>``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_malicious_pickle_is_refused_as_unsafe_not_called_corrupt(tmp_path):
    marker = tmp_path / 'it-ran'
    path = tmp_path / 'evil.pth.tar'
    torch.save({'flags': dict(PUBLISHED_FLAGS), 'state_dict': {}, 'payload': RunsAShellCommand(marker)}, path)

    message = _refused(path, 'refused as unsafe', 'arbitrary code', 'system', 'may be malicious', 'nothing in it ran')

    assert 'corrupt' not in message
    assert not marker.exists()


@pytest.mark.parametrize('payload, named', [
    (lambda: {'flags': argparse.Namespace(**PUBLISHED_FLAGS), 'state_dict': {}}, 'argparse.Namespace'),
    (lambda: torch.nn.Linear(2, 2), 'torch.nn.modules.linear.Linear'),
    (lambda: {'flags': dict(PUBLISHED_FLAGS), 'state_dict': {}, 'window': slice(0, 2)}, 'slice'),
], ids=['namespace-flags', 'whole-module', 'slice'])
def test_checkpoint_needing_pickle_says_unsafe_and_refused(tmp_path, payload, named):
    path = tmp_path / 'objects.pth.tar'
    torch.save(payload(), path)
    message = _refused(path, 'refused as unsafe', named, 'weights_only=True', 'torch.save(')
    assert 'corrupt' not in message


def test_html_page_saved_as_checkpoint(tmp_path):
    path = tmp_path / 'voneresnet50_e70.pth.tar'
    path.write_text('<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>Denied</body></html>\n')
    message = _refused(path, 'HTML', 'not a PyTorch checkpoint', '403 Forbidden', 'delete it')
    assert 'corrupt' not in message


def test_empty_file(tmp_path):
    path = tmp_path / 'empty.pth.tar'
    path.write_bytes(b'')
    _refused(path, 'is empty (0 bytes)', 'interrupted')


def test_plain_pickle_is_refused_unread(tmp_path):
    import pickle
    path = tmp_path / 'pickled.pth.tar'
    path.write_bytes(pickle.dumps({'flags': PUBLISHED_FLAGS, 'state_dict': {}}, protocol=4))
    _refused(path, 'plain Python pickle', 'refused unread', 'arbitrary code')


def test_truncated_legacy_format(tmp_path, resnet_state):
    path = tmp_path / 'legacy.pth.tar'
    small = {k: v for k, v in resnet_state.items() if 'vone_block' in k}
    torch.save({'flags': dict(PUBLISHED_FLAGS), 'state_dict': small}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    _refused(path, 'truncated or corrupt', 'legacy format')


def test_gzipped_checkpoint(tmp_path):
    import gzip
    path = tmp_path / 'weights.pth.tar.gz'
    path.write_bytes(gzip.compress(b'anything'))
    _refused(path, 'gzip-compressed', 'gunzip')


def test_torchscript_archive(tmp_path):
    path = tmp_path / 'scripted.pt'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # torch.jit.script is deprecated; torch.load says it dispatches
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
        _refused(path, 'TorchScript archive', 'torch.jit.load')


def test_random_bytes_name_size_and_start(tmp_path):
    path = tmp_path / 'noise.pth.tar'
    path.write_bytes(bytes(range(256)) * 40)
    _refused(path, 'corrupt or not a PyTorch checkpoint', '10,240 bytes', '00 01 02 03')

