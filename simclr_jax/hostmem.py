"""Huge pages for host memory, so that XLA CPU does not page-fault every 4 KiB.

XLA's CPU runtime allocates fresh buffers for each step's temporaries with
`malloc`; glibc serves large ones with new `mmap`s, whose pages the kernel
zeroes and maps one 4 KiB page fault at a time on first touch. For
simclr_jax's CPU train step that was about 260,000 page faults per step of
the quarter-width ResNet-18 (configs/cifar10_cpu.py at base_width 16), and elementwise ops
(BatchNorm, ReLU, copies) ran at half their speed. glibc's tunable
`glibc.malloc.hugetlb=1` makes malloc ask for transparent huge pages
(madvise), 2 MiB a fault: 2x faster elementwise ops, and a faster train step
(bench/cpu_speed.py, variants `dev1` and `dev1_small_pages`).

glibc reads its tunables only when a process starts, so `main.py` (and the
benches) re-execute themselves once with `GLIBC_TUNABLES` extended, before
anything else is imported (`reexec_with_huge_pages`). The pid, arguments and
the rest of the environment stay as they were. Nothing happens where it does
not apply (not Linux with glibc, transparent huge pages set to `never`), when
the tunable is already set, or with `SIMCLR_JAX_HUGE_PAGES=0`. From Python
(a notebook, your own script), start the interpreter with
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` in its environment for the same gain.

This module imports nothing heavy (no JAX), so it can run first.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Mapping, Sequence

TUNABLE = 'glibc.malloc.hugetlb=1'
OPT_OUT = 'SIMCLR_JAX_HUGE_PAGES'  # Set to 0 to keep glibc's defaults.
THP_MODE_FILE = '/sys/kernel/mm/transparent_hugepage/enabled'


def _thp_mode(path: str = THP_MODE_FILE) -> str | None:
  """The bracketed transparent-huge-page mode ('always', 'madvise', 'never')."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find('['), text.find(']')
  return text[start + 1:end] if 0 <= start < end else None


def wanted(environ: Mapping[str, str] | None = None,
           thp_mode: str | None = '?', libc: str | None = None) -> bool:
  """Whether this process should restart with `TUNABLE` set.

  Args:
    environ: the environment (default os.environ).
    thp_mode: the kernel's transparent-huge-page mode; '?' reads it.
    libc: the C library's name; None asks `platform.libc_ver()`.
  """
  environ = os.environ if environ is None else environ
  if environ.get(OPT_OUT, '1').strip().lower() in ('0', 'false', 'no', 'off'):
    return False
  if 'glibc.malloc.hugetlb' in environ.get('GLIBC_TUNABLES', ''):
    return False
  if sys.platform != 'linux':
    return False
  if (libc if libc is not None else platform.libc_ver()[0]) != 'glibc':
    return False
  mode = _thp_mode() if thp_mode == '?' else thp_mode
  return mode in ('always', 'madvise')


def environ_with_huge_pages(environ: Mapping[str, str]) -> dict[str, str]:
  """`environ` with `TUNABLE` added to GLIBC_TUNABLES (':'-separated)."""
  env = dict(environ)
  current = env.get('GLIBC_TUNABLES', '')
  env['GLIBC_TUNABLES'] = f'{current}:{TUNABLE}' if current else TUNABLE
  return env


def active(environ: Mapping[str, str] | None = None) -> bool:
  """Whether this process runs with the huge-page tunable (recorded by benches)."""
  environ = os.environ if environ is None else environ
  return TUNABLE in environ.get('GLIBC_TUNABLES', '').split(':')


def cpu_model(path: str = '/proc/cpuinfo') -> str:
  """The host CPU, e.g. 'Intel(R) Xeon(R) Processor (family 6, model 167)'.

  Virtual machines often give a generic model name; the family and model
  numbers tell CPU generations apart (for bench records).
  """
  fields = {}
  try:
    with open(path) as f:
      for line in f:
        if not line.strip():
          break  # The first processor's block only.
        key, _, value = line.partition(':')
        fields[key.strip().lower()] = value.strip()
  except OSError:
    pass
  name = fields.get('model name') or platform.processor() or platform.machine()
  if 'cpu family' in fields and 'model' in fields:
    name += f" (family {fields['cpu family']}, model {fields['model']})"
  return name


def reexec_with_huge_pages(orig_argv: Sequence[str] | None = None) -> None:
  """Re-executes this Python process with `TUNABLE` set, if `wanted()`.

  Call it first thing in a program's entry point: what ran before is run
  again. Returns (without restarting) when not wanted or when exec fails.

  Args:
    orig_argv: the interpreter's command line (default `sys.orig_argv`, so
      interpreter options such as -u or -m survive).
  """
  if not wanted():
    return
  argv = list(sys.orig_argv if orig_argv is None else orig_argv)
  if not argv or not sys.executable:
    return
  try:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]],
              environ_with_huge_pages(os.environ))
  except OSError:
    return
