"""Huge pages for host memory: when main.py restarts itself, and that it keeps its pid and flags."""

import os
import subprocess
import sys

import pytest

from simclr_jax import hostmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('environ,thp,libc,expected', [
    ({}, 'madvise', 'glibc', True),
    ({}, 'always', 'glibc', True),
    ({}, 'never', 'glibc', False),  # The kernel gives no huge pages.
    ({}, None, 'glibc', False),  # No transparent-huge-page support at all.
    ({}, 'madvise', 'musl', False),  # Not glibc: the tunable means nothing.
    ({hostmem.OPT_OUT: '0'}, 'madvise', 'glibc', False),
    ({hostmem.OPT_OUT: 'off'}, 'madvise', 'glibc', False),
    ({hostmem.OPT_OUT: '1'}, 'madvise', 'glibc', True),
    # Already set (by the user, or by the first start): no second restart.
    ({'GLIBC_TUNABLES': hostmem.TUNABLE}, 'madvise', 'glibc', False),
    ({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}, 'madvise', 'glibc', False),
    ({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2'}, 'madvise', 'glibc', True),
])
def test_wanted(environ, thp, libc, expected):
  if sys.platform != 'linux':
    expected = False
  assert hostmem.wanted(environ, thp_mode=thp, libc=libc) is expected


def test_environ_keeps_other_tunables_and_variables():
  env = hostmem.environ_with_huge_pages(
      {'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2', 'HOME': '/h'})
  assert env == {'GLIBC_TUNABLES': f'glibc.malloc.arena_max=2:{hostmem.TUNABLE}',
                 'HOME': '/h'}
  assert hostmem.environ_with_huge_pages({}) == {'GLIBC_TUNABLES': hostmem.TUNABLE}
  assert hostmem.active({'GLIBC_TUNABLES': f'a=1:{hostmem.TUNABLE}'})
  assert not hostmem.active({'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'})


def test_cpu_model_reads_the_first_processor(tmp_path):
  info = tmp_path / 'cpuinfo'
  info.write_text('processor\t: 0\ncpu family\t: 25\nmodel\t\t: 1\n'
                  'model name\t: AMD EPYC 7B13\n\nprocessor\t: 1\n'
                  'model name\t: other\n')
  assert hostmem.cpu_model(str(info)) == 'AMD EPYC 7B13 (family 25, model 1)'
  assert hostmem.cpu_model(str(tmp_path / 'missing'))  # Falls back, not empty.


def _environ_without_tunable():
  env = dict(os.environ)
  env.pop('GLIBC_TUNABLES', None)
  env.pop(hostmem.OPT_OUT, None)
  return env


@pytest.mark.skipif(not hostmem.wanted(_environ_without_tunable()),
                    reason='no transparent huge pages or not glibc here')
@pytest.mark.parametrize('opt_out', [False, True])
def test_main_restarts_once_with_the_tunable_same_pid(tmp_path, opt_out):
  """main.py's first act: one exec with GLIBC_TUNABLES, flags and pid kept.

  The config file runs in the final process (it is loaded while flags are
  parsed) and reports that process's pid and tunables; its get_config fails,
  so main.py exits 2 without training.
  """
  config = tmp_path / 'probe.py'
  config.write_text(
      'import os\n'
      "print('PROBE', os.getpid(), os.environ.get('GLIBC_TUNABLES', ''), "
      'flush=True)\n'
      'def get_config():\n'
      "  raise ValueError('probe only')\n")
  env = _environ_without_tunable()
  if opt_out:
    env[hostmem.OPT_OUT] = '0'
  proc = subprocess.Popen(
      [sys.executable, '-u', 'main.py', f'--config={config}',
       f'--workdir={tmp_path / "w"}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  out, err = proc.communicate(timeout=120)
  probes = [l.split() for l in out.splitlines() if l.startswith('PROBE')]
  assert proc.returncode == 2, err[-2000:]
  assert len(probes) == 1, out  # Loaded once: the restart happened before.
  _, pid, *tunables = probes[0]
  assert int(pid) == proc.pid  # exec, not a child process.
  assert (tunables == []) if opt_out else (tunables == [hostmem.TUNABLE])
