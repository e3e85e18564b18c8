"""The code stays walkable: imports inside `simclr_jax` run one way, modules stay small.

Reads the source with `ast` (nothing is imported): every `import` of a
`simclr_jax` module, at the top of a file or inside a function, is an edge
from the importing module to the imported one; the graph must have no cycle.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'simclr_jax')
MAX_LINES = 500


def _modules() -> dict[str, str]:
  """Dotted module name -> file path, for every .py file of the package."""
  found = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
      if rel[-1] == '__init__':
        rel = rel[:-1]
      found['.'.join(rel)] = path
  return found


def _resolve(name: str, modules: dict[str, str]) -> str | None:
  """The module an imported name lives in: itself, or its package."""
  while name and name not in modules:
    name = name.rpartition('.')[0]
  return name or None


def import_graph() -> dict[str, set[str]]:
  """module -> the package modules it imports (a package's own __init__ aside)."""
  modules = _modules()
  graph = {m: set() for m in modules}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    is_package = path.endswith('__init__.py')
    for node in ast.walk(tree):
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          parts = module.split('.')
          keep = len(parts) - node.level + (1 if is_package else 0)
          base = '.'.join(parts[:keep] + ([base] if base else []))
        names = [f'{base}.{a.name}' for a in node.names] or [base]
      for name in names:
        if not name.startswith('simclr_jax'):
          continue
        target = _resolve(name, modules)
        if target and target != module:
          graph[module].add(target)
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of `graph` as a list of modules (first == last), or None."""
  state = {}  # module -> 1 on the current path, 2 done.
  path = []

  def visit(m):
    state[m] = 1
    path.append(m)
    for n in sorted(graph.get(m, ())):
      if state.get(n) == 1:
        return path[path.index(n):] + [n]
      if n not in state:
        got = visit(n)
        if got:
          return got
    path.pop()
    state[m] = 2
    return None

  for m in sorted(graph):
    if m not in state:
      got = visit(m)
      if got:
        return got
  return None


def test_find_cycle_finds_one_and_only_one():
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': set()}) is None
  assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c',
                                                              'a']


def test_graph_sees_lazy_and_package_imports():
  graph = import_graph()
  # A function-level import counts as much as a top-level one.
  assert 'simclr_jax.evaluate.modes' in graph
  assert 'simclr_jax.train' in graph['simclr_jax.evaluate.modes']
  assert 'simclr_jax.evaluate.runs' in graph['simclr_jax.evaluate.probe']


def test_no_import_cycle():
  cycle = find_cycle(import_graph())
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_building_blocks_do_not_import_the_loops():
  graph = import_graph()
  loops = {'simclr_jax.train', 'simclr_jax.evaluate.modes',
           'simclr_jax.evaluate.finetune', 'simclr_jax.evaluate.distill'}
  for block in ('simclr_jax.evaluate.runs', 'simclr_jax.evaluate.probe',
                'simclr_jax.evaluate.final', 'simclr_jax.checkpoint',
                'simclr_jax.parallel', 'simclr_jax.models'):
    assert not graph[block] & loops, (block, graph[block] & loops)


@pytest.mark.parametrize('module', sorted(_modules()))
def test_module_is_small(module):
  with open(_modules()[module]) as f:
    lines = sum(1 for _ in f)
  assert lines <= MAX_LINES, (
      f'{module} has {lines} lines (at most {MAX_LINES}): split it by job')
