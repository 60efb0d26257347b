"""The local Brain-Score plugin (``plugin install``): generated from the package, found by Brain-Score.

Install tests work on a temporary copy of Brain-Score's models folder (every bundled plugin's
``__init__.py``, which is all Brain-Score reads to find a plugin) and check it with Brain-Score's own
plugin-locating code. The integration tests install into the real ``brainscore_vision/models`` for
the duration of the module and remove it afterwards (unless it was installed before).
"""
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from published_checkpoint import published_checkpoint
from scoring_machine import copy_generic_plugin_tests, make_scoring_machine
from vonenet_brainscore import cli
from vonenet_brainscore.brain.plugin import install as plugin_tools
from vonenet_brainscore.brain.commitments import load_commitment
from vonenet_brainscore.errors import UnknownModelError, WeightsUnavailableError
from vonenet_brainscore.published.naming import IDENTIFIERS
from vonenet_brainscore.brain.plugin.install import (MARKER_NAME, PLUGIN_NAME, PluginConflictError, PluginError,
                                             install_plugin, is_current, is_installed, uninstall_plugin)
from vonenet_brainscore.submission import render_plugin

from brainscore_core.plugin_management.import_plugin import ImportPlugin  # noqa: E402
from brainscore_core.plugin_management.parse_plugin_changes import get_plugin_ids  # noqa: E402

REAL_MODELS = plugin_tools.brainscore_models_dir()
UNREACHABLE = 'http://127.0.0.1:9/'  # connection refused at once: the published weights are "unavailable"


def brainscore_locate(models_dir: Path, identifier: str) -> str:
    """Brain-Score's own plugin lookup (ImportPlugin.locate_plugin) run on ``models_dir``."""
    importer = ImportPlugin.__new__(ImportPlugin)
    importer.plugin_type, importer.plugins_dir = 'models', Path(models_dir)
    importer.identifier, importer.registry_name = identifier, 'model_registry'
    return importer.locate_plugin()


def tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*'))
            if p.is_file() and '__pycache__' not in p.parts}


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


# --- the generated plugin ------------------------------------------------------------------------------------

@pytest.mark.parametrize('carry_code', [False, True])
def test_init_registers_each_identifier_once_literally_single_quoted(carry_code):
    identifiers = list(IDENTIFIERS) if not carry_code else ['vonenet_cornets_nonoise']
    text = render_plugin(identifiers, carry_code=carry_code)['__init__.py'].decode()
    registry_lines = [line for line in text.splitlines() if 'model_registry[' in line.replace('"', "'")]
    registered = []
    for line in registry_lines:
        match = re.fullmatch(r"model_registry\['([^'-]+)'\] = lambda: build_brain_model\('([^']+)'\)", line)
        assert match, f'not a literal one-line single-quoted registration: {line!r}'
        assert match.group(1) == match.group(2), f'registered under one identifier, builds another: {line!r}'
        registered.append(match.group(1))
    assert registered == identifiers
    assert text.count('model_registry[') == len(identifiers)  # nowhere else, not even in the docstring


def test_local_plugin_imports_the_installed_package_and_submitted_one_its_own_copy():
    local = render_plugin(['vonenet_resnet50'], carry_code=False)
    carried = render_plugin(['vonenet_resnet50'], carry_code=True)
    assert b'from vonenet_brainscore.brain.model import brain_model' in local['model.py']
    assert b'from .vonenet_brainscore.brain.model import brain_model' in carried['model.py']
    assert not [name for name in local if name.startswith('vonenet_brainscore/')]
    assert 'vonenet_brainscore/brain/model.py' in carried and 'LICENSE' in carried
    assert b'GNU GENERAL PUBLIC LICENSE' in carried['LICENSE'] and b'Version 3' in carried['LICENSE']
    assert 'requirements.txt' not in local  # its requirement is the installed package itself
    for files in (local, carried):
        assert not [name for name in files if 'metadata.y' in name or ' ' in name]
        assert {'__init__.py', 'model.py', 'test.py', 'region_layer_map/vonenet_resnet50.json'} <= set(files)


def test_region_layer_maps_are_the_commitments():
    files = render_plugin(list(IDENTIFIERS), carry_code=False)
    for identifier, model_spec in IDENTIFIERS.items():
        shipped = json.loads(files[f'region_layer_map/{identifier}.json'])
        assert shipped == load_commitment(model_spec.model).region_layers
    assert shipped['V1'] == 'vone_block'


def test_unknown_and_old_names_are_refused_when_rendering():
    with pytest.raises(UnknownModelError, match="now 'vonenet_resnet50_at'"):
        render_plugin(['vonenet-resnet50-at'], carry_code=True)
    with pytest.raises(UnknownModelError, match="unknown brain model"):
        render_plugin(['voneresnet-50'], carry_code=True)


def test_plugin_model_functions(tmp_path, monkeypatch):
    """The generated model.py of the local plugin, imported as Brain-Score imports a plugin module."""
    monkeypatch.setenv('VONENET_BRAINSCORE_MIRROR', UNREACHABLE)
    install_plugin(tmp_path)
    import importlib.util
    spec = importlib.util.spec_from_file_location('vonenet_plugin_model', tmp_path / PLUGIN_NAME / 'model.py')
    model = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model)
    assert model.get_model_list() == list(IDENTIFIERS)
    assert model.get_layers('vonenet_cornets_nonoise') == load_commitment('cornets').candidate_layers
    bibtex = model.get_bibtex('vonenet_resnet50')
    assert 'Dapello' in bibtex and 'Marques' in bibtex and '2020' in bibtex and 'Neural Information' in bibtex
    with pytest.raises(KeyError, match='vonenet_resnet50'):
        model.get_bibtex('resnet50')
    with pytest.raises(WeightsUnavailableError, match='vonealexnet_e70.pth.tar'):
        model.get_model('vonenet_alexnet')  # no weights: an error, never an untrained stand-in


# --- install into a copy of Brain-Score's models folder ------------------------------------------------------

def test_install_is_found_by_brainscore_and_uninstall_removes_it(models_copy):
    before = sorted(p.name for p in models_copy.iterdir())
    with pytest.raises(AssertionError, match='No registrations'):
        brainscore_locate(models_copy, 'vonenet_resnet50')
    assert not is_installed(models_copy)

    target = install_plugin(models_copy)
    assert target == models_copy / PLUGIN_NAME and not target.is_symlink()
    assert is_installed(models_copy) and is_current(models_copy)
    for identifier in IDENTIFIERS:
        assert brainscore_locate(models_copy, identifier) == PLUGIN_NAME
    assert sorted(get_plugin_ids('models', [PLUGIN_NAME], str(models_copy.parent))) == sorted(IDENTIFIERS)
    assert {n: d for n, d in tree(target).items() if n != MARKER_NAME} == \
        render_plugin(list(IDENTIFIERS), carry_code=False)
    assert sorted(p.name for p in models_copy.iterdir()) == sorted(before + [PLUGIN_NAME])  # nothing else left

    assert install_plugin(models_copy) == target  # again: fine, same result
    assert sorted(p.name for p in models_copy.iterdir()) == sorted(before + [PLUGIN_NAME])

    assert uninstall_plugin(models_copy) is True
    assert not os.path.lexists(target) and not is_installed(models_copy)
    assert sorted(p.name for p in models_copy.iterdir()) == before
    assert uninstall_plugin(models_copy) is False


def test_a_stale_install_is_reported_and_refreshed(models_copy):
    target = install_plugin(models_copy)
    (target / 'model.py').write_text('# stale\n')
    (target / 'region_layer_map' / 'vonenet-old.json').write_text('{}\n')
    assert is_installed(models_copy) and not is_current(models_copy)
    install_plugin(models_copy)
    assert is_current(models_copy)
    assert not (target / 'region_layer_map' / 'vonenet-old.json').exists()
    assert not [p for p in models_copy.iterdir() if p.name.startswith('.')]


def test_an_old_symlink_install_of_ours_is_replaced_and_removed(models_copy, tmp_path):
    target = models_copy / PLUGIN_NAME
    target.symlink_to(tmp_path / 'gone' / 'vonenet_brainscore' / 'plugin', target_is_directory=True)
    assert not is_installed(models_copy)
    install_plugin(models_copy)
    assert is_installed(models_copy) and not target.is_symlink()
    shutil.rmtree(target)
    target.symlink_to(tmp_path / 'gone' / 'vonenet_brainscore' / 'plugin', target_is_directory=True)
    assert uninstall_plugin(models_copy) is True and not os.path.lexists(target)


@pytest.mark.parametrize('kind', ['folder', 'symlink', 'file'])
def test_install_and_uninstall_refuse_to_touch_a_foreign_entry(models_copy, tmp_path, kind):
    target = models_copy / PLUGIN_NAME
    if kind == 'folder':
        target.mkdir()
        (target / '__init__.py').write_text("model_registry['someone_else'] = None\n")
    elif kind == 'symlink':
        elsewhere = tmp_path / 'someone_elses_plugin'
        elsewhere.mkdir()
        (elsewhere / '__init__.py').write_text('\n')
        target.symlink_to(elsewhere, target_is_directory=True)
    else:
        target.write_text('not a plugin\n')
    snapshot = (os.readlink(target) if target.is_symlink() else tree(target) if target.is_dir()
                else target.read_bytes())
    with pytest.raises(PluginConflictError, match='did not install'):
        install_plugin(models_copy)
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


def test_install_arguments_are_checked(tmp_path):
    with pytest.raises(PluginError, match='not a folder'):
        install_plugin(tmp_path / 'no-such-models')
    with pytest.raises(PluginError, match='not a folder'):
        uninstall_plugin(tmp_path / 'no-such-models')


def test_plugin_verb_through_the_cli(models_copy, capsys):
    assert cli.main(['plugin', 'status', '--models-dir', str(models_copy)]) == 0
    assert capsys.readouterr().out.strip() == 'not installed'
    assert cli.main(['plugin', 'install', '--models-dir', str(models_copy)]) == 0
    assert capsys.readouterr().out.strip() == f'installed: {models_copy / PLUGIN_NAME}'
    assert cli.main(['plugin', 'status', '--models-dir', str(models_copy)]) == 0
    assert capsys.readouterr().out.strip() == 'installed'
    (models_copy / PLUGIN_NAME / 'test.py').write_text('# edited\n')
    assert cli.main(['plugin', 'status', '--models-dir', str(models_copy)]) == 0
    assert 'out of date' in capsys.readouterr().out
    assert cli.main(['plugin', 'uninstall', '--models-dir', str(models_copy)]) == 0
    assert capsys.readouterr().out.strip() == 'removed'
    assert cli.main(['plugin', 'install', '--models-dir', str(models_copy / 'nope')]) == 2
    assert 'not a folder' in capsys.readouterr().err


def test_default_models_folder_is_brainscores():
    import brainscore_vision
    assert plugin_tools.brainscore_models_dir() == Path(brainscore_vision.__file__).parent / 'models'


# --- Brain-Score integration: a separate environment, never this one's site-packages -----------------------------

@pytest.fixture(scope='module')
def machine_with_plugin(tmp_path_factory):
    """A fresh environment with Brain-Score and this package (see scoring_machine.py), the plugin installed
    there by the command line: a killed test run leaves nothing in this environment's brainscore_vision."""
    existed_here = os.path.lexists(REAL_MODELS / PLUGIN_NAME)
    machine = make_scoring_machine(tmp_path_factory.mktemp('local-plugin'), with_our_package=True)
    env = machine.env(BS_INSTALL_DEPENDENCIES='no', VONENET_BRAINSCORE_MIRROR=UNREACHABLE)
    done = machine.run(['-m', 'vonenet_brainscore.cli', 'plugin', 'install'], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f'installed: {machine.models_dir / PLUGIN_NAME}'
    assert os.path.lexists(REAL_MODELS / PLUGIN_NAME) == existed_here  # this environment's Brain-Score untouched
    return machine


LOAD_WITHOUT_WEIGHTS = """
import brainscore_vision
print(brainscore_vision.load_model_bibtex('vonenet_resnet50')[:40])
try:
    brainscore_vision.load_model('vonenet_resnet50')
except Exception as error:
    print(type(error).__name__, error)
"""


def test_brainscore_load_model_without_weights_fails_with_the_remedy(machine_with_plugin):
    env = machine_with_plugin.env(BS_INSTALL_DEPENDENCIES='no', VONENET_BRAINSCORE_MIRROR=UNREACHABLE)
    done = machine_with_plugin.run(['-c', LOAD_WITHOUT_WEIGHTS], env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith('@inproceedings{NEURIPS2020')
    assert 'WeightsUnavailableError' in done.stdout and 'voneresnet50_e70.pth.tar' in done.stdout
    assert 'VONENET_BRAINSCORE_MIRROR' in done.stdout and '_untrained' not in done.stdout


def test_brainscore_generic_plugin_tests_as_brainscore_ci_runs_them(machine_with_plugin, reference, tmp_path):
    """``pytest -m "not slow" generic_plugin_tests.py --plugin_directory <plugin>``, as Brain-Score's CI runs it,
    for the plugin's ten identifiers (read by Brain-Score from our __init__.py), with published-format
    checkpoints written by the original code in the cache; here for resnet50 (with and without noise)."""
    home = tmp_path / 'vonenet-home'
    (home / 'weights').mkdir(parents=True)
    published_checkpoint(reference, 'resnet50', home / 'weights' / 'voneresnet50_e70.pth.tar', 'neuronal')
    folder = copy_generic_plugin_tests(tmp_path / 'generic')
    env = machine_with_plugin.env(BS_INSTALL_DEPENDENCIES='no', VONENET_BRAINSCORE_MIRROR=UNREACHABLE,
                                  VONENET_BRAINSCORE_HOME=str(home))
    done = machine_with_plugin.run(['-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-m', 'not slow', '-c',
                                    folder / 'pytest.ini', '--rootdir', folder, folder / 'generic_plugin_tests.py',
                                    '--plugin_directory', machine_with_plugin.models_dir / PLUGIN_NAME,
                                    '-k', 'vonenet_resnet50]' + ' or vonenet_resnet50_nonoise]'], env=env)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert '10 passed' in done.stdout, done.stdout[-3000:]
