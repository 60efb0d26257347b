"""What the VOneBlock and a VOneNet do with bad images: a clear error before any method runs.

Wrong layouts used to reach the compiled kernels, which read out of bounds (a 3-D image
segfaulted, an image-ordered batch gave logits), so those calls run in a child process: a
regression fails these tests instead of killing pytest.
"""
import json
import re
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import vonenet_brainscore
from vonenet_brainscore import VOneBlock, build_vonenet
from vonenet_brainscore.vone.accel import native
from vonenet_brainscore.vone.block import METHODS

COMPILED = pytest.param('compiled', marks=pytest.mark.skipif(native.find_compiler() is None,
                                                              reason='no C compiler to build the kernels'))
EVERY_METHOD = ['dense', 'grouped', 'spectral', COMPILED, 'auto']

# Runs in a child: each bad input through the published-size VOneNet and through the VOneBlock with
# every method (the compiled kernels forced where asked), and through the compiled cells directly.
CHILD = textwrap.dedent('''
    import json, sys, traceback
    import numpy as np
    import torch
    import vonenet_brainscore
    from vonenet_brainscore import VOneBlock, get_model
    from vonenet_brainscore.vone.accel import native
    from vonenet_brainscore.vone.accel.compiled import CompiledCells

    torch.set_num_threads(1)
    cases = {
        'one image, no batch dimension': lambda: torch.rand(3, 224, 224),
        'image-ordered batch': lambda: torch.rand(1, 224, 224, 3),
        'four channels': lambda: torch.rand(1, 4, 224, 224),
        'one grey channel': lambda: torch.rand(2, 1, 224, 224),
        'uint8 pixels': lambda: torch.randint(0, 256, (1, 3, 224, 224), dtype=torch.uint8),
        'uint8 image-ordered': lambda: torch.randint(0, 256, (1, 224, 224, 3), dtype=torch.uint8),
        'int64 pixels': lambda: torch.randint(0, 256, (1, 3, 224, 224)),
        'bool pixels': lambda: torch.ones(1, 3, 224, 224, dtype=torch.bool),
        'complex pixels': lambda: torch.rand(1, 3, 224, 224, dtype=torch.complex64),
        'empty batch': lambda: torch.rand(0, 3, 224, 224),
        '5-D': lambda: torch.rand(1, 1, 3, 224, 224),
        '2-D': lambda: torch.rand(224, 224),
        'numpy array': lambda: np.random.rand(1, 3, 224, 224).astype('float32'),
        'list': lambda: [[0.0] * 224] * 3,
    }
    net = get_model('resnet50', pretrained=False, noise_mode=None).eval()
    block = VOneBlock(noise_mode=None, simple_channels=16, complex_channels=16).eval()
    q0, q1 = block.simple_conv_q0.weight, block.simple_conv_q1.weight
    cells = CompiledCells(q0, q1, 16, 4, 12, native.kernels()) if native.kernels() is not None else None
    targets = [('VOneNet', lambda x: net(x))]
    for method in ('dense', 'grouped', 'spectral', 'compiled', 'auto'):
        targets.append((f'VOneBlock {method}', lambda x, method=method: (setattr(block, 'method', method), block(x))))
        targets.append((f'gabors_f {method}', lambda x, method=method: (setattr(block, 'method', method),
                                                                         block.gabors_f(x))))
    if cells is not None:
        targets.append(('CompiledCells', lambda x: cells(x, (1.0, 1.0))))
    print(json.dumps({'package': vonenet_brainscore.__file__}), flush=True)
    for case, make in cases.items():
        for target, call in targets:
            record = {'case': case, 'target': target}
            try:
                with torch.no_grad():
                    result = call(make())
                record['outcome'] = 'returned'
            except Exception as error:
                record.update(outcome='raised', type=type(error).__name__, message=str(error),
                              bases=[c.__name__ for c in type(error).__mro__])
            print(json.dumps(record), flush=True)
    small = torch.rand(1, 3, 20, 20)
    for method in ('dense', 'grouped', 'spectral', 'compiled', 'auto'):
        block.method = method
        record = {'case': 'crop smaller than the filters', 'target': f'gabors_f {method}'}
        try:
            with torch.no_grad():
                block.gabors_f(small, padding=0)
            record['outcome'] = 'returned'
        except Exception as error:
            record.update(outcome='raised', type=type(error).__name__, message=str(error),
                          bases=[c.__name__ for c in type(error).__mro__])
        print(json.dumps(record), flush=True)
''')

# case -> (error class, words the message must hold: what was received and what to do)
EXPECTED = {
    'one image, no batch dimension': ('InputError', ['(3, 224, 224)', '.unsqueeze(0)']),
    'image-ordered batch': ('InputError', ['(1, 224, 224, 3)', '.permute(0, 3, 1, 2)']),
    'four channels': ('InputError', ['(1, 4, 224, 224)', '[:, :3]']),
    'one grey channel': ('InputError', ['(2, 1, 224, 224)', '.expand(-1, 3, -1, -1)']),
    'uint8 pixels': ('InputTypeError', ['torch.uint8', '.float() / 255', 'normalise']),
    'uint8 image-ordered': ('InputTypeError', ['torch.uint8', '.float() / 255', '.permute(0, 3, 1, 2)']),
    'int64 pixels': ('InputTypeError', ['torch.int64', '.float() / 255']),
    'bool pixels': ('InputTypeError', ['torch.bool', 'floating-point']),
    'complex pixels': ('InputTypeError', ['torch.complex64', '.real']),
    'empty batch': ('InputError', ['(0, 3, 224, 224)', 'empty batch', 'at least one image']),
    '5-D': ('InputError', ['5-D', '(1, 1, 3, 224, 224)', '.flatten(0, 1)']),
    '2-D': ('InputError', ['2-D', '(224, 224)', '.unsqueeze(0)']),
    'numpy array': ('InputTypeError', ['numpy.ndarray', 'torch.as_tensor']),
    'list': ('InputTypeError', ['list', 'torch.as_tensor']),
    'crop smaller than the filters': ('InputError', ['(1, 3, 20, 20)', '25 x 25', 'larger images']),
}


@pytest.fixture(scope='module')
def child_records(tmp_path_factory):
    home = tmp_path_factory.mktemp('inputs-home')
    env = dict(os.environ, VONENET_BRAINSCORE_HOME=str(home))
    result = subprocess.run([sys.executable, '-c', CHILD], capture_output=True, text=True, env=env, timeout=600,
                            cwd=Path(vonenet_brainscore.__file__).parents[1])
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{')]
    return result, lines


def test_bad_images_never_crash_the_process(child_records):
    result, records = child_records
    assert result.returncode == 0, (f"the child died (status {result.returncode}; -11 is a segfault) after "
                                    f"{records[-1] if records else 'nothing'}:\n{result.stderr[-3000:]}")
    assert records[0]['package'] == vonenet_brainscore.__file__, 'the child tested this checkout'


@pytest.mark.parametrize('case', sorted(EXPECTED))
def test_bad_images_get_a_clear_error_from_every_entry_point(child_records, case):
    result, records = child_records
    seen = [r for r in records if r.get('case') == case]
    assert seen, f"the child never got to {case!r} (status {result.returncode}):\n{result.stderr[-2000:]}"
    error_class, words = EXPECTED[case]
    for record in seen:
        where = f"{case} -> {record['target']}"
        if record['target'] == 'CompiledCells':  # internal: a plain error, never an out-of-bounds read
            if case != 'empty batch':  # (an empty batch gives an empty result)
                assert record['outcome'] == 'raised' and record['type'] in ('ValueError', 'TypeError'), where
            continue
        assert record['outcome'] == 'raised', f"{where}: returned a result instead of an error"
        assert error_class in record['bases'], f"{where}: {record['type']}: {record['message']}"
        assert 'VOneNetError' in record['bases'], where
        assert ('TypeError' if error_class == 'InputTypeError' else 'ValueError') in record['bases'], where
        message = record['message']
        assert 'images' in message, f"{where}: the message names the argument: {message}"
        for word in words:
            assert word in message, f"{where}: {word!r} missing from: {message}"
        entry = 'VOneNet' if record['target'] == 'VOneNet' else 'VOneBlock'
        assert entry in message, f"{where}: the message names what was called: {message}"


def _block(method):
    block = VOneBlock(noise_mode=None, image_size=96, simple_channels=8, complex_channels=8).eval()
    block.method = method
    return block


def _images(n=2, size=96):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize('method', EVERY_METHOD)
@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_pixels_are_an_error_with_every_method(method, bad):
    """One NaN pixel used to wipe 41 % of the map on the Fourier methods and a patch with dense."""
    block = _block(method)
    images = _images()
    images[1, 2, 40, 50] = bad
    images[0, 0, 3, 4] = bad
    images[0, 1, 90, 0] = float('nan')
    from vonenet_brainscore.vone.inputs import NonFiniteInputError
    for call in (block, block.gabors_f):
        with torch.no_grad(), pytest.raises(NonFiniteInputError, match=r"3 NaN or infinite value\(s\) in images "
                                                                       r"\(shape \(2, 3, 96, 96\).*nan_to_num"):
            call(images)
    assert issubclass(NonFiniteInputError, ValueError)


@pytest.mark.parametrize('method', ['dense', 'grouped', 'spectral', 'auto'])  # compiled: not differentiable
def test_non_finite_pixels_are_an_error_when_differentiating(method):
    block = _block(method)
    images = _images()
    images[0, 0, 0, 0] = float('nan')
    with pytest.raises(ValueError, match='1 NaN or infinite'):
        block(images.requires_grad_())


def test_a_vonenet_refuses_non_finite_pixels():
    net = build_vonenet('alexnet', noise_mode=None, simple_channels=8, complex_channels=8, image_size=96).eval()
    images = _images()
    images[1, 1, 1, 1] = float('nan')
    with torch.no_grad(), pytest.raises(ValueError, match='1 NaN or infinite.*images'):
        net(images)


@pytest.mark.parametrize('method', EVERY_METHOD)
def test_huge_but_finite_pixels_are_not_mistaken_for_non_finite(method):
    """The check sums the batch; a sum that overflows is recounted pixel by pixel, not refused."""
    block = _block(method)
    images = torch.full((1, 3, 96, 96), 1e36)  # the sum, 2.8e40, overflows float32
    assert not torch.isfinite(images.sum())
    with torch.no_grad():
        block.gabors_f(images)  # no error


@pytest.mark.parametrize('method', EVERY_METHOD)
def test_good_images_still_give_the_dense_result(method):
    block = _block(method)
    with torch.no_grad():
        got = block(_images())
        block.method = 'dense'
        want = block(_images())
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_images_of_the_wrong_dtype_for_the_model_say_how_to_convert():
    net = build_vonenet('alexnet', noise_mode=None, simple_channels=8, complex_channels=8, image_size=96).eval()
    with torch.no_grad():
        for dtype in (torch.float64, torch.float16, torch.bfloat16):
            with pytest.raises(TypeError, match=rf"weights are torch.float32 but images are {dtype}.*"
                                                rf"images.to\(torch.float32\)"):
                net(_images().to(dtype))


@pytest.mark.parametrize('method', ['dense', 'grouped', 'compiled'])
def test_block_methods_that_need_the_weights_dtype_say_so(method):
    with torch.no_grad(), pytest.raises(TypeError, match='weights are torch.float32 but images are torch.float16'):
        _block(method)(_images().half())


def test_spectral_says_which_dtypes_it_takes_and_auto_picks_a_method_that_works():
    block = _block('spectral')
    with torch.no_grad(), pytest.raises(TypeError, match="'spectral' takes float32 or float64.*'grouped'"):
        block(_images().half())
    block = _block('auto').half()
    assert block.method_for(_images().half()) == 'grouped'
    with torch.no_grad():
        assert block(_images().half()).dtype == torch.float16
    block = _block('auto')  # float64 images on float32 weights: the Fourier route follows the images
    assert block.method_for(_images(size=40).double()) == 'spectral'
    with torch.no_grad():
        assert block(_images(size=40).double()).dtype == torch.float64


@pytest.mark.parametrize('padding', [-1, 2.5, '12', True])
def test_a_bad_padding_is_refused(padding):
    with pytest.raises(ValueError, match=f"padding must be a whole number.*got {padding!r}"):
        _block('grouped').gabors_f(_images(), padding=padding)


def test_methods_are_all_covered():
    assert set(METHODS) == {'dense', 'grouped', 'spectral', 'compiled', 'auto'}


@pytest.mark.parametrize('setting, value, error, rule', [
    ('stride', 0, ValueError, '>= 1'),
    ('ksize', -1, ValueError, '>= 1'),
    ('image_size', 0, ValueError, '>= 1'),          # used to give a non-finite map, silently
    ('visual_degrees', -8, ValueError, '> 0'),      # used to give filters of negative frequency, silently
    ('visual_degrees', 0, ValueError, '> 0'),
    ('stride', 2.5, TypeError, 'a whole number'),
    ('simple_channels', 2.5, TypeError, 'a whole number'),
    ('gabor_seed', True, TypeError, 'a whole number'),
    ('noise_scale', float('nan'), ValueError, 'finite'),
    ('k_exc', '25', TypeError, 'a number'),
])
def test_block_settings_that_cannot_work_are_refused_by_name(setting, value, error, rule):
    with pytest.raises(error, match=rf"VOneBlock setting {setting} must be {re.escape(rule)}.*got {re.escape(repr(value))}"):
        VOneBlock(**{'noise_mode': None, 'simple_channels': 4, 'complex_channels': 4, setting: value})
