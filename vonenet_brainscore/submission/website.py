"""Brain-Score's website upload check, run locally: every rule a model zip must pass before it is accepted.

Part of ``submission/`` (brain-score.org's upload rules and the zips); ``build_submission`` runs it on
every zip before keeping it, ``vonenet-brainscore submission --check`` on any zip.

The rules are those of brain-score/brain-score.web, ``benchmarks/views/user.py`` (``validate_zip``,
``is_submission_original_and_under_plugin_limit`` and helpers; read 2026-12-01), in the same order and
reading the zip the same way (folder entries end in ``/``; identifiers are read from
``<root>/<plugin type>/<plugin>/__init__.py`` with the regex below, comments stripped). The website
checks names against its database; here they are checked against ``taken_names.json``: every plugin
folder and registered identifier of the brainscore-vision release named in that file.

Each broken rule gives one message. Two checks are ours, not the website's, because a zip that
passes the website but breaks them cannot be scored: Brain-Score's pipeline unpacks a zip that has
exactly one top-level folder, and a model plugin that registers nothing scores nothing.
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from io import TextIOWrapper
from pathlib import Path
from typing import Dict, FrozenSet, List, Optional, Set

MAX_ZIP_MB = 50
PLUGIN_LIMIT = 1
PLUGIN_TYPES = ('models', 'benchmarks', 'data', 'metrics')
REQUIRED_FILES = ('__init__.py', 'test.py')
REGISTRY_PATTERNS = {
    'models': re.compile(r"model_registry\['(.+?)'\]"),
    'benchmarks': re.compile(r"benchmark_registry\['(.+?)'\]"),
    'data': re.compile(r"data_registry\['(.+?)'\]"),
    'metrics': re.compile(r"metric_registry\['(.+?)'\]"),
}
_DOUBLE_QUOTED = re.compile(r'model_registry\["(.+?)"\]')
TUTORIAL_NAME = 'resnet50_tutorial'  # the website refuses any name containing it
TAKEN_NAMES_FILE = Path(__file__).with_name('taken_names.json')


@dataclass(frozen=True)
class TakenNames:
    """Names Brain-Score already has, and where the list comes from."""

    source: str
    identifiers: FrozenSet[str]
    plugin_folders: FrozenSet[str]

    def __contains__(self, name: str) -> bool:
        return name in self.identifiers or name in self.plugin_folders


def load_taken_names(path: Path = TAKEN_NAMES_FILE) -> TakenNames:
    data = json.loads(Path(path).read_text(encoding='utf-8'))
    return TakenNames(source=data['source'], identifiers=frozenset(data['identifiers']),
                      plugin_folders=frozenset(data['plugin_folders']))


def collect_brainscore_names(models_dir: Path) -> Dict[str, List[str]]:
    """Plugin folders and registered identifiers (either quote, as Brain-Score's loader reads them) of a
    ``brainscore_vision/models`` folder: how ``taken_names.json`` is made and checked."""
    pattern = re.compile(r"""model_registry\[['"](.+?)['"]\]""")
    folders, identifiers = [], set()
    for folder in sorted(Path(models_dir).iterdir()):
        if not folder.is_dir() or folder.name.startswith(('.', '_')):
            continue
        folders.append(folder.name)
        init = folder / '__init__.py'
        if init.is_file():
            for line in init.read_text(encoding='utf-8', errors='replace').splitlines():
                identifiers.update(pattern.findall(line.split('#', 1)[0]))
    return {'plugin_folders': folders, 'identifiers': sorted(identifiers)}


def _registrations(archive: zipfile.ZipFile) -> Dict[str, Dict[str, Set[str]]]:
    """``{plugin type: {plugin folder: identifiers}}`` read exactly as the website reads them."""
    found: Dict[str, Dict[str, Set[str]]] = {plugin: {} for plugin in PLUGIN_TYPES}
    for info in archive.infolist():
        segments = info.filename.split('/')
        if len(segments) == 4 and segments[1] in PLUGIN_TYPES and segments[-1] == '__init__.py':
            with archive.open(info) as file:
                names = found[segments[1]].setdefault(segments[2], set())
                for line in TextIOWrapper(file, encoding='utf-8', errors='replace'):
                    names.update(REGISTRY_PATTERNS[segments[1]].findall(line.split('#', 1)[0].strip()))
    return found


def _double_quoted(archive: zipfile.ZipFile) -> List[str]:
    """Model registrations written with double quotes: Brain-Score loads them, the website never sees them."""
    found = []
    for info in archive.infolist():
        segments = info.filename.split('/')
        if len(segments) == 4 and segments[1] == 'models' and segments[-1] == '__init__.py':
            text = archive.read(info).decode('utf-8', errors='replace')
            found += [f"{info.filename}: {name}" for line in text.splitlines()
                      for name in _DOUBLE_QUOTED.findall(line.split('#', 1)[0])]
    return found


def check_submission(zip_path, taken: TakenNames = None) -> List[str]:
    """Every rule of the upload check that ``zip_path`` breaks, one message each; [] when it passes."""
    taken = taken or load_taken_names()
    path = Path(zip_path)
    if not path.is_file():
        return [f"{path} is not a file"]
    problems = _size_problems(path)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        return problems + [f"not a readable zip file ({error})"]
    with archive:
        names = [info.filename for info in archive.infolist()]
        if not names:
            return problems + ['the zip is empty']
        problems += _name_problems(names)
        instances = _plugin_folders(names)
        if instances is None:
            return problems + [f"no plugin folder: the layout must be <root>/models/<plugin>/ with an explicit "
                               f"folder entry '{names[0].split('/')[0]}/models/'"]
        problems += _layout_problems(names, instances)
        registered = _registrations(archive)
        problems += [f"{entry} is registered with double quotes; the website reads only model_registry['...'] "
                     f"with single quotes" for entry in _double_quoted(archive)]
    return problems + _registration_problems(registered, instances, taken)


def _size_problems(path: Path) -> List[str]:
    size_mb = os.path.getsize(path) / (1024 * 1024)
    if size_mb <= MAX_ZIP_MB:
        return []
    return [f"the zip is {size_mb:.1f} MB; the website refuses zips over {MAX_ZIP_MB} MB (weights belong on a "
            f"server the plugin downloads from, not in the zip)"]


def _name_problems(names: List[str]) -> List[str]:
    """File names the website refuses, and a zip without exactly one top-level folder."""
    problems = [f"file name {name!r} contains a space; the website refuses spaces in file names"
                for name in names if ' ' in name]
    problems += [f"{name}: the website refuses user-contributed metadata files (Brain-Score writes "
                 f"metadata.yaml itself)" for name in names
                 if name.lower().endswith(('metadata.yaml', 'metadata.yml'))]
    roots = {name.split('/')[0] for name in names if not name.startswith(('.', '_', '__MACOSX'))}
    if len(roots) != 1:
        problems.append(f"the zip must hold exactly one top-level folder (<root>/models/<plugin>/), "
                        f"found {sorted(roots)}")
    return problems


def _plugin_folders(names: List[str]) -> Optional[Dict[str, List[str]]]:
    """``{plugin type: its plugin folders}`` from the folder entries; None without any plugin type folder."""
    plugin_types = {name.split('/')[1].lower() for name in names if name.endswith('/') and name.count('/') == 2}
    plugin_types &= set(PLUGIN_TYPES)
    if not plugin_types:
        return None
    return {plugin: [name.split('/')[2] for name in names if name.endswith('/')
                     and name.count('/') == 3 and name.split('/')[1] == plugin]
            for plugin in plugin_types}


def _layout_problems(names: List[str], instances: Dict[str, List[str]]) -> List[str]:
    """A plugin type folder without plugins, and plugin folders without __init__.py and test.py."""
    problems = []
    if not any(instances.values()):
        problems.append(f"the {', '.join(sorted(instances))} folder holds no plugin folder entry "
                        f"(<root>/<type>/<plugin>/)")
    for plugin, folders in instances.items():
        for folder in folders:
            present = {name.split('/')[-1] for name in names if len(name.split('/')) > 1
                       and name.split('/')[-2] == folder}
            missing = [required for required in REQUIRED_FILES if required not in present]
            if missing:
                problems.append(f"plugin folder {plugin}/{folder}/ lacks {' and '.join(missing)}; the website "
                                f"requires both __init__.py and test.py")
    return problems


def _registration_problems(registered: Dict[str, Dict[str, Set[str]]], instances: Dict[str, List[str]],
                           taken: TakenNames) -> List[str]:
    """No model registered, hyphens, too many identifiers, and names refused or already taken."""
    problems = []
    identifiers = {name for folders in registered.values() for names in folders.values() for name in names}
    if registered['models'] and not any(registered['models'].values()):  # an __init__.py that registers nothing
        problems.append("no model registration found: models/<plugin>/__init__.py must register the model "
                        "literally as model_registry['<identifier>'] (single quotes, not in a comment)")
    problems += [f"identifier {name!r} contains a hyphen; the website refuses hyphens in model names (use "
                 f"underscores)" for name in sorted(identifiers) if '-' in name]
    if len(identifiers) > PLUGIN_LIMIT:
        problems.append(f"{len(identifiers)} identifiers are registered ({', '.join(sorted(identifiers))}); the "
                        f"website accepts at most {PLUGIN_LIMIT} per zip: build one zip per model")
    for plugin, folders in instances.items():
        for name in sorted(set(folders) | {n for names in registered[plugin].values() for n in names}):
            if TUTORIAL_NAME in name:
                problems.append(f"{name!r} contains {TUTORIAL_NAME!r}, which the website refuses")
            elif plugin == 'models' and name in taken:
                problems.append(f"{name!r} is already a model or plugin name in Brain-Score ({taken.source}); "
                                f"pick a new name")
    return problems
