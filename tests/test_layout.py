"""The import direction, read from the source with `ast` (every import, also those inside functions):
core (config, data, ...) -> engines -> train -> tools (export, bench, tune) -> cli. Nothing imports the command
line; the reference engine never imports NumPy; the fast engines never import the reference engine; the fused
engine's modules import each other's public names only."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / 'src' / 'microgpt'
LAYERS = ('core', 'engines', 'train', 'tools', 'cli')
PACKAGES = {'engines': 'engines', 'train': 'train', 'export': 'tools', 'bench': 'tools', 'tune': 'tools'}
COMMAND_LINE = {'microgpt.cli', 'microgpt.commands', 'microgpt.model_commands'}


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def layer(module):
    """The layer of a microgpt module, or None for the package itself and the `python -m` entry point. A module
    at the top of the package (config, data, sampling, ...) is core, except the command line's two."""
    parts = module.split('.')
    if len(parts) == 1 or parts[1] == '__main__':
        return None
    if module in COMMAND_LINE:
        return 'cli'
    if (PACKAGE / parts[1]).is_dir():
        assert parts[1] in PACKAGES, f"{module}: package {parts[1]} has no layer; add it to tests/test_layout.py"
        return PACKAGES[parts[1]]
    return 'core'


def imports(module):
    """(imported module, names taken from it, line) of every import statement of `module`."""
    path = MODULES[module]
    package = module if path.name == '__init__.py' else module.rsplit('.', 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split('.')
            if node.level:
                base = base[:len(base) - (node.level - 1)]
                target = '.'.join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names = tuple(alias.name for alias in node.names)
            # `from . import commands` imports a module: count it as that module
            submodules = [f'{target}.{name}' for name in names if f'{target}.{name}' in MODULES]
            if submodules:
                found += [(sub, (), node.lineno) for sub in submodules]
            else:
                found.append((target, names, node.lineno))
    return found


def test_every_module_has_a_layer():
    assert len(MODULES) > 20, sorted(MODULES)
    for module in MODULES:
        layer(module)


@pytest.mark.parametrize('module', sorted(MODULES))
def test_imports_never_go_to_a_higher_layer(module):
    source = layer(module)
    for target, _, line in imports(module):
        if not target.startswith('microgpt.') or source is None:
            continue
        to = layer(target)
        if to is not None:
            assert LAYERS.index(to) <= LAYERS.index(source), \
                f"{module} ({source}) imports {target} ({to}) at line {line}: imports flow {' -> '.join(LAYERS)}"


@pytest.mark.parametrize('module', sorted(MODULES))
def test_nothing_imports_the_command_line(module):
    if module in COMMAND_LINE or module == 'microgpt.__main__':
        return
    for target, _, line in imports(module):
        assert target not in COMMAND_LINE, f"{module} imports {target} at line {line}: nothing imports the CLI"


@pytest.mark.parametrize('module', sorted(m for m in MODULES if m.startswith('microgpt.engines.reference')))
def test_the_reference_engine_imports_no_numpy(module):
    for target, _, line in imports(module):
        assert target.split('.')[0] != 'numpy', f"{module} imports {target} at line {line}"


@pytest.mark.parametrize('module', sorted(m for m in MODULES
                                          if m.startswith(('microgpt.engines.numpy', 'microgpt.engines.fused'))))
def test_the_fast_engines_never_import_the_reference(module):
    for target, _, line in imports(module):
        assert not target.startswith('microgpt.engines.reference'), f"{module} imports {target} at line {line}"


@pytest.mark.parametrize('module', sorted(m for m in MODULES if m.startswith('microgpt.engines.fused')))
def test_fused_modules_import_only_public_names_of_their_siblings(module):
    for target, names, line in imports(module):
        private = [name for name in names if name.startswith('_')]
        assert not (target.startswith('microgpt.engines.fused') and private), \
            (f"{module} imports private names {private} from {target} at line {line}: the fused package's "
             f"modules import each other's public names (issue 12, point 1)")


def test_the_import_reader_resolves_relative_imports():
    """The rules above are only as good as this resolution: check it on known imports."""
    assert ('microgpt.commands', (), ) in [t[:2] for t in imports('microgpt.cli')]
    assert ('microgpt.config', ('ModelConfig',)) in [(t, n[:1]) for t, n, _ in imports('microgpt.train.setup')]
    assert any(t == 'microgpt.engines' for t, _, _ in imports('microgpt.engines.reference.gpt'))
    assert layer('microgpt.engines.fused.engine') == 'engines' and layer('microgpt.bench.study') == 'tools'
