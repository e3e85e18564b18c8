"""The README and docs/ stay true: CI runs the README's test command, and every command they show
names a config, field, script, module and page that exists."""

import glob
import importlib.util
import os
import re

import pytest

from simclr_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md'] + sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
# Fields shown on purpose as mistakes (the one-line error they get).
DELIBERATE_TYPOS = {'train.num_stpes'}


def _read(*parts):
  with open(os.path.join(ROOT, *parts)) as f:
    return f.read()


def test_ci_runs_the_readme_test_command():
  readme = _read('README.md')
  ci = _read('.ci', 'run')
  test_cmd = re.search(r'^pip install -e "\.\[test\]" && (.+)$', readme, re.M)
  assert test_cmd, 'README lost its test command'
  assert test_cmd.group(1).strip() in ci


def test_readme_demo_command_uses_existing_config():
  readme = _read('README.md')
  demo = re.search(r'^pip install -e \. && python main.py --config=(\S+)', readme, re.M)
  assert demo and os.path.exists(os.path.join(ROOT, demo.group(1)))


def test_readme_is_a_front_door():
  lines = _read('README.md').splitlines()
  assert len(lines) <= 220, f'README.md has {len(lines)} lines; move detail to docs/'
  assert not re.search(r'[A-Z0-9_]{12,}', ' '.join(
      l for l in lines if not l.startswith(('|', '```', '    ', 'simclr_jax:')))), \
      'README holds a placeholder'


@pytest.mark.parametrize('page', PAGES)
def test_links_to_pages_exist(page):
  folder = os.path.dirname(os.path.join(ROOT, page))
  for target in re.findall(r'\]\(([^)#\s]+\.md)(?:#[^)]*)?\)', _read(page)):
    assert os.path.exists(os.path.join(folder, target)), f'{page} links to {target}'


@pytest.mark.parametrize('page', PAGES)
def test_commands_name_existing_configs_scripts_and_modules(page):
  text = _read(page)
  for config in re.findall(r'--config=(configs/\w+\.py)', text):
    assert os.path.exists(os.path.join(ROOT, config)), f'{page}: {config}'
  for script in set(re.findall(r'\b(bench/\w+\.(?:py|sh))\b', text)):
    assert os.path.exists(os.path.join(ROOT, script)), f'{page}: {script}'
  for module in set(re.findall(r'python3? -m (simclr_jax(?:\.\w+)*)', text)):
    assert importlib.util.find_spec(module) is not None, f'{page}: {module}'


@pytest.mark.parametrize('page', PAGES)
def test_config_overrides_name_declared_fields(page):
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  for field in set(re.findall(r'--config\.([a-z_][\w.]*[a-z0-9_])', _read(page))):
    if field in DELIBERATE_TYPOS:
      continue
    assert config_lib.has_field(config, field), (
        f'{page}: --config.{field} is not in configs/default.py')
