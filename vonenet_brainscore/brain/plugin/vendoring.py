"""Which of this package's code a Brain-Score plugin must carry, and which PyPI packages that code needs.

Brain-Score's scoring machines install a plugin's ``requirements.txt`` from PyPI, where this package is
not published, so a submitted plugin carries the package's own code. It carries only what importing
the brain model needs: the closure of the modules reachable by imports from ``brain`` (every import
statement counts, those inside functions too, so a lazy import is never left behind), each module's
parent packages, and the data files of the folders they live in.
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Dict, List, Set, Tuple

PACKAGE = __package__.split('.')[0]
PACKAGE_DIR = Path(__file__).resolve().parents[2]
ROOT_MODULES = ('brain.model',)
"""What a plugin imports; everything else it carries follows from these."""

DATA_SUFFIXES = ('.json', '.c')
"""Non-Python files that travel with their package folder (commitments, histograms, kernel source)."""


@dataclass(frozen=True)
class VendoredCode:
    """Files to copy (path inside the vendored package -> source file) and the top-level imports outside it."""

    files: Dict[str, Path]
    third_party: Tuple[str, ...]


def _module_file(module: str) -> Path:
    """The source file of ``module`` (dotted, relative to the package; '' is the package itself)."""
    base = PACKAGE_DIR.joinpath(*module.split('.')) if module else PACKAGE_DIR
    if base.is_dir():
        return base / '__init__.py'
    return base.with_suffix('.py')


def _exists(module: str) -> bool:
    return _module_file(module).is_file()


def _resolve(current: str, is_package: bool, node: ast.AST) -> Tuple[List[str], List[str]]:
    """(package-relative modules, third-party top-level names) that one import statement refers to."""
    ours, theirs = [], []
    if isinstance(node, ast.Import):
        for alias in node.names:
            top = alias.name.split('.')[0]
            if top == PACKAGE:
                ours.append(alias.name[len(PACKAGE) + 1:])
            else:
                theirs.append(top)
        return ours, theirs
    assert isinstance(node, ast.ImportFrom)
    if node.level == 0:
        name = node.module or ''
        if name.split('.')[0] != PACKAGE:
            return [], [name.split('.')[0]]
        target = name[len(PACKAGE) + 1:]
    else:
        parts = current.split('.') if current else []
        if not is_package:
            parts = parts[:-1]
        parts = parts[:len(parts) - (node.level - 1)] if node.level > 1 else parts
        target = '.'.join(parts + ([node.module] if node.module else []))
    ours.append(target)
    for alias in node.names:  # ``from . import x``: x may be a submodule
        candidate = f'{target}.{alias.name}' if target else alias.name
        if _exists(candidate):
            ours.append(candidate)
    return ours, theirs


def _parents(module: str) -> List[str]:
    parts = module.split('.') if module else []
    return ['.'.join(parts[:i]) for i in range(len(parts))]


def module_closure(roots=ROOT_MODULES) -> Tuple[List[str], Set[str]]:
    """(modules of this package that importing ``roots`` needs, sorted; third-party top-level names)."""
    seen: Set[str] = set()
    third_party: Set[str] = set()
    pending = list(roots)
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        path = _module_file(module)
        if not path.is_file():
            raise FileNotFoundError(f"{PACKAGE}.{module} is imported but {path} does not exist")
        seen.add(module)
        pending += [parent for parent in _parents(module) if parent not in seen]
        tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                ours, theirs = _resolve(module, path.name == '__init__.py', node)
                pending += [m for m in ours if m not in seen]
                third_party.update(theirs)
    stdlib = set(sys.stdlib_module_names) | {'__future__'}
    return sorted(seen), {name for name in third_party if name and name not in stdlib}


def _commitment_files() -> Dict[str, Path]:
    """The commitments package (top-level ``commitments/`` in a checkout), wherever it is installed."""
    folder = Path(str(resources.files(f'{PACKAGE}.commitments')))
    return {f'commitments/{path.name}': path for path in sorted(folder.iterdir())
            if path.suffix in ('.json', '.py') and not path.name.startswith('.')}


def vendored_code(roots=ROOT_MODULES) -> VendoredCode:
    """Every file a plugin carries as its copy of this package, keyed by its path inside that copy."""
    modules, third_party = module_closure(roots)
    files: Dict[str, Path] = {}
    folders = set()
    for module in modules:
        path = _module_file(module)
        relative = path.relative_to(PACKAGE_DIR).as_posix()
        files[relative] = path
        folders.add(path.parent)
    for folder in folders:
        for data in sorted(folder.iterdir()):
            if data.is_file() and data.suffix in DATA_SUFFIXES and not data.name.startswith('.'):
                files[data.relative_to(PACKAGE_DIR).as_posix()] = data
    files.update(_commitment_files())
    return VendoredCode(files=dict(sorted(files.items())), third_party=tuple(sorted(third_party)))
