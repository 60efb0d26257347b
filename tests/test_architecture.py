"""The layout keeps its shape: imports only go down the floors of tests/architecture.py, and only one
module reads Brain-Score's private attributes."""
import ast

import architecture

BRAINSCORE_ACCESS = 'brain/brainscore_access.py'
TORCH_INTERNALS = {'_forward_hooks', '_forward_pre_hooks', '_version'}
"""torch keeps module hooks and a tensor's in-place version counter in these; reading them is how a cached
filter plan checks it still matches its weights (vone/block.py)."""


def test_every_room_is_on_a_floor():
    rooms = {architecture.room_of(module) for module, _ in architecture.imports()}
    for room in rooms:
        architecture.floor_of(room)  # raises for a room the picture does not place


def test_imports_go_only_down():
    kinds = architecture.arrows()
    assert kinds['down'], 'the picture found no imports at all: tests/architecture.py reads the wrong folder'
    assert not kinds['up'], f"imports from a lower floor to a higher one: {kinds['up']}"
    assert not kinds['sideways'], f"imports between rooms of one floor: {kinds['sideways']}"


def _private_reads(path):
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.Attribute) and node.attr.startswith('_') and not node.attr.startswith('__'):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ('self', 'cls'):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == 'super':
                continue
            yield node.lineno, ast.unparse(node)


def test_no_module_reaches_into_another_objects_private_members():
    offenders = []
    for path in sorted(architecture.PACKAGE_DIR.rglob('*.py')):
        relative = path.relative_to(architecture.PACKAGE_DIR).as_posix()
        if relative == BRAINSCORE_ACCESS:
            continue
        offenders += [f'{relative}:{line}: {text}' for line, text in _private_reads(path)
                      if text.rsplit('.', 1)[-1] not in TORCH_INTERNALS]
    assert not offenders, offenders


def test_the_access_module_is_where_brainscore_privates_are_read():
    reads = [text for _, text in _private_reads(architecture.PACKAGE_DIR / BRAINSCORE_ACCESS)]
    assert reads, 'brain/brainscore_access.py reads nothing private: the check above is vacuous'
