"""Submission zips: one self-contained plugin per model, and the website's upload check (``submission --check``).

``--check`` must accept every zip ``submission`` builds and reject zips that break one website rule each
(brain-score.web, benchmarks/views/user.py: size, spaces, metadata files, layout, __init__.py and
test.py, one identifier, no hyphens, literal single-quoted registration, names new to Brain-Score).
"""
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from vonenet_brainscore import cli
from vonenet_brainscore.errors import SubmissionError
from vonenet_brainscore.published.naming import IDENTIFIERS
from vonenet_brainscore.submission import build_all_submissions, build_submission, check_submission, load_taken_names
from vonenet_brainscore.brain.plugin.vendoring import module_closure, vendored_code
from vonenet_brainscore.submission.website import collect_brainscore_names

ROOT = 'submission'  # the upload page asks for submission/models/<model_identifier>/
PLUGIN = f'{ROOT}/models/vonenet_resnet50/'


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    return build_submission('vonenet_resnet50', tmp_path_factory.mktemp('zip') / 'vonenet_resnet50.zip')


def entries(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: (None if info.filename.endswith('/') else archive.read(info))
                for info in archive.infolist()}


def write(path: Path, content: dict, stored: bool = False) -> Path:
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED) as archive:
        for name, data in content.items():
            archive.writestr(name, b'' if data is None else data)
    return path


# --- what `submission` builds ----------------------------------------------------------------------------------

def test_one_zip_per_model_with_the_website_layout(built):
    content = entries(built)
    names = list(content)
    assert names[:3] == [f'{ROOT}/', f'{ROOT}/models/', PLUGIN]  # the root first: the website reads namelist[0]
    assert all(name.startswith(PLUGIN) for name in names[3:])
    for folder in {name.rsplit('/', 2)[0] + '/' for name in names if not name.endswith('/') and name.count('/') > 3}:
        assert folder in content, f'no folder entry for {folder}'
    files = {name[len(PLUGIN):] for name, data in content.items() if data is not None}
    assert {'__init__.py', 'test.py', 'model.py', 'requirements.txt', 'LICENSE',
            'region_layer_map/vonenet_resnet50.json', 'vonenet_brainscore/brain/model.py',
            'vonenet_brainscore/commitments/resnet50.json', 'vonenet_brainscore/vone/accel/kernels.c'} <= files
    assert not [n for n in names if ' ' in n or 'metadata.y' in n or '__pycache__' in n or n.endswith('.pyc')]
    assert os.path.getsize(built) < 1 * 1024 * 1024  # code only: far below the 50 MB limit
    assert check_submission(built) == []


def test_the_zip_carries_the_import_closure_of_the_brain_model_generated_from_the_package(built):
    content = entries(built)
    modules, third_party = module_closure()
    assert {'brain.model', 'brain.extraction', 'published.catalogue', 'published.download', 'published.checkpoints',
            'vone.block', 'vone.accel.native', 'backends.resnet'} <= set(modules)
    assert not {'cli', 'training', 'scoring.mapping', 'robustness'} & set(modules)  # what brain models do not need
    package_dir = Path(__import__('vonenet_brainscore').__file__).parent
    for relative, source in vendored_code().files.items():
        assert content[PLUGIN + 'vonenet_brainscore/' + relative] == source.read_bytes(), relative
    assert content[PLUGIN + 'LICENSE'] == (package_dir / 'LICENSE').read_bytes()
    assert not (package_dir / 'plugin').exists(), 'a second, hand-kept copy of the plugin is back in the package'


def test_requirements_are_pypi_ranges_the_installed_stack_satisfies(built):
    from importlib.metadata import version
    text = entries(built)[PLUGIN + 'requirements.txt'].decode()
    requirements = [Requirement(line) for line in text.splitlines() if line and not line.startswith('#')]
    names = {r.name.lower() for r in requirements}
    assert {'torch', 'torchvision', 'brainscore-vision'} <= names
    assert 'vonenet-brainscore' not in names and not [line for line in text.splitlines() if '://' in line]
    for requirement in requirements:
        assert requirement.specifier, f'{requirement} accepts anything: give a range'
        assert not [s for s in requirement.specifier if s.operator in ('==', '===')], f'{requirement} is a pin'
        assert requirement.specifier.contains(version(requirement.name), prereleases=True), \
            f'{requirement} rejects the installed {requirement.name} {version(requirement.name)}'


def test_zips_are_reproducible_and_written_atomically(built, tmp_path):
    again = build_submission('resnet50', tmp_path / 'again.zip')  # a catalogue name works too
    assert again.read_bytes() == built.read_bytes()
    out = tmp_path / 'dist' / 'vonenet.zip'
    out.parent.mkdir()
    out.write_bytes(b'the previous submission')
    with pytest.raises(SubmissionError, match='must end in .zip'):
        build_submission('vonenet_resnet50', tmp_path / 'x.tar')
    (tmp_path / 'folder.zip').mkdir()
    with pytest.raises(SubmissionError, match='is a folder'):
        build_submission('vonenet_resnet50', tmp_path / 'folder.zip')
    with pytest.raises(KeyError, match="now 'vonenet_resnet50'"):
        build_submission('vonenet-resnet50', out)
    assert out.read_bytes() == b'the previous submission'
    assert sorted(p.name for p in tmp_path.rglob('*') if p.name.endswith('.part')) == []


def test_all_writes_one_passing_zip_per_identifier_through_the_cli(tmp_path, capsys):
    assert cli.main(['submission', '--all', str(tmp_path / 'zips')]) == 0
    written = sorted(p.name for p in (tmp_path / 'zips').iterdir())
    assert written == sorted(f'{identifier}.zip' for identifier in IDENTIFIERS)
    assert capsys.readouterr().out.count('wrote ') == len(IDENTIFIERS)
    registered = set()
    for path in (tmp_path / 'zips').iterdir():
        assert check_submission(path) == [], path.name
        init = [data for name, data in entries(path).items() if name.endswith('/__init__.py') and name.count('/') == 3]
        registered.add(init[0].decode().split("model_registry['")[1].split("'")[0])
        assert path.stem in init[0].decode()
    assert registered == set(IDENTIFIERS)
    assert cli.main(['submission', '--check', *map(str, sorted((tmp_path / 'zips').iterdir()))]) == 0
    assert capsys.readouterr().out.count("passes the website's checks") == len(IDENTIFIERS)


def test_cli_needs_a_model_and_a_zip(capsys, tmp_path):
    assert cli.main(['submission', str(tmp_path / 'x.zip')]) == 2
    assert 'give MODEL and OUT.zip' in capsys.readouterr().err


# --- `--check`: one broken rule at a time -----------------------------------------------------------------------

def _init(*lines):
    return ('from brainscore_vision import model_registry\n' + '\n'.join(lines) + '\n').encode()


def _broken(good: dict):
    """(name, mutated entries, message expected) for each rule of the website's check."""
    without = lambda *names: {k: v for k, v in good.items() if k not in names}  # noqa: E731
    init = PLUGIN + '__init__.py'
    yield 'space', {**good, PLUGIN + 'my notes.txt': b'x'}, "contains a space"
    yield 'metadata', {**good, PLUGIN + 'metadata.yml': b'x'}, 'metadata files'
    yield 'no models folder entry', without(f'{ROOT}/models/'), 'no plugin folder'
    yield 'no plugin folder entry', without(PLUGIN), 'holds no plugin folder'
    yield 'no test.py', without(PLUGIN + 'test.py'), 'lacks test.py'
    yield 'no __init__.py', without(init), 'lacks __init__.py'
    yield 'two identifiers', {**good, init: _init("model_registry['vonenet_resnet50'] = None",
                                                  "model_registry['vonenet_resnet50_extra'] = None")}, \
        'at most 1 per zip'
    yield 'hyphen', {**good, init: _init("model_registry['vonenet-resnet50'] = None")}, 'contains a hyphen'
    yield 'registration only in a comment', {**good, init: _init("# model_registry['vonenet_resnet50'] = None")}, \
        'no model registration found'
    yield 'taken identifier', {**good, init: _init("model_registry['vonealexnet'] = None")}, \
        'already a model or plugin name'
    yield 'tutorial', {**good, init: _init("model_registry['my_resnet50_tutorial'] = None")}, 'resnet50_tutorial'
    yield 'two top-level folders', {**good, 'other/': None, 'other/readme.txt': b'x'}, 'exactly one top-level'


def test_check_rejects_each_broken_rule_with_one_message(built, tmp_path):
    good = entries(built)
    for name, content, expected in _broken(good):
        path = write(tmp_path / (name.replace(' ', '_') + '.zip'), content)
        problems = check_submission(path)
        assert len(problems) == 1 and expected in problems[0], (name, problems)


def test_check_rejects_a_taken_plugin_folder_name(built, tmp_path):
    renamed = {name.replace('/models/vonenet_resnet50/', '/models/alexnet/'): data
               for name, data in entries(built).items()}
    problems = check_submission(write(tmp_path / 'taken-folder.zip', renamed))
    assert problems == [f"'alexnet' is already a model or plugin name in Brain-Score ({load_taken_names().source}); "
                        f"pick a new name"]


def test_check_rejects_double_quoted_registrations_the_website_cannot_read(built, tmp_path):
    content = {**entries(built), PLUGIN + '__init__.py': _init('model_registry["vonenet_resnet50"] = None')}
    problems = check_submission(write(tmp_path / 'double.zip', content))
    assert any('double quotes' in p for p in problems) and any('no model registration' in p for p in problems)


def test_check_rejects_zips_over_50_mb_and_files_that_are_not_zips(built, tmp_path):
    content = {**entries(built), PLUGIN + 'weights.bin': os.urandom(51 * 1024 * 1024)}
    problems = check_submission(write(tmp_path / 'big.zip', content, stored=True))
    assert len(problems) == 1 and 'over 50 MB' in problems[0]
    (tmp_path / 'notes.zip').write_text('not a zip')
    assert check_submission(tmp_path / 'notes.zip')[0].startswith('not a readable zip file')


def test_check_through_the_cli_names_the_zip_and_each_problem(built, tmp_path, capsys):
    content = {**entries(built), PLUGIN + 'metadata.yaml': b'x'}
    content.pop(PLUGIN + 'test.py')
    bad = write(tmp_path / 'bad.zip', content)
    assert cli.main(['submission', '--check', str(built), str(bad)]) == 2
    captured = capsys.readouterr()
    assert f"{built}: passes the website's checks" in captured.out
    assert f'{bad}: REJECTED' in captured.out
    assert len([line for line in captured.out.splitlines() if line.startswith(f'{bad}: ')]) == 3
    assert 'breaks a rule' in captured.err


# --- the list of names Brain-Score has -------------------------------------------------------------------------

def test_taken_names_hold_every_name_of_the_installed_brainscore_and_none_of_ours():
    import brainscore_vision
    taken = load_taken_names()
    installed = collect_brainscore_names(Path(brainscore_vision.__file__).parent / 'models')
    assert 'brainscore-vision' in taken.source
    missing = (set(installed['identifiers']) - taken.identifiers) | (set(installed['plugin_folders'])
                                                                      - taken.plugin_folders - {'vonenet_brainscore_models'})
    assert not missing, f'taken_names.json is stale; regenerate it with collect_brainscore_names: {sorted(missing)[:5]}'
    for name in ('voneresnet-50', 'vonealexnet', 'VOneCORnet-S', 'voneresnet-50-robust',
                 'voneresnet-50-non_stochastic', 'voneresnet_50_1', 'vonegrcnn_47e'):
        assert name in taken
    assert not [identifier for identifier in IDENTIFIERS if identifier in taken]
    data = json.loads(io.open(Path(__import__('vonenet_brainscore.submission.website', fromlist=['x']).__file__)
                              .with_name('taken_names.json')).read())
    assert data['identifiers'] == sorted(data['identifiers'])


def test_a_zip_that_breaks_the_rules_replaces_nothing(tmp_path, monkeypatch):
    """The name is taken on the website the day the build runs (Brain-Score's list is the input here):
    the build fails, names the rule, and the earlier zip at that path is left as it was."""
    from vonenet_brainscore.submission import website
    out = tmp_path / 'vonenet_resnet50.zip'
    build_submission('vonenet_resnet50', out)
    earlier = out.read_bytes()
    names = website.load_taken_names()
    monkeypatch.setattr(website, 'load_taken_names', lambda: website.TakenNames(
        source='the website today', identifiers=names.identifiers | {'vonenet_resnet50'},
        plugin_folders=names.plugin_folders | {'vonenet_resnet50'}))
    with pytest.raises(SubmissionError, match='already a model or plugin name'):
        build_submission('vonenet_resnet50', out)
    assert out.read_bytes() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ['vonenet_resnet50.zip']  # no candidate or .part left
