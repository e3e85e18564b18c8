"""The command line: bad configurations get one line on stderr and exit 2."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, timeout=300):
  env = dict(os.environ)
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return subprocess.run(
      [sys.executable, 'main.py', '--config=configs/demo.py', *args],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('overrides,expected', [
    (['--config.data.source=nosuchsource'], 'data.source'),
    (['--config.train.global_batch_size=250'], 'not divisible'),
    (['--config.train.global_batch_size=0'], 'global_batch_size must be positive'),
    (['--config.train.num_steps=-3'], 'num_steps'),
    (['--config.image_size=-1'], 'image_size must be positive'),
    (['--config.data.source=folder', '--config.data.data_dir=/nonexistent/photos'],
     '/nonexistent/photos'),
    (['--config.data.source=tfds', '--config.data.name=no_such_dataset_xyz'],
     'no_such_dataset_xyz'),
])
def test_bad_config_is_one_line_and_exit_2(tmp_path, overrides, expected):
  result = run_main(f'--workdir={tmp_path / "w"}', *overrides)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(lines) == 1, result.stderr[-2000:]
  assert expected in lines[0]
  assert 'Traceback' not in result.stderr


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / 'afile'
  path.write_text('x')
  result = run_main(f'--workdir={path}')
  assert result.returncode == 2
  assert 'is not a directory' in result.stderr
  assert 'Traceback' not in result.stderr
