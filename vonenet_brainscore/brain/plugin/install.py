"""Install our Brain-Score plugin into the installed ``brainscore_vision`` (local use, every identifier).

Brain-Score only finds plugins inside its own ``brainscore_vision/models/`` folder (it scans each
``models/<dir>/__init__.py`` for the registration text), so ``install_plugin`` writes a plugin there,
``models/vonenet_brainscore_models``, generated from this package (``files.render_plugin``; it
imports the installed package, so edits and upgrades of the code are followed). The folder carries a
marker so that ``uninstall_plugin`` removes only what ``install_plugin`` placed. For brain-score.org,
build one zip per model instead (``vonenet_brainscore.submission``).

When Brain-Score imports this local plugin, it also makes Brain-Score's own entry points
(``brainscore_vision.score``, ``python -m brainscore_vision score``) run the seven offline Marques2020
benchmarks: it swaps, in Brain-Score's ``data_registry`` and ``stimulus_set_registry``, the S3 loaders of
their data and stimuli for our local ones (``v1_properties.registry.register_for_local_plugin``). A data
plugin of our own cannot do it: Brain-Score's ``ImportPlugin.locate_plugin`` asserts that exactly one
``brainscore_vision/data/*`` folder registers each identifier, and ``load_dataset`` runs it on every call,
so a second folder registering ``DeValois1982a`` would break every Marques2020 benchmark. The submission
zips never swap anything (brain-score.org scores against Brain-Score's S3 data).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union

from ...dependencies import VERSION
from ...errors import VOneNetError
from ...published.naming import list_identifiers
from .files import render_plugin

PathLike = Union[str, 'os.PathLike[str]']

PLUGIN_NAME = 'vonenet_brainscore_models'
"""The plugin's folder name under ``brainscore_vision/models/``."""

MARKER_NAME = '.vonenet-brainscore-install.json'
"""Written into an install; hidden, so Brain-Score's plugin scan ignores it."""

REGISTRY = 'model_registry'
_OWNER = 'vonenet-brainscore'


class PluginError(VOneNetError):
    """The Brain-Score plugin could not be installed or removed."""


class PluginConflictError(PluginError):
    """Something that is not ours holds the plugin's folder name or one of its identifiers."""


def plugin_files() -> Dict[str, bytes]:
    """The local plugin's files (every identifier; imports the installed package)."""
    return render_plugin(list_identifiers(), carry_code=False)


def brainscore_models_dir() -> Path:
    """``brainscore_vision/models`` of the installed Brain-Score, found without importing it, as Brain-Score
    finds it (next to its ``__init__.py``; links are not resolved, so an environment whose packages are
    linked in gets its own models folder)."""
    found = importlib.util.find_spec('brainscore_vision')
    if found is None or not found.origin:
        raise PluginError("brainscore_vision is not installed in this environment, so there is no models folder "
                          "to install the plugin into; pip install brainscore-vision")
    return Path(os.path.abspath(found.origin)).parent / 'models'


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


def _read_marker(folder: Path) -> Optional[dict]:
    try:
        marker = json.loads((folder / MARKER_NAME).read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get('installed_by') == _OWNER else None


def _is_ours(target: Path) -> Optional[bool]:
    """None: nothing there; True: placed by install_plugin (or a symlink install of an earlier release,
    which pointed at the package's old ``vonenet_brainscore/plugin`` folder); False: someone else's."""
    if target.is_symlink():
        return Path(os.path.normpath(os.readlink(target))).parts[-2:] == ('vonenet_brainscore', 'plugin')
    if not target.exists():
        return None
    return target.is_dir() and _read_marker(target) is not None


def _describe(target: Path) -> str:
    if target.is_symlink():
        return f"a symlink to {os.readlink(target)}"
    return 'a folder' if target.is_dir() else 'a file'


def is_installed(models_dir: Optional[PathLike] = None) -> bool:
    """Whether Brain-Score's models folder holds the plugin as placed by ``install_plugin``."""
    target = _models_dir(models_dir) / PLUGIN_NAME
    return bool(_is_ours(target)) and not target.is_symlink() and (target / '__init__.py').is_file()


def is_current(models_dir: Optional[PathLike] = None) -> bool:
    """Whether the installed plugin's files are what this version of the package generates."""
    target = _models_dir(models_dir) / PLUGIN_NAME
    if not is_installed(models_dir):
        return False
    expected = plugin_files()
    present = {p.relative_to(target).as_posix() for p in target.rglob('*')
               if p.is_file() and p.name != MARKER_NAME and '__pycache__' not in p.parts}
    return present == set(expected) and all((target / name).read_bytes() == data for name, data in expected.items())


def install_plugin(models_dir: Optional[PathLike] = None) -> Path:
    """Write the plugin to ``<models_dir>/vonenet_brainscore_models`` and return that path.

    ``models_dir`` defaults to the installed ``brainscore_vision/models``. Installing again replaces an
    install of ours. Refuses, changing nothing, when the name is held by something not placed by this
    function, or when another plugin folder already registers one of our identifiers (Brain-Score would
    then refuse to load it).
    """
    models = _models_dir(models_dir)
    target = models / PLUGIN_NAME
    ours = _is_ours(target)
    if ours is False:
        raise PluginConflictError(f"{target} is {_describe(target)} that vonenet-brainscore did not install; "
                                  f"it is left untouched. Move it away (or remove it) and install again")
    clashes = {identifier: folders for identifier, folders in
               find_registrations(models, list_identifiers()).items() if set(folders) - {PLUGIN_NAME}}
    if clashes:
        listing = '; '.join(f"{identifier} in {', '.join(str(models / f) for f in folders if f != PLUGIN_NAME)}"
                            for identifier, folders in clashes.items())
        raise PluginConflictError(f"other plugins in {models} already register our identifiers ({listing}); "
                                  f"Brain-Score refuses an identifier registered twice. Remove those plugins "
                                  f"(e.g. an old copy of this one under another name) and install again")
    files = plugin_files()
    staged = models / f'.{PLUGIN_NAME}.{uuid.uuid4().hex[:8]}.staged'
    try:
        for relative, content in files.items():
            path = staged / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        (staged / MARKER_NAME).write_text(json.dumps({'installed_by': _OWNER, 'version': VERSION},
                                                     indent=2) + '\n', encoding='utf-8')
        _swap_into_place(staged, target, replace=bool(ours))
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
    ours = _is_ours(target)
    if ours is None:
        return False
    if ours is False:
        raise PluginConflictError(f"{target} is {_describe(target)} that vonenet-brainscore did not install; "
                                  f"it is left untouched")
    try:
        _remove(target)
    except OSError as error:
        raise PluginError(f"could not remove {target}: {error}") from error
    return True


def _swap_into_place(staged: Path, target: Path, replace: bool) -> None:
    """Move ``staged`` to ``target``, replacing an install of ours; a failure puts the previous one back."""
    if not replace:
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
