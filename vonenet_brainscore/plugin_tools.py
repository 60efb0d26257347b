"""The Brain-Score plugin shipped in ``vonenet_brainscore/plugin/``: install it, package it for submission.

The plugin folder is Brain-Score's model-plugin layout (``__init__.py`` with one literal
registration per identifier, ``model.py``, ``test.py``, ``requirements.txt`` and
``region_layer_map/<identifier>.json``). It is thin: everything it calls lives in this package.

Install: Brain-Score only finds plugins inside its own ``brainscore_vision/models/`` folder (it
scans each ``models/<dir>/__init__.py`` for the registration text), so ``install_plugin`` places
the folder there as ``models/vonenet_brainscore_models``, either as a symlink to this package's
copy (follows edits and upgrades) or as a copy (survives removal of this package's source).
A copy carries a marker file so that ``uninstall_plugin`` removes only what ``install_plugin``
placed; a symlink is ours when it points at a ``vonenet_brainscore/plugin`` folder.

Submission: the zip that brain-score.org accepts holds one root folder (any name) that holds
``models/<plugin>/``, the layout of the website's sample submission ("packaging_tutorial/models/
resnet50_tutorial/") and what the website's upload check (``validate_zip``) requires: explicit
folder entries ``<root>/models/`` and ``<root>/models/<plugin>/``, and ``__init__.py`` and
``test.py`` in the plugin folder. Brain-Score's pipeline copies ``models/<plugin>`` into
``brainscore_vision/models/`` of its repository. No ``metadata.yaml`` is shipped: Brain-Score
generates it after submission, and a submitted one makes the pull request non-automergeable.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

from .errors import VOneNetError
from .files import write_atomically

PathLike = Union[str, 'os.PathLike[str]']

PLUGIN_NAME = 'vonenet_brainscore_models'
"""The plugin's folder name under ``brainscore_vision/models/`` and in the submission zip."""

SUBMISSION_ROOT = 'vonenet_brainscore_submission'
"""The single top-level folder of the submission zip (Brain-Score accepts any name)."""

INSTALL_MODES = ('symlink', 'copy')
MARKER_NAME = '.vonenet-brainscore-install.json'
"""Written into a copied install; hidden, so Brain-Score's plugin scan and the zip ignore it."""

REQUIRED_FILES = ('__init__.py', 'model.py', 'test.py')
REGISTRY = 'model_registry'
_REGISTRATION = re.compile(REGISTRY + r"\['([^']*)'\]")
_OWNER = 'vonenet-brainscore'
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed timestamps: the same plugin gives the same zip, byte for byte


class PluginError(VOneNetError):
    """The Brain-Score plugin could not be installed, removed or packaged."""


class PluginConflictError(PluginError):
    """Something that is not ours holds the plugin's folder name or one of its identifiers."""


# --- the plugin folder --------------------------------------------------------------------------------------

def plugin_source_dir() -> Path:
    """The plugin folder shipped inside this package."""
    folder = Path(__file__).resolve().parent / 'plugin'
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise PluginError(f"the Brain-Score plugin folder {folder} lacks {', '.join(missing)}; the package was "
                          f"installed without its data files: reinstall vonenet-brainscore")
    return folder


def plugin_identifiers(plugin_dir: Optional[PathLike] = None) -> List[str]:
    """The identifiers the plugin's ``__init__.py`` registers, read as Brain-Score reads them (from the text)."""
    init = Path(plugin_dir or plugin_source_dir()) / '__init__.py'
    return _registrations(init.read_text(encoding='utf-8'))


def _registrations(text: str) -> List[str]:
    found = []
    for line in text.splitlines():
        found += _REGISTRATION.findall(line.replace('"', "'"))
    return found


def region_layer_map_texts() -> Dict[str, str]:
    """``{identifier: JSON text}`` of every brain model's committed region -> layer map (from commitments/)."""
    from .brain import IDENTIFIERS, region_layer_map  # lazy: brings in Brain-Score and torch

    return {identifier: json.dumps(region_layer_map(identifier), indent=2) + '\n' for identifier in IDENTIFIERS}


def write_region_layer_maps(folder: Optional[PathLike] = None) -> List[Path]:
    """Write ``<identifier>.json`` for every brain model into ``folder`` (default: the shipped plugin's
    ``region_layer_map/``), generated from commitments/. Other files in ``folder`` are left alone;
    ``check_region_layer_maps`` reports them as stale."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent / 'plugin' / 'region_layer_map'
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for identifier, text in region_layer_map_texts().items():
        path = folder / f'{identifier}.json'
        write_atomically(path, lambda stream: stream.write(text.encode('utf-8')), mode=0o644)
        written.append(path)
    return written


def check_region_layer_maps(folder: Optional[PathLike] = None) -> List[str]:
    """What differs between ``folder``'s JSON maps (default: the shipped ones) and the generator's output;
    an empty list when they agree."""
    folder = Path(folder) if folder is not None else plugin_source_dir() / 'region_layer_map'
    expected = region_layer_map_texts()
    problems = []
    for identifier, text in expected.items():
        path = folder / f'{identifier}.json'
        if not path.is_file():
            problems.append(f'{path} is missing')
        elif path.read_text(encoding='utf-8') != text:
            problems.append(f'{path} differs from commitments/')
    stale = sorted(p.name for p in folder.glob('*.json') if p.stem not in expected) if folder.is_dir() else []
    problems += [f'{folder / name} belongs to no brain model (stale)' for name in stale]
    return problems


# --- install into Brain-Score -------------------------------------------------------------------------------

def brainscore_models_dir() -> Path:
    """``brainscore_vision/models`` of the installed Brain-Score, found without importing it."""
    found = importlib.util.find_spec('brainscore_vision')
    if found is None or not found.origin:
        raise PluginError("brainscore_vision is not installed in this environment, so there is no models folder "
                          "to install the plugin into; pip install brainscore-vision")
    return Path(found.origin).resolve().parent / 'models'


def _models_dir(models_dir: Optional[PathLike]) -> Path:
    folder = Path(models_dir) if models_dir is not None else brainscore_models_dir()
    if not folder.is_dir():
        raise PluginError(f"{folder} is not a folder; expected Brain-Score's brainscore_vision/models")
    return folder


def find_registrations(models_dir: PathLike, identifiers: Iterable[str]) -> Dict[str, List[str]]:
    """For each identifier, the plugin folders in ``models_dir`` whose ``__init__.py`` registers it, by
    Brain-Score's rule (``model_registry['<id>']`` in a line, either quote; hidden and ``_`` folders skipped)."""
    wanted = {identifier: f"{REGISTRY}['{identifier}']" for identifier in identifiers}
    found: Dict[str, List[str]] = {identifier: [] for identifier in wanted}
    for folder in sorted(Path(models_dir).iterdir()):
        if folder.name.startswith(('.', '_')) or not folder.is_dir():
            continue
        init = folder / '__init__.py'
        if not init.is_file():
            continue
        text = init.read_text(encoding='utf-8', errors='replace').replace('"', "'")
        for identifier, needle in wanted.items():
            if needle in text:
                found[identifier].append(folder.name)
    return found


def _is_our_source(path: Path) -> bool:
    path = Path(os.path.normpath(path))
    return path.parts[-2:] == ('vonenet_brainscore', 'plugin') or path.resolve() == plugin_source_dir()


def _read_marker(folder: Path) -> Optional[dict]:
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get('installed_by') == _OWNER else None


def _state(target: Path) -> Optional[str]:
    """None (nothing there), 'symlink' or 'copy' (placed by install_plugin), or 'foreign'."""
    if target.is_symlink():
        link = Path(os.readlink(target))
        return 'symlink' if _is_our_source(link if link.is_absolute() else target.parent / link) else 'foreign'
    if not target.exists():
        return None
    return 'copy' if target.is_dir() and _read_marker(target) is not None else 'foreign'


def _describe(target: Path) -> str:
    if target.is_symlink():
        return f"a symlink to {os.readlink(target)}"
    return 'a folder' if target.is_dir() else 'a file'


def installed_mode(models_dir: Optional[PathLike] = None) -> Optional[str]:
    """'symlink' or 'copy' when the plugin placed by ``install_plugin`` is in place and usable, else None."""
    target = _models_dir(models_dir) / PLUGIN_NAME
    state = _state(target)
    if state in INSTALL_MODES and (target / '__init__.py').is_file():
        return state
    return None


def is_installed(models_dir: Optional[PathLike] = None) -> bool:
    """Whether Brain-Score's models folder holds the plugin as placed by ``install_plugin``."""
    return installed_mode(models_dir) is not None


def install_plugin(models_dir: Optional[PathLike] = None, mode: str = 'symlink') -> Path:
    """Place the plugin at ``<models_dir>/vonenet_brainscore_models`` and return that path.

    ``models_dir`` defaults to the installed ``brainscore_vision/models``. ``mode='symlink'`` links
    to this package's plugin folder; ``'copy'`` copies it (without caches) and marks the copy as ours.
    Installing again is fine: an install of ours is replaced (or kept, if it is already the same
    symlink). Refuses, changing nothing, when the name is held by something not placed by this
    function, or when another plugin folder already registers one of our identifiers (Brain-Score
    would then refuse to load it).
    """
    if mode not in INSTALL_MODES:
        raise PluginError(f"unknown install mode {mode!r}; use one of {', '.join(INSTALL_MODES)}")
    source = plugin_source_dir()
    models = _models_dir(models_dir)
    target = models / PLUGIN_NAME
    state = _state(target)
    if state == 'foreign':
        raise PluginConflictError(f"{target} is {_describe(target)} that vonenet-brainscore did not install; "
                                  f"it is left untouched. Move it away (or remove it) and install again")
    clashes = {identifier: folders for identifier, folders in
               find_registrations(models, plugin_identifiers(source)).items() if set(folders) - {PLUGIN_NAME}}
    if clashes:
        listing = '; '.join(f"{identifier} in {', '.join(str(models / f) for f in folders if f != PLUGIN_NAME)}"
                            for identifier, folders in clashes.items())
        raise PluginConflictError(f"other plugins in {models} already register our identifiers ({listing}); "
                                  f"Brain-Score refuses an identifier registered twice. Remove those plugins "
                                  f"(e.g. an old copy of this one under another name) and install again")
    if state == 'symlink' and mode == 'symlink' and target.resolve() == source:
        return target
    staged = models / f'.{PLUGIN_NAME}.{uuid.uuid4().hex[:8]}.staged'
    try:
        if mode == 'symlink':
            os.symlink(source, staged, target_is_directory=True)
        else:
            shutil.copytree(source, staged, ignore=_ignored)
            (staged / MARKER_NAME).write_text(json.dumps(
                {'installed_by': _OWNER, 'version': _version(), 'mode': 'copy', 'source': str(source)},
                indent=2) + '\n', encoding='utf-8')
        _swap_into_place(staged, target, previous=state)
    except OSError as error:
        _remove(staged)
        raise PluginError(f"could not install the plugin at {target}: {error}") from error
    return target


def uninstall_plugin(models_dir: Optional[PathLike] = None) -> bool:
    """Remove the plugin that ``install_plugin`` placed; False when there was none. Refuses to
    remove anything else under that name."""
    models = _models_dir(models_dir)
    target = models / PLUGIN_NAME
    for leftover in models.glob(f'.{PLUGIN_NAME}.*'):  # from an install that was interrupted
        _remove(leftover)
    state = _state(target)
    if state is None:
        return False
    if state == 'foreign':
        raise PluginConflictError(f"{target} is {_describe(target)} that vonenet-brainscore did not install; "
                                  f"it is left untouched")
    try:
        _remove(target)
    except OSError as error:
        raise PluginError(f"could not remove {target}: {error}") from error
    return True


def _swap_into_place(staged: Path, target: Path, previous: Optional[str]) -> None:
    """Move ``staged`` to ``target``, replacing an install of ours; the name is never left empty for long
    and a failure puts the previous install back."""
    if previous is None:
        os.rename(staged, target)
        return
    retired = target.with_name(f'.{PLUGIN_NAME}.{uuid.uuid4().hex[:8]}.retired')
    os.rename(target, retired)
    try:
        os.rename(staged, target)
    except OSError:
        os.rename(retired, target)
        raise
    _remove(retired)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _ignored(folder: str, names: List[str]) -> List[str]:
    return [name for name in names if _excluded(name)]


def _excluded(name: str) -> bool:
    """Caches, compiled files and hidden files (editor droppings, the install marker) never travel."""
    return name == '__pycache__' or name.endswith(('.pyc', '.pyo')) or name.startswith('.')


def _version() -> str:
    from . import __version__
    return __version__


# --- submission zip -------------------------------------------------------------------------------------------

def submission_files(source_dir: Optional[PathLike] = None) -> List[Tuple[str, Path]]:
    """``(path inside the plugin folder, file)`` for every file the submission carries, sorted."""
    source = Path(source_dir) if source_dir is not None else plugin_source_dir()
    files = []
    for folder, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if not _excluded(d))
        for name in filenames:
            if not _excluded(name):
                path = Path(folder) / name
                files.append((path.relative_to(source).as_posix(), path))
    return sorted(files)


def build_submission(out_zip: PathLike, source_dir: Optional[PathLike] = None) -> Path:
    """Write the zip to upload at brain-score.org ("submit a model") and return its path.

    Layout: ``vonenet_brainscore_submission/models/vonenet_brainscore_models/{__init__.py, model.py,
    test.py, requirements.txt, region_layer_map/<identifier>.json}`` with explicit folder entries;
    no caches, compiled or hidden files. ``source_dir`` defaults to the shipped plugin folder. The
    region maps must match commitments/ (else nothing is written). Written to a temporary file beside
    ``out_zip`` and renamed into place, so ``out_zip`` is either the complete new zip or untouched.
    """
    out_zip = Path(out_zip)
    if out_zip.suffix.lower() != '.zip':
        raise PluginError(f"{out_zip}: the submission file name must end in .zip")
    if out_zip.is_dir():
        raise PluginError(f"{out_zip} is a folder; give the path of the zip file to write")
    source = Path(source_dir) if source_dir is not None else plugin_source_dir()
    missing = [name for name in REQUIRED_FILES if not (source / name).is_file()]
    if missing:
        raise PluginError(f"{source} lacks {', '.join(missing)}, which Brain-Score requires in a model plugin")
    problems = check_region_layer_maps(source / 'region_layer_map')
    if problems:
        raise PluginError("the plugin's region_layer_map files do not match commitments/: " + '; '.join(problems)
                          + ". Regenerate them with vonenet_brainscore.plugin_tools.write_region_layer_maps()")
    files = submission_files(source)
    folders = {f'{SUBMISSION_ROOT}/', f'{SUBMISSION_ROOT}/models/', f'{SUBMISSION_ROOT}/models/{PLUGIN_NAME}/'}
    for relative, _ in files:
        parts = relative.split('/')[:-1]
        folders.update(f'{SUBMISSION_ROOT}/models/{PLUGIN_NAME}/' + '/'.join(parts[:i + 1]) + '/'
                       for i in range(len(parts)))
    try:
        out_zip.parent.mkdir(parents=True, exist_ok=True)
        fd, part = tempfile.mkstemp(dir=out_zip.parent, prefix=f'.{out_zip.name}.', suffix='.part')
    except OSError as error:
        raise PluginError(f"cannot write {out_zip}: {error}") from error
    try:
        with os.fdopen(fd, 'wb') as handle:
            with zipfile.ZipFile(handle, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
                for folder in sorted(folders):
                    info = zipfile.ZipInfo(folder, date_time=_ZIP_DATE)
                    info.external_attr = (0o40755 << 16) | 0x10  # a folder, rwxr-xr-x
                    archive.writestr(info, b'')
                for relative, path in files:
                    info = zipfile.ZipInfo(f'{SUBMISSION_ROOT}/models/{PLUGIN_NAME}/{relative}', date_time=_ZIP_DATE)
                    info.external_attr = 0o100644 << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                    archive.writestr(info, path.read_bytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(part, 0o644)
        os.replace(part, out_zip)
    except BaseException as error:
        _unlink_quietly(part)
        if isinstance(error, OSError):
            raise PluginError(f"could not write the submission {out_zip}: {error}") from error
        raise
    return out_zip


def _unlink_quietly(path: PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
