"""The Brain-Score plugin (vonenet_brainscore/plugin/), its install into Brain-Score, and the submission zip.

Install tests work on a temporary copy of Brain-Score's models folder (every bundled plugin's
``__init__.py``, which is all Brain-Score reads to find a plugin) and check it with Brain-Score's own
plugin-locating code. The integration tests install into the real ``brainscore_vision/models`` for
the duration of the module and remove it afterwards (unless it was installed before).

Brain-Score's generic plugin tests need three images that its wheel lacks. They are run from a
verbatim copy of ``generic_plugin_tests.py`` placed in a temporary folder beside generated images,
because the tests find the images next to their own file; site-packages is not touched.
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vonenet_brainscore import plugin_tools
from vonenet_brainscore.plugin_tools import (PLUGIN_NAME, SUBMISSION_ROOT, PluginConflictError, PluginError,
                                             build_submission, check_region_layer_maps, install_plugin,
                                             installed_mode, is_installed, plugin_identifiers, plugin_source_dir,
                                             uninstall_plugin, write_region_layer_maps)

from vonenet_brainscore import brain  # noqa: E402
from brainscore_core.plugin_management.import_plugin import ImportPlugin  # noqa: E402
from brainscore_core.plugin_management.parse_plugin_changes import get_plugin_ids  # noqa: E402
from brainscore_core.submission.repository import find_submission_directory  # noqa: E402

REAL_MODELS = plugin_tools.brainscore_models_dir()
UNREACHABLE = 'http://127.0.0.1:9/'  # connection refused at once: the published weights are "unavailable"
SHIPPED_FILES = {'__init__.py', 'model.py', 'test.py', 'requirements.txt'}


def brainscore_locate(models_dir: Path, identifier: str) -> str:
    """Brain-Score's own plugin lookup (ImportPlugin.locate_plugin) run on ``models_dir``."""
    importer = ImportPlugin.__new__(ImportPlugin)
    importer.plugin_type, importer.plugins_dir = 'models', Path(models_dir)
    importer.identifier, importer.registry_name = identifier, 'model_registry'
    return importer.locate_plugin()


def tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def shipped_tree() -> dict:
    return {name: data for name, data in tree(plugin_source_dir()).items()
            if '__pycache__' not in name and not name.endswith('.pyc')}


@pytest.fixture
def models_copy(tmp_path):
    """``<tmp>/brainscore_vision/models`` holding every bundled plugin folder with its ``__init__.py``."""
    models = tmp_path / 'brainscore_vision' / 'models'
    models.mkdir(parents=True)
    for folder in REAL_MODELS.iterdir():
        if folder.name.startswith(('.', '_')) or not folder.is_dir() or folder.name == PLUGIN_NAME:
            continue
        (models / folder.name).mkdir()
        if (folder / '__init__.py').is_file():
            shutil.copyfile(folder / '__init__.py', models / folder.name / '__init__.py')
    return models


@pytest.fixture
def source_copy(tmp_path):
    """A copy of the shipped plugin folder, to break on purpose."""
    copy = tmp_path / 'plugin-source'
    shutil.copytree(plugin_source_dir(), copy, ignore=shutil.ignore_patterns('__pycache__'))
    return copy


# --- the plugin folder ---------------------------------------------------------------------------------------

def test_shipped_region_layer_maps_equal_the_generator_output(tmp_path):
    shipped = plugin_source_dir() / 'region_layer_map'
    generated = tmp_path / 'generated'
    written = write_region_layer_maps(generated)
    assert sorted(p.name for p in written) == sorted(f'{i}.json' for i in brain.IDENTIFIERS)
    assert tree(shipped) == tree(generated), \
        'region_layer_map/ drifted from commitments/: run plugin_tools.write_region_layer_maps()'
    for identifier, model_spec in brain.IDENTIFIERS.items():
        from vonenet_brainscore.commitments_io import load_commitment
        assert json.loads((shipped / f'{identifier}.json').read_text()) == \
            load_commitment(model_spec.model).region_layers == brain.region_layer_map(identifier)
    assert check_region_layer_maps() == []


def test_check_region_layer_maps_names_every_drift(source_copy):
    folder = source_copy / 'region_layer_map'
    changed = json.loads((folder / 'vonenet_alexnet.json').read_text())
    changed['IT'] = 'model.features.12'
    (folder / 'vonenet_alexnet.json').write_text(json.dumps(changed, indent=2) + '\n')
    (folder / 'vonenet_cornets.json').unlink()
    (folder / 'vonenet_old.json').write_text('{}\n')
    problems = check_region_layer_maps(folder)
    assert len(problems) == 3
    assert any('vonenet_alexnet.json differs' in p for p in problems)
    assert any('vonenet_cornets.json is missing' in p for p in problems)
    assert any('vonenet_old.json' in p and 'stale' in p for p in problems)
    write_region_layer_maps(folder)
    assert check_region_layer_maps(folder) == [f'{folder / "vonenet_old.json"} belongs to no brain model (stale)']


def test_init_registers_each_identifier_once_and_literally():
    text = (plugin_source_dir() / '__init__.py').read_text()
    registry_lines = [line for line in text.splitlines() if 'model_registry[' in line.replace('"', "'")]
    assert len(registry_lines) == len(brain.IDENTIFIERS) == 10
    registered = []
    for line in registry_lines:
        match = re.fullmatch(r"model_registry\['([^']+)'\] = lambda: brain_model\('([^']+)'\)", line)
        assert match, f'not a literal one-line registration: {line!r}'
        assert match.group(1) == match.group(2), f'registered under one identifier, builds another: {line!r}'
        registered.append(match.group(1))
    assert sorted(registered) == sorted(brain.IDENTIFIERS)
    assert len(set(registered)) == len(registered)
    assert plugin_identifiers() == registered
    assert 'from vonenet_brainscore.brain import brain_model' in text


def test_plugin_folder_has_brainscore_layout():
    folder = plugin_source_dir()
    assert SHIPPED_FILES <= {p.name for p in folder.iterdir() if p.is_file()}
    assert not (folder / 'metadata.yaml').exists() and not (folder / 'metadata.yml').exists()
    requirements = [line.strip() for line in (folder / 'requirements.txt').read_text().splitlines() if line.strip()]
    assert requirements == ['vonenet-brainscore']
    test_text = (folder / 'test.py').read_text()
    for identifier in brain.IDENTIFIERS:
        assert f"'{identifier}'" in test_text


def test_plugin_model_functions_delegate_to_the_package(monkeypatch):
    monkeypatch.setenv('VONENET_BRAINSCORE_MIRROR', UNREACHABLE)
    loaded = importlib.util.spec_from_file_location('vonenet_plugin_model', plugin_source_dir() / 'model.py')
    model = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(model)
    from vonenet_brainscore.commitments_io import load_commitment
    assert model.get_model_list() == list(brain.IDENTIFIERS)
    assert model.get_layers('vonenet_cornets_nonoise') == load_commitment('cornets').candidate_layers
    bibtex = model.get_bibtex('vonenet_resnet50')
    assert 'Dapello' in bibtex and 'Marques' in bibtex and '2020' in bibtex and 'Neural Information' in bibtex
    with pytest.raises(KeyError, match='vonenet_resnet50'):
        model.get_bibtex('resnet50')
    from brainscore_vision.model_helpers.activations.pytorch import PytorchWrapper
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)
        activations = model.get_model('vonenet_alexnet')
    assert isinstance(activations, PytorchWrapper)
    assert activations.identifier.startswith('vonenet_alexnet_untrained@')


# --- install into a copy of Brain-Score's models folder ------------------------------------------------------

@pytest.mark.parametrize('mode', ['symlink', 'copy'])
def test_install_is_found_by_brainscore_and_uninstall_removes_it(models_copy, mode):
    before = sorted(p.name for p in models_copy.iterdir())
    with pytest.raises(AssertionError, match='No registrations'):
        brainscore_locate(models_copy, 'vonenet_resnet50')
    assert not is_installed(models_copy)

    target = install_plugin(models_copy, mode=mode)
    assert target == models_copy / PLUGIN_NAME
    assert is_installed(models_copy) and installed_mode(models_copy) == mode
    for identifier in brain.IDENTIFIERS:
        assert brainscore_locate(models_copy, identifier) == PLUGIN_NAME
    assert sorted(get_plugin_ids('models', [PLUGIN_NAME], str(models_copy.parent))) == sorted(brain.IDENTIFIERS)
    if mode == 'symlink':
        assert target.is_symlink() and Path(os.readlink(target)) == plugin_source_dir()
    else:
        assert not target.is_symlink() and target.is_dir()
        assert {name: data for name, data in tree(target).items() if name != plugin_tools.MARKER_NAME} \
            == shipped_tree()
        assert not list(target.rglob('__pycache__'))
    assert sorted(p.name for p in models_copy.iterdir()) == sorted(before + [PLUGIN_NAME])  # nothing else left

    assert install_plugin(models_copy, mode=mode) == target  # again: fine, same result
    assert installed_mode(models_copy) == mode
    assert sorted(p.name for p in models_copy.iterdir()) == sorted(before + [PLUGIN_NAME])

    assert uninstall_plugin(models_copy) is True
    assert not os.path.lexists(target) and not is_installed(models_copy)
    assert sorted(p.name for p in models_copy.iterdir()) == before
    assert uninstall_plugin(models_copy) is False


def test_install_switches_mode_and_refreshes_a_stale_copy(models_copy):
    target = install_plugin(models_copy, mode='copy')
    (target / 'model.py').write_text('# stale\n')
    (target / 'region_layer_map' / 'vonenet_old.json').write_text('{}\n')
    install_plugin(models_copy, mode='copy')
    assert {n: d for n, d in tree(target).items() if n != plugin_tools.MARKER_NAME} == shipped_tree()
    install_plugin(models_copy, mode='symlink')
    assert target.is_symlink() and installed_mode(models_copy) == 'symlink'
    install_plugin(models_copy, mode='copy')
    assert not target.is_symlink() and installed_mode(models_copy) == 'copy'
    assert not [p for p in models_copy.iterdir() if p.name.startswith('.')]


@pytest.mark.parametrize('kind', ['folder', 'symlink', 'file'])
def test_install_and_uninstall_refuse_to_touch_a_foreign_entry(models_copy, tmp_path, kind):
    target = models_copy / PLUGIN_NAME
    if kind == 'folder':
        target.mkdir()
        (target / '__init__.py').write_text("model_registry['someone-else'] = None\n")
    elif kind == 'symlink':
        elsewhere = tmp_path / 'someone_elses_plugin'
        elsewhere.mkdir()
        (elsewhere / '__init__.py').write_text('\n')
        target.symlink_to(elsewhere, target_is_directory=True)
    else:
        target.write_text('not a plugin\n')
    snapshot = (os.readlink(target) if target.is_symlink() else tree(target) if target.is_dir()
                else target.read_bytes())
    for mode in ('symlink', 'copy'):
        with pytest.raises(PluginConflictError, match='did not install'):
            install_plugin(models_copy, mode=mode)
    with pytest.raises(PluginConflictError, match='left untouched'):
        uninstall_plugin(models_copy)
    assert not is_installed(models_copy)
    assert snapshot == (os.readlink(target) if target.is_symlink() else tree(target) if target.is_dir()
                        else target.read_bytes())
    assert not [p for p in models_copy.iterdir() if p.name.startswith('.')]


def test_install_refuses_when_another_plugin_registers_our_identifier(models_copy):
    old = models_copy / 'old_vonenets'
    old.mkdir()
    (old / '__init__.py').write_text('model_registry["vonenet_resnet50_at"] = lambda: None\n')
    with pytest.raises(PluginConflictError, match=r'vonenet_resnet50_at in .*old_vonenets'):
        install_plugin(models_copy)
    assert not os.path.lexists(models_copy / PLUGIN_NAME)


def test_a_dangling_link_of_ours_is_replaced_and_removed(models_copy, tmp_path):
    target = models_copy / PLUGIN_NAME
    target.symlink_to(tmp_path / 'gone' / 'vonenet_brainscore' / 'plugin', target_is_directory=True)
    assert not is_installed(models_copy)
    install_plugin(models_copy)
    assert is_installed(models_copy) and target.resolve() == plugin_source_dir()
    target.unlink()
    target.symlink_to(tmp_path / 'gone' / 'vonenet_brainscore' / 'plugin', target_is_directory=True)
    assert uninstall_plugin(models_copy) is True and not os.path.lexists(target)


def test_install_arguments_are_checked(models_copy, tmp_path):
    with pytest.raises(PluginError, match='unknown install mode'):
        install_plugin(models_copy, mode='hardlink')
    with pytest.raises(PluginError, match='not a folder'):
        install_plugin(tmp_path / 'no-such-models')
    with pytest.raises(PluginError, match='not a folder'):
        uninstall_plugin(tmp_path / 'no-such-models')


def test_default_models_folder_is_brainscores():
    import brainscore_vision
    assert plugin_tools.brainscore_models_dir() == Path(brainscore_vision.__file__).resolve().parent / 'models'


# --- submission zip ----------------------------------------------------------------------------------------------

def website_validate_zip(path):
    """brain-score.web's upload check (benchmarks/views/user.py: validate_zip and helpers), reproduced."""
    with zipfile.ZipFile(path) as archive:
        names = [info.filename for info in archive.infolist()]
    plugins = {n.split('/')[1].lower() for n in names if n.endswith('/') and n.count('/') == 2}
    plugins &= {'models', 'benchmarks', 'data', 'metrics'}
    assert plugins, 'no models/benchmarks/data/metrics folder under the root folder'
    for plugin in plugins:
        instances = [n.split('/')[2] for n in names if n.endswith('/') and n.count('/') == 3
                     and n.split('/')[1] == plugin]
        assert instances, f'{plugin} folder is empty'
        for instance in instances:
            files = {n.split('/')[-1] for n in names if n.split('/')[-2] == instance}
            assert {'__init__.py', 'test.py'} <= files, f'{instance} lacks __init__.py or test.py'


def test_submission_zip_layout(tmp_path):
    out = build_submission(tmp_path / 'out' / 'vonenet.zip')
    assert out == tmp_path / 'out' / 'vonenet.zip' and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ['vonenet.zip']  # no temporary file left
    prefix = f'{SUBMISSION_ROOT}/models/{PLUGIN_NAME}/'
    with zipfile.ZipFile(out) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        files = {n[len(prefix):]: archive.read(n) for n in names if not n.endswith('/')}
    assert all(n.startswith(prefix) for n in names if not n.endswith('/'))
    assert {n for n in names if n.endswith('/')} == {f'{SUBMISSION_ROOT}/', f'{SUBMISSION_ROOT}/models/', prefix,
                                                     prefix + 'region_layer_map/'}
    assert files == shipped_tree()
    assert set(files) == SHIPPED_FILES | {f'region_layer_map/{i}.json' for i in brain.IDENTIFIERS}
    assert not [n for n in names if '__pycache__' in n or n.endswith('.pyc') or '/.' in n]
    website_validate_zip(out)

    extracted = tmp_path / 'extracted'
    with zipfile.ZipFile(out) as archive:
        archive.extractall(extracted)
    root = extracted / find_submission_directory(extracted)  # Brain-Score's own unpacking rule
    assert root.name == SUBMISSION_ROOT
    assert sorted(get_plugin_ids('models', [PLUGIN_NAME], str(root))) == sorted(brain.IDENTIFIERS)


def test_submission_leaves_out_caches_and_hidden_files_and_is_reproducible(source_copy, tmp_path):
    (source_copy / '__pycache__').mkdir(exist_ok=True)
    (source_copy / '__pycache__' / 'model.cpython-311.pyc').write_bytes(b'\0')
    (source_copy / 'region_layer_map' / '__pycache__').mkdir()
    (source_copy / 'stray.pyc').write_bytes(b'\0')
    (source_copy / '.DS_Store').write_bytes(b'\0')
    (source_copy / plugin_tools.MARKER_NAME).write_text('{}')
    first = build_submission(tmp_path / 'a.zip', source_dir=source_copy)
    second = build_submission(tmp_path / 'b.zip', source_dir=plugin_source_dir())
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert not [n for n in archive.namelist() if 'pycache' in n or n.endswith('.pyc') or '/.' in n]


def test_submission_is_written_atomically(source_copy, tmp_path):
    out = tmp_path / 'dist' / 'vonenet.zip'
    out.parent.mkdir()
    out.write_bytes(b'the previous submission')
    # A file that cannot be read, sorted last: the failure comes after most of the zip was written.
    (source_copy / 'zz_broken.py').symlink_to(tmp_path / 'missing.py')
    with pytest.raises(PluginError, match='could not write the submission'):
        build_submission(out, source_dir=source_copy)
    assert out.read_bytes() == b'the previous submission'
    assert [p.name for p in out.parent.iterdir()] == ['vonenet.zip']
    fresh = tmp_path / 'fresh.zip'
    with pytest.raises(PluginError):
        build_submission(fresh, source_dir=source_copy)
    assert not fresh.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith('.part')]


def test_submission_refuses_stale_region_maps_and_bad_paths(source_copy, tmp_path):
    (source_copy / 'region_layer_map' / 'vonenet_resnet50.json').write_text('{"IT": "model.layer3"}\n')
    with pytest.raises(PluginError, match='do not match commitments'):
        build_submission(tmp_path / 'x.zip', source_dir=source_copy)
    assert not (tmp_path / 'x.zip').exists()
    with pytest.raises(PluginError, match='must end in .zip'):
        build_submission(tmp_path / 'x.tar')
    (tmp_path / 'folder.zip').mkdir()
    with pytest.raises(PluginError, match='is a folder'):
        build_submission(tmp_path / 'folder.zip')
    (source_copy / 'test.py').unlink()
    with pytest.raises(PluginError, match='test.py'):
        build_submission(tmp_path / 'y.zip', source_dir=source_copy)


# --- Brain-Score integration (real site-packages) --------------------------------------------------------------

@pytest.fixture(scope='module')
def installed_in_brainscore():
    """The plugin symlinked into the real brainscore_vision/models for this module, then removed again."""
    was_installed = is_installed()
    path = install_plugin(mode='symlink')
    yield path
    if not was_installed:
        uninstall_plugin()


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv('VONENET_BRAINSCORE_MIRROR', UNREACHABLE)


def test_brainscore_load_model_finds_the_plugin(installed_in_brainscore, offline):
    import brainscore_vision
    with pytest.warns(RuntimeWarning, match='UNTRAINED'):
        model = brainscore_vision.load_model('vonenet_resnet50')
    assert model.identifier == 'vonenet_resnet50_untrained'  # no weights offline: tagged, never mistaken
    shipped = json.loads((installed_in_brainscore / 'region_layer_map' / 'vonenet_resnet50.json').read_text())
    assert model.commitment.region_layers == shipped == brain.region_layer_map('vonenet_resnet50')
    assert model.visual_degrees() == 8
    assert 'Dapello' in brainscore_vision.load_model_bibtex('vonenet_resnet50')
    with pytest.warns(RuntimeWarning, match='UNTRAINED'):
        nonoise = brainscore_vision.load_model('vonenet_cornets_nonoise')
    assert nonoise.identifier == 'vonenet_cornets_nonoise_untrained'
    assert nonoise.network.vone_block.config.noise_mode is None


def _isolated_pytest(tmp_path, *args, env=None):
    """Run pytest in a fresh interpreter with an empty config (not this repository's pytest.ini)."""
    ini = tmp_path / 'pytest.ini'
    ini.write_text('[pytest]\nmarkers =\n    travis_slow\n    memory_intense\n    slow\n')
    command = [sys.executable, '-m', 'pytest', '-c', str(ini), '--rootdir', str(tmp_path), '-p', 'no:cacheprovider',
               '-q', *map(str, args)]
    return subprocess.run(command, cwd=tmp_path, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=1800)


def test_plugin_test_py_passes_when_weights_are_present(installed_in_brainscore, isolated_cache, tmp_path):
    """The plugin's own test.py, run as Brain-Score's CI runs it, with a checkpoint in the published
    format in the cache (random weights: the real ones cannot be downloaded here)."""
    import torch
    from vonenet_brainscore.zoo import get_model, model_record
    record = model_record('resnet50')
    record.cache_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'flags': {'arch': 'resnet50'}, 'epoch': 0,
                'state_dict': get_model('resnet50', pretrained=False).state_dict()}, record.cache_path)
    result = _isolated_pytest(tmp_path, installed_in_brainscore / 'test.py', '-k',
                              '[vonenet_resnet50] or [vonenet_resnet50_nonoise] or package_knows',
                              env={'VONENET_BRAINSCORE_HOME': str(isolated_cache),
                                   'VONENET_BRAINSCORE_MIRROR': UNREACHABLE})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert '5 passed' in result.stdout, result.stdout[-2000:]


def _generic_tests_folder(tmp_path) -> Path:
    """A verbatim copy of Brain-Score's generic plugin tests (and their conftest), beside the three images
    they look for in ``generic_plugin_tests_resources/``."""
    from PIL import Image
    from brainscore_vision.model_helpers import generic_plugin_tests
    folder = tmp_path / 'generic'
    resources = folder / 'generic_plugin_tests_resources'
    resources.mkdir(parents=True)
    shutil.copyfile(generic_plugin_tests.__file__, folder / 'generic_plugin_tests.py')
    shutil.copyfile(Path(generic_plugin_tests.__file__).parent / 'conftest.py', folder / 'conftest.py')
    rng = np.random.default_rng(0)
    for name in ('rgb1.jpg', 'rgb2.jpg', 'rgb3.png'):
        Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8), 'RGB').save(resources / name)
    return folder


GENERIC_TESTS = ['test_identifier', 'test_visual_degrees', 'test_start_task_or_recording',
                 'test_look_at_neural_V1', 'test_look_at_behavior_probabilities']


@pytest.mark.filterwarnings('ignore::RuntimeWarning')
def test_brainscore_generic_plugin_tests(installed_in_brainscore, offline, tmp_path):
    """Brain-Score's generic plugin tests for vonenet_resnet50 (all ten: the slow test below)."""
    folder = _generic_tests_folder(tmp_path)
    loaded = importlib.util.spec_from_file_location('generic_plugin_tests_copy', folder / 'generic_plugin_tests.py')
    generic = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(generic)
    found = sorted(name for name in dir(generic) if name.startswith('test_'))
    assert found == sorted(GENERIC_TESTS), 'Brain-Score changed its generic tests: update GENERIC_TESTS'
    assert generic._make_stimulus_set().stimulus_paths['stimid3'].is_file()
    for name in GENERIC_TESTS:
        getattr(generic, name)('vonenet_resnet50')


@pytest.mark.slow
def test_brainscore_generic_plugin_tests_all_identifiers_as_brainscore_ci_runs_them(installed_in_brainscore,
                                                                                      isolated_cache, tmp_path):
    """``pytest -m "not slow" generic_plugin_tests.py --plugin_directory <plugin>``, as Brain-Score's
    test_plugin.sh runs it: the identifiers come from Brain-Score's parsing of our __init__.py."""
    folder = _generic_tests_folder(tmp_path)
    result = _isolated_pytest(tmp_path, folder / 'generic_plugin_tests.py', '-m', 'not slow',
                              '--plugin_directory', installed_in_brainscore, '-W', 'ignore::RuntimeWarning',
                              env={'VONENET_BRAINSCORE_HOME': str(isolated_cache),
                                   'VONENET_BRAINSCORE_MIRROR': UNREACHABLE})
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
    assert f'{len(GENERIC_TESTS) * len(brain.IDENTIFIERS)} passed' in result.stdout, result.stdout[-3000:]
