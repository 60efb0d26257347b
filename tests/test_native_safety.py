"""The compiled kernels never break a forward pass, never cache a failed build, and never load a
library someone else could have put there.

Every case is real: caches that are files or read-only, a compiler that "succeeds" without
output (/bin/true), and libraries planted under the expected name, compiled with the system C
compiler, whose constructor leaves a marker file if it ever runs.
"""
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import vonenet_brainscore
from vonenet_brainscore import VOneBlock
from vonenet_brainscore.vone.accel import native

pytestmark = pytest.mark.skipif(native.find_compiler() is None, reason='no C compiler to build the kernels')

PLANTED_SOURCE = r'''
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *marker = getenv("VONE_PLANTED_MARKER");
    FILE *file = marker ? fopen(marker, "w") : NULL;
    if (file) { fputs("the planted library ran", file); fclose(file); }
}
int vone_planted(void) { return 1; }
'''


@pytest.fixture
def fresh_kernels(monkeypatch):
    """Forget the process's compiled kernels (and its one warning) before and after the test."""
    native.kernels.cache_clear()
    monkeypatch.setattr(native, '_warned', False)
    if hasattr(native, '_unrecognised_values'):
        monkeypatch.setattr(native, '_unrecognised_values', set())
    monkeypatch.delenv(native.DISABLE_ENV, raising=False)
    monkeypatch.delenv('CC', raising=False)
    yield
    native.kernels.cache_clear()


_names = {}


@pytest.fixture
def library_name(fresh_kernels, tmp_path_factory, monkeypatch):
    """The file name the first (fastest) build gets, found by building once in a scratch cache."""
    if 'name' not in _names:
        with monkeypatch.context() as scratch:
            scratch.setenv('VONENET_BRAINSCORE_HOME', str(tmp_path_factory.mktemp('scratch-home')))
            built = native.kernels()
            assert built is not None, native.unavailable_reason()
            assert built.flags == list(native.FLAG_SETS[0]), 'this machine builds the fastest flags'
            _names['name'] = built.path.name
        native.kernels.cache_clear()
    return _names['name']


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A shared library that is not ours, and the marker file its constructor writes when loaded."""
    source, library, marker = tmp_path / 'planted.c', tmp_path / 'planted.so', tmp_path / 'planted-ran'
    source.write_text(PLANTED_SOURCE)
    subprocess.run([native.find_compiler(), '-shared', '-fPIC', str(source), '-o', str(library)], check=True)
    monkeypatch.setenv('VONE_PLANTED_MARKER', str(marker))
    return library, marker


def _plant(library, folder, name, *, stamp=True, mode=0o700):
    """Put ``library`` at ``folder/name``, with a stamp that matches it (as a forger would)."""
    import hashlib
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    shutil.copy(library, target)
    target.chmod(mode)
    if stamp:
        (folder / (name + '.sha256')).write_text(hashlib.sha256(target.read_bytes()).hexdigest() + '\n')
        (folder / (name + '.sha256')).chmod(0o600)
    return target


def _forward_falls_back_with_one_warning():
    """A VOneBlock on 'auto' computes what 'spectral' does, and says so once."""
    block = VOneBlock(noise_mode=None, image_size=96, simple_channels=8, complex_channels=8).eval()
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with torch.no_grad():
            first, second = block(images), block(images)
    unavailable = [w for w in caught if 'compiled kernels are unavailable' in str(w.message)]
    assert len(unavailable) == 1, [str(w.message) for w in caught]
    assert "'spectral'" in str(unavailable[0].message)
    block.method = 'spectral'
    with torch.no_grad():
        assert torch.equal(first, block(images)) and torch.equal(second, first)
    return str(unavailable[0].message)


def _libraries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith('.so')) if folder.is_dir() else []


# --- caches that cannot be used -------------------------------------------------------------------
def test_a_cache_path_that_is_a_file_falls_back_with_one_warning(fresh_kernels, tmp_path, monkeypatch):
    blocker = tmp_path / 'not-a-folder'
    blocker.write_text('a file where the cache should be')
    monkeypatch.setenv('VONENET_BRAINSCORE_HOME', str(blocker / 'cache'))
    assert native.kernels() is None
    assert f'{blocker} is a file' in native.unavailable_reason()
    message = _forward_falls_back_with_one_warning()
    assert 'VONENET_BRAINSCORE_HOME' in message
    assert blocker.read_text() == 'a file where the cache should be'


READ_ONLY_CHILD = textwrap.dedent('''
    import json, warnings
    import torch
    import vonenet_brainscore
    from vonenet_brainscore import VOneBlock
    from vonenet_brainscore.vone.accel import native
    block = VOneBlock(noise_mode=None, image_size=96, simple_channels=8, complex_channels=8).eval()
    images = torch.rand(2, 3, 96, 96)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        with torch.no_grad():
            auto = block(images)
            block(images)
    block.method = 'spectral'
    with torch.no_grad():
        same = torch.equal(auto, block(images))
    print(json.dumps({'package': vonenet_brainscore.__file__, 'reason': native.unavailable_reason(),
                      'warnings': [str(w.message) for w in caught if 'compiled kernels' in str(w.message)],
                      'same_as_spectral': same}))
''')


def test_a_read_only_cache_falls_back_with_one_warning(tmp_path):
    """Run in a child that cannot write the cache (root: without its override capabilities)."""
    home = tmp_path / 'read-only-home'
    home.mkdir(mode=0o755)
    home.chmod(0o555)
    command = [sys.executable, '-c', READ_ONLY_CHILD]
    if os.geteuid() == 0:
        if shutil.which('setpriv') is None:
            pytest.skip('root without setpriv cannot make a folder read-only to itself')
        drop = '-dac_override,-dac_read_search'
        command = ['setpriv', f'--inh-caps={drop}', f'--bounding-set={drop}', *command]
    env = dict(os.environ, VONENET_BRAINSCORE_HOME=str(home))
    env.pop(native.DISABLE_ENV, None)
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600,
                                cwd=Path(vonenet_brainscore.__file__).parents[1])
    finally:
        home.chmod(0o755)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report['package'] == vonenet_brainscore.__file__
    assert 'cannot create' in report['reason'] and str(home) in report['reason'], report
    assert len(report['warnings']) == 1 and 'writable' in report['warnings'][0], report
    assert report['same_as_spectral']
    assert list(home.iterdir()) == []


# --- builds that fail are never cached --------------------------------------------------------------
def test_a_compiler_that_writes_nothing_is_never_cached(fresh_kernels, monkeypatch, isolated_cache):
    monkeypatch.setenv('CC', '/bin/true')
    assert native.kernels() is None
    assert 'wrote no library' in native.unavailable_reason()
    assert '/bin/true' in native.unavailable_reason()
    assert _libraries(isolated_cache / 'kernels') == [], 'a failed build is never cached'
    assert [p.name for p in (isolated_cache / 'kernels').iterdir()] == [], 'nor any temporary file'
    _forward_falls_back_with_one_warning()
    native.kernels.cache_clear()
    monkeypatch.delenv('CC')
    assert native.kernels() is not None, native.unavailable_reason()  # a real compiler builds afterwards


def test_a_build_that_fails_its_self_check_is_never_cached(fresh_kernels, monkeypatch, tmp_path, isolated_cache):
    """A compiler wrapper that builds kernels whose complex cells forget their gain."""
    wrong = tmp_path / 'wrong_kernels.c'
    source = native.SOURCE.read_text()
    assert 'gain * sqrtf(' in source
    wrong.write_text(source.replace('gain * sqrtf(', 'sqrtf('))
    wrapper = tmp_path / 'wrong-cc'
    real = native.find_compiler()
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do\n  [ "$a" = "{native.SOURCE}" ] && a="{wrong}"\n'
                       f'  set -- "$@" "$a"; shift\ndone\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv('CC', str(wrapper))
    assert native.kernels() is None
    assert 'the compiled cells disagree with torch' in native.unavailable_reason()
    assert _libraries(isolated_cache / 'kernels') == []
    _forward_falls_back_with_one_warning()


def test_an_empty_cached_library_is_rebuilt(fresh_kernels, library_name, isolated_cache):
    folder = isolated_cache / 'kernels'
    folder.mkdir(mode=0o700)
    (folder / library_name).write_bytes(b'')
    built = native.kernels()
    assert built is not None, native.unavailable_reason()
    assert built.path == folder / library_name and built.flags == list(native.FLAG_SETS[0])
    assert built.path.stat().st_size > 0


# --- libraries that are not ours are never loaded --------------------------------------------------
def test_a_planted_library_without_our_stamp_never_runs_and_is_rebuilt(fresh_kernels, library_name, planted,
                                                                       isolated_cache):
    library, marker = planted
    target = _plant(library, isolated_cache / 'kernels', library_name, stamp=False)
    (isolated_cache / 'kernels').chmod(0o700)
    built = native.kernels()
    assert not marker.exists(), 'the planted library was loaded: its constructor ran'
    assert built is not None, native.unavailable_reason()
    assert built.path == target and target.read_bytes() != library.read_bytes(), 'rebuilt over it'


def test_a_planted_library_with_a_forged_stamp_is_rebuilt_if_the_stamp_is_wrong(fresh_kernels, library_name,
                                                                                planted, isolated_cache):
    library, marker = planted
    folder = isolated_cache / 'kernels'
    target = _plant(library, folder, library_name)
    folder.chmod(0o700)
    (folder / (library_name + '.sha256')).write_text('0' * 64 + '\n')
    assert native.kernels() is not None, native.unavailable_reason()
    assert not marker.exists()
    assert target.read_bytes() != library.read_bytes()


@pytest.mark.parametrize('loose', ['cache folder', 'kernels folder'])
def test_a_library_in_a_folder_others_can_write_is_never_loaded(fresh_kernels, library_name, planted, isolated_cache,
                                                                loose):
    """Even with a stamp that matches it: anyone who can write there can forge the stamp too."""
    library, marker = planted
    folder = isolated_cache / 'kernels'
    _plant(library, folder, library_name)
    folder.chmod(0o777 if loose == 'kernels folder' else 0o700)
    isolated_cache.chmod(0o777 if loose == 'cache folder' else 0o700)
    assert native.kernels() is None
    assert not marker.exists(), 'the planted library was loaded: its constructor ran'
    reason = native.unavailable_reason()
    assert 'can be written by other users' in reason and 'chmod go-w' in reason, reason
    where = isolated_cache if loose == 'cache folder' else folder
    assert f'{loose} {where} ' in reason, reason
    assert 'chmod go-w' in _forward_falls_back_with_one_warning()
    assert (folder / library_name).read_bytes() == library.read_bytes(), 'left alone: neither run nor replaced'


def _replaced_by_our_build(target, library):
    status = target.stat()
    assert target.read_bytes() != library.read_bytes()
    assert status.st_uid == os.geteuid() and stat.S_IMODE(status.st_mode) & 0o022 == 0


def test_a_library_others_can_write_is_never_loaded_and_is_rebuilt(fresh_kernels, library_name, planted,
                                                                    isolated_cache):
    """In a private folder a loose file is not trusted (even with a matching stamp), but replaced."""
    library, marker = planted
    folder = isolated_cache / 'kernels'
    target = _plant(library, folder, library_name, mode=0o666)
    folder.chmod(0o700)
    built = native.kernels()
    assert not marker.exists(), 'the planted library was loaded: its constructor ran'
    assert built is not None and built.path == target, native.unavailable_reason()
    _replaced_by_our_build(target, library)


@pytest.mark.skipif(not hasattr(os, 'geteuid') or os.geteuid() != 0, reason='only root can give a file away')
@pytest.mark.parametrize('foreign', ['kernels folder', 'library'])
def test_a_library_another_user_owns_is_never_loaded(fresh_kernels, library_name, planted, isolated_cache, foreign):
    library, marker = planted
    folder = isolated_cache / 'kernels'
    target = _plant(library, folder, library_name)
    folder.chmod(0o755)
    nobody = 65534
    os.chown(folder if foreign == 'kernels folder' else target, nobody, nobody)
    built = native.kernels()
    assert not marker.exists(), 'the planted library was loaded: its constructor ran'
    if foreign == 'kernels folder':  # someone else's folder: refused, left alone
        assert built is None
        assert 'not to root' in native.unavailable_reason(), native.unavailable_reason()
        _forward_falls_back_with_one_warning()
        assert target.read_bytes() == library.read_bytes()
    else:  # someone else's file in our folder: not trusted, rebuilt over
        assert built is not None and built.path == target, native.unavailable_reason()
        _replaced_by_our_build(target, library)


def test_a_link_in_place_of_the_library_is_never_followed(fresh_kernels, library_name, planted, isolated_cache):
    library, marker = planted
    folder = isolated_cache / 'kernels'
    folder.mkdir(mode=0o700)
    (folder / library_name).symlink_to(library)
    _plant(library, folder, library_name + '.elsewhere')
    (folder / (library_name + '.sha256')).write_text((folder / (library_name + '.elsewhere.sha256')).read_text())
    built = native.kernels()
    assert not marker.exists()
    assert built is not None and not (folder / library_name).is_symlink(), 'replaced by a real build'


def test_the_cache_folders_it_creates_are_private(fresh_kernels, isolated_cache):
    shutil.rmtree(isolated_cache)
    built = native.kernels()
    assert built is not None, native.unavailable_reason()
    for path in (isolated_cache, isolated_cache / 'kernels', built.path):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))


# --- VONENET_BRAINSCORE_NO_COMPILE --------------------------------------------------------------------
@pytest.mark.parametrize('value', ['false', 'False', '0', 'no', 'off', '', ' '])
def test_false_words_do_not_switch_compiling_off(fresh_kernels, monkeypatch, value):
    monkeypatch.setenv(native.DISABLE_ENV, value)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert native.kernels() is not None, native.unavailable_reason()


@pytest.mark.parametrize('value', ['1', 'true', 'TRUE', 'yes', 'on', ' true '])
def test_true_words_switch_compiling_off(fresh_kernels, monkeypatch, value):
    monkeypatch.setenv(native.DISABLE_ENV, value)
    assert native.kernels() is None
    assert native.unavailable_reason() == f'disabled by {native.DISABLE_ENV}'


def test_an_unrecognised_value_warns_naming_the_variable_and_compiles(fresh_kernels, monkeypatch):
    monkeypatch.setenv(native.DISABLE_ENV, 'maybe')
    with pytest.warns(RuntimeWarning, match=f"{native.DISABLE_ENV}='maybe' is neither true.*compiling stays on"):
        assert native.kernels() is not None, native.unavailable_reason()
