"""The package's house picture: rooms (sub-packages and top-level modules), floors, and the arrows between.

A room on a floor may import rooms on lower floors and its own modules. An import from a lower floor to
a higher one is an upward arrow; an import between two rooms of the same floor is a sideways arrow. Both
are faults: tests/test_architecture.py asserts there are none. ``python tests/architecture.py`` prints
the picture (every arrow counted, by kind).
"""
from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Tuple

PACKAGE_DIR = Path(__file__).resolve().parent.parent / 'vonenet_brainscore'

FLOORS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ('facts and errors', ('errors', 'constants', 'dependencies')),
    ('foundation', ('paths', 'seeding', 'brainscore_env', 'images', 'devices')),
    ('V1 model and back-ends', ('vone', 'backends')),
    ('VOneNet and its input', ('model', 'preprocessing')),
    ('published models', ('published',)),
    ('brain model', ('brain',)),
    ('uses of a model', ('scoring', 'training', 'robustness')),
    ('submission', ('submission',)),
    ('entry points', ('cli', '')),
)
"""Bottom to top; '' is the package's own ``__init__`` (its public API)."""


def room_of(module: str) -> str:
    return module.split('.')[0] if module else ''


def floor_of(room: str) -> int:
    for index, (_, rooms) in enumerate(FLOORS):
        if room in rooms:
            return index
    raise KeyError(f"room {room!r} is on no floor of tests/architecture.py FLOORS")


def _module_name(path: Path) -> Tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE_DIR).with_suffix('').parts)
    is_package = parts[-1] == '__init__'
    if is_package:
        parts = parts[:-1]
    return '.'.join(parts), is_package


def _is_module(module: str) -> bool:
    base = PACKAGE_DIR.joinpath(*module.split('.'))
    return (base / '__init__.py').is_file() or base.with_suffix('.py').is_file()


def imports() -> List[Tuple[str, str]]:
    """(importing module, imported module) for every import of this package's own code, lazy ones too."""
    edges = []
    for path in sorted(PACKAGE_DIR.rglob('*.py')):
        module, is_package = _module_name(path)
        here = module.split('.') if module else []
        if not is_package:
            here = here[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
                target = '.'.join(base + ([node.module] if node.module else []))
                if node.module:
                    edges.append((module, target))
                else:  # ``from . import x``: x is a submodule, or a name of the package itself
                    for alias in node.names:
                        candidate = f'{target}.{alias.name}' if target else alias.name
                        edges.append((module, candidate if _is_module(candidate) else target))
            elif isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] == PACKAGE_DIR.name:
                edges.append((module, node.module.partition('.')[2]))
            elif isinstance(node, ast.Import):
                edges += [(module, alias.name.partition('.')[2]) for alias in node.names
                          if alias.name.split('.')[0] == PACKAGE_DIR.name]
    return edges


def arrows() -> Dict[str, List[Tuple[str, str]]]:
    """Imports between rooms, by kind: 'down', 'sideways', 'up'."""
    kinds: Dict[str, List[Tuple[str, str]]] = {'down': [], 'sideways': [], 'up': []}
    for source, target in imports():
        a, b = room_of(source), room_of(target)
        if a == b:
            continue
        fa, fb = floor_of(a), floor_of(b)
        kinds['down' if fb < fa else 'up' if fb > fa else 'sideways'].append((source, target))
    return kinds


def picture() -> str:
    kinds = arrows()
    lines = []
    for index in reversed(range(len(FLOORS))):
        name, rooms = FLOORS[index]
        sizes = Counter(room_of(_module_name(p)[0]) for p in PACKAGE_DIR.rglob('*.py'))
        shown = ', '.join(f"{room or '__init__'} ({sizes[room]})" for room in rooms)
        lines.append(f"floor {index}  {name:24s} {shown}")
    rooms = sum(len(r) for _, r in FLOORS)
    lines.append(f"{rooms} rooms on {len(FLOORS)} floors; arrows between rooms: "
                 + ', '.join(f"{len(v)} {k}" for k, v in kinds.items()))
    for kind in ('up', 'sideways'):
        lines += [f"  {kind}: {s} -> {t}" for s, t in kinds[kind]]
    return '\n'.join(lines)


if __name__ == '__main__':
    print(picture())
    sys.exit(0)
