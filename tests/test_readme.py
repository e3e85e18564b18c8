"""The README's set-up commands stay true: CI runs the README's test command."""

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
