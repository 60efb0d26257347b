"""Building, caching and checking the compiled VOneBlock kernels, and doing without them."""
import os
import stat
import warnings

import pytest
import torch

from vonenet_brainscore import VOneBlock
from vonenet_brainscore.vone.accel import native

needs_compiler = pytest.mark.skipif(native.find_compiler() is None, reason='no C compiler to build the kernels')


@pytest.fixture
def fresh_kernels(monkeypatch):
    """Forget the process's compiled kernels (and its one warning) before and after the test."""
    native.kernels.cache_clear()
    monkeypatch.setattr(native, '_warned', False)
    yield
    native.kernels.cache_clear()


def _broken_compiler(tmp_path, monkeypatch):
    compiler = tmp_path / 'broken-cc'
    compiler.write_text('#!/bin/sh\necho "broken-cc: cannot compile anything" >&2\nexit 1\n')
    compiler.chmod(compiler.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv('CC', str(compiler))
    return compiler


@needs_compiler
def test_kernels_are_built_once_into_the_cache(fresh_kernels, isolated_cache):
    built = native.kernels()
    assert built is not None, native.unavailable_reason()
    assert built.path.parent == isolated_cache / 'kernels'
    assert sorted(p.name for p in built.path.parent.iterdir()) == sorted(
        [built.path.name, native.stamp_path(built.path).name]), 'the library and its stamp, no temporary files'
    modified = built.path.stat().st_mtime_ns
    native.kernels.cache_clear()
    again = native.kernels()
    assert again.path == built.path and again.path.stat().st_mtime_ns == modified


@needs_compiler
def test_the_cache_is_keyed_by_the_compiler_and_the_source(fresh_kernels, isolated_cache, monkeypatch, tmp_path):
    """Another compiler, or another kernel source, never loads a build made by the first: each gets a
    library of its own beside it (README: cached per source, compiler, flags and CPU)."""
    import shutil
    first = native.kernels()
    assert first is not None, native.unavailable_reason()
    wrapper = tmp_path / 'other-cc'  # the same compiler behind another command: another key
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which(native.compiler_command()[0])} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv('CC', str(wrapper))
    native.kernels.cache_clear()
    second = native.kernels()
    assert second is not None and second.path != first.path and first.path.exists()
    edited = tmp_path / 'kernels.c'
    edited.write_text(native.SOURCE.read_text() + '\n/* an edit */\n')
    monkeypatch.setattr(native, 'SOURCE', edited)
    native.kernels.cache_clear()
    third = native.kernels()
    assert third is not None and third.path not in (first.path, second.path)
    libraries = sorted(p for p in (isolated_cache / 'kernels').iterdir() if p.suffix == '.so')
    assert libraries == sorted([first.path, second.path, third.path])


def test_disabling_compilation_falls_back_to_torch(fresh_kernels, monkeypatch):
    monkeypatch.setenv(native.DISABLE_ENV, '1')
    assert native.kernels() is None
    assert native.DISABLE_ENV in native.unavailable_reason()
    block = VOneBlock(noise_mode=None, image_size=96, simple_channels=8, complex_channels=8)
    images = torch.rand(1, 3, 96, 96)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # switched off on purpose: nothing to warn about
        assert block.method_for(images) == 'spectral'
    block.method = 'compiled'
    with pytest.raises(RuntimeError, match=f"{native.DISABLE_ENV}.*method = 'auto'"):
        block(images)


def test_a_broken_compiler_is_reported_and_leaves_nothing_behind(fresh_kernels, monkeypatch, tmp_path,
                                                                   isolated_cache):
    compiler = _broken_compiler(tmp_path, monkeypatch)
    assert native.find_compiler() == str(compiler)
    assert native.kernels() is None
    assert 'broken-cc: cannot compile anything' in native.unavailable_reason()
    kernels_dir = isolated_cache / 'kernels'
    assert not kernels_dir.exists() or not os.listdir(kernels_dir)


def test_auto_says_once_why_it_runs_slower(fresh_kernels, monkeypatch, tmp_path):
    _broken_compiler(tmp_path, monkeypatch)
    block = VOneBlock(noise_mode=None, image_size=96, simple_channels=8, complex_channels=8)
    images = torch.rand(1, 3, 96, 96)
    with pytest.warns(RuntimeWarning, match="broken-cc: cannot compile anything.*'spectral'"):
        assert block.method_for(images) == 'spectral'
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert block.method_for(images) == 'spectral'


@needs_compiler
def test_the_self_check_rejects_wrong_arithmetic(tmp_path):
    """Built from a source whose complex cells forget their gain, the kernels fail the check."""
    import ctypes
    wrong = tmp_path / 'kernels.c'
    source = native.SOURCE.read_text()
    assert 'gain * sqrtf(' in source
    wrong.write_text(source.replace('gain * sqrtf(', 'sqrtf('))
    library = tmp_path / 'wrong.so'
    assert os.system(f'{native.find_compiler()} -O2 -shared -fPIC {wrong} -o {library} -lm') == 0
    kernels = native.Kernels(ctypes.CDLL(str(library)), library, ['-O2'])
    assert native._self_check(kernels) == 'the compiled cells disagree with torch'
    right = tmp_path / 'right.so'
    assert os.system(f'{native.find_compiler()} -O2 -shared -fPIC {native.SOURCE} -o {right} -lm') == 0
    assert native._self_check(native.Kernels(ctypes.CDLL(str(right)), right, ['-O2'])) is None
