"""The machinery of bench/faults.py: child runs of main.py, what they left, mounts.

* `Runner` starts `python main.py` on a tiny config (the demo's digits at
  8 px, a ResNet-18 of width 4, batch 32, a progress line and a metrics
  record every step) in subprocesses sharing one JAX compilation cache, with
  their stdout and stderr in files; `Child` reads them back (the step reached,
  the step resumed from, the lines that are not progress).
* Readers of a workdir: `saved_steps`, `tmp_saves`, `final_arrays`,
  `metric_records`, and `compare` (bytes and steps that differ from a
  reference run).
* File-system faults: `mounts_possible`, `mount_tmpfs`, `bind_read_only`,
  `unmount` (ctypes mount(2), inside the private mount namespace that
  faults.py enters), `fill` (a ballast file), `limit_file_size`
  (RLIMIT_FSIZE of a running child, SIGXFSZ ignored so writes fail with
  EFBIG).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
import warnings
from typing import Any, Callable

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROGRESS = re.compile(r'^(\[[#.]+\] )?step (\d+)/(\d+) ')
RESUMED = re.compile(r'resuming at step (\d+)')
STARTED = re.compile(r'simclr_jax: \d+ training images')
# Fields of metrics.jsonl that are timings, not results.
TIMINGS = ('images_per_sec', 'train_seconds', 'seconds')
TMP_MARK = '.orbax-checkpoint-tmp'


class BenchError(RuntimeError):
  """A child run did something the bench cannot go on from."""


def tiny_args(steps: int, every: int) -> list[str]:
  """main.py's flags of the bench's run (without --workdir)."""
  return [
      '--config=configs/demo.py',
      '--config.image_size=8', '--config.data.resize_to=8',
      '--config.model.base_width=4', '--config.model.proj_out_dim=8',
      '--config.train.global_batch_size=32',
      f'--config.train.num_steps={steps}',
      f'--config.train.checkpoint_every_steps={every}',
      '--config.train.log_every_steps=1',
      '--config.train.keep_checkpoints=3',
      '--config.eval.linear_probe=false',
      '--config.eval.compare_random_init=false',
  ]


class Child:
  """One `python main.py` process and its output files."""

  def __init__(self, proc: subprocess.Popen, out_path: str, err_path: str):
    self.proc = proc
    self.out_path, self.err_path = out_path, err_path
    self.started = time.monotonic()

  @property
  def pid(self) -> int:
    return self.proc.pid

  def alive(self) -> bool:
    return self.proc.poll() is None

  def wait(self, timeout: float) -> int:
    """The exit status; kills the child and raises after `timeout` seconds."""
    try:
      return self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as e:
      self.proc.kill()
      self.proc.wait(timeout=30)
      raise BenchError(f'a run took more than {timeout:.0f} s; its stderr: '
                       f'{self.stderr()[-1500:]}') from e

  def kill(self, sig: int = signal.SIGKILL) -> None:
    if self.alive():
      try:
        os.kill(self.proc.pid, sig)
      except ProcessLookupError:
        pass

  def _read(self, path: str) -> str:
    try:
      with open(path, errors='replace') as f:
        return f.read()
    except OSError:
      return ''

  def stdout(self) -> str:
    return self._read(self.out_path)

  def stderr(self) -> str:
    return self._read(self.err_path)

  def step_reached(self) -> int | None:
    """The last step this run finished (its progress lines), or None."""
    steps = [int(m.group(2)) for m in map(PROGRESS.match, self._lines())
             if m]
    return max(steps) if steps else None

  def resumed_from(self) -> int | None:
    """The step this run started from (0 when fresh); None before it said."""
    out = self.stdout()
    match = RESUMED.search(out)
    if match:
      return int(match.group(1))
    return 0 if STARTED.search(out) else None

  def _lines(self) -> list[str]:
    return self.stderr().replace('\r', '\n').splitlines()

  def noise(self) -> list[str]:
    """The lines of stderr that are not progress lines."""
    return [l for l in self._lines() if l.strip() and not PROGRESS.match(l)]


class Runner:
  """Starts main.py runs of one tiny config; kills them all on `close`."""

  def __init__(self, root: str, steps: int, every: int, timeout: float):
    self.root, self.steps, self.every = root, steps, every
    self.timeout = timeout
    self.logs = os.path.join(root, 'logs')
    os.makedirs(self.logs, exist_ok=True)
    self.env = dict(os.environ)
    self.env.update({
        'TF_CPP_MIN_LOG_LEVEL': '2', 'JAX_PLATFORMS': 'cpu',
        'JAX_COMPILATION_CACHE_DIR': os.path.join(root, 'jax_cache'),
        'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
        'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'})
    self.children: list[Child] = []

  def start(self, workdir: str, *extra: str,
            preexec: Callable[[], None] | None = None,
            base: list[str] | None = None) -> Child:
    """Starts a run in `workdir`; `preexec` runs in the child before exec.

    `base`: the flags instead of the tiny run's (`tiny_args`); `extra`
    follow them.
    """
    n = len(self.children)
    out = os.path.join(self.logs, f'{n:03d}.out')
    err = os.path.join(self.logs, f'{n:03d}.err')
    with open(out, 'w') as fo, open(err, 'w') as fe:
      proc = subprocess.Popen(
          [sys.executable, 'main.py', f'--workdir={workdir}',
           *(tiny_args(self.steps, self.every) if base is None else base),
           *extra],
          cwd=ROOT, env=self.env, stdout=fo, stderr=fe,
          stdin=subprocess.DEVNULL, preexec_fn=preexec)
    child = Child(proc, out, err)
    self.children.append(child)
    return child

  def run(self, workdir: str, *extra: str) -> Child:
    """A run to its end (bounded by the runner's timeout)."""
    child = self.start(workdir, *extra)
    child.wait(self.timeout)
    return child

  def close(self) -> None:
    """Kills every child still running (SIGKILL) and reaps it."""
    for child in self.children:
      if child.alive():
        child.kill()
        try:
          child.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
          pass


def wait_until(predicate: Callable[[], bool], child: Child, timeout: float,
               poll: float = 0.01) -> bool:
  """Polls `predicate` until true (True), or the child ends or time is up."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if predicate():
      return True
    if not child.alive():
      return predicate()
    time.sleep(poll)
  return False


def sleep_while_alive(child: Child, seconds: float) -> bool:
  """Sleeps up to `seconds`; False if the child ended first."""
  deadline = time.monotonic() + seconds
  while time.monotonic() < deadline:
    if not child.alive():
      return False
    time.sleep(0.01)
  return child.alive()


# ------------------------------------------------------------------ workdirs


def checkpoints(workdir: str) -> list[str]:
  try:
    return os.listdir(os.path.join(workdir, 'checkpoints'))
  except OSError:
    return []


def saved_steps(workdir: str) -> list[int]:
  """Steps of the complete checkpoints, sorted."""
  return sorted(int(n) for n in checkpoints(workdir) if n.isdigit())


def tmp_saves(workdir: str) -> list[str]:
  """The temporary folders of saves in progress (or never finished)."""
  return [n for n in checkpoints(workdir) if TMP_MARK in n]


def folder_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, fs in os.walk(path) for f in fs)


def final_arrays(workdir: str, step: int) -> dict[str, np.ndarray]:
  """Every array of checkpoint `step`, by its path in the tree."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.abspath(workdir), 'checkpoints', str(step),
                      'default')
  with warnings.catch_warnings():  # "Sharding info not provided": CPU here.
    warnings.simplefilter('ignore')
    tree = ocp.PyTreeCheckpointer().restore(path)
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in flat}


def metric_records(workdir: str) -> list[dict[str, Any]]:
  """Every record of metrics.jsonl without its timings (cut lines skipped)."""
  out = []
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      lines = f.read().splitlines()
  except OSError:
    return out
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if isinstance(record, dict) and not record.get('preempted'):
      out.append({k: v for k, v in record.items() if k not in TIMINGS})
  return out


def _by_step(records: list[dict[str, Any]]) -> dict[Any, list[dict]]:
  out = {}
  for r in records:
    out.setdefault('final' if r.get('final') else r['step'], []).append(r)
  return out


def compare(reference: str, workdir: str, steps: int) -> dict[str, Any]:
  """How `workdir`'s final checkpoint and metrics differ from `reference`'s.

  Returns {'final_bytes_differing': bytes of the final checkpoint's arrays
  that differ (every byte of an array missing on one side counts),
  'arrays_differing', 'steps_differing': logged steps of which some record
  (of any of the runs, before or after a resume) differs from the
  reference's, or that one side lacks (the final record counts as a step),
  'identical': both 0}.
  """
  ref = final_arrays(reference, steps)
  got = final_arrays(workdir, steps) if steps in saved_steps(workdir) else {}
  bytes_differing, arrays_differing = 0, 0
  for key in ref.keys() | got.keys():
    a, b = ref.get(key), got.get(key)
    if a is None or b is None or a.shape != b.shape or a.dtype != b.dtype:
      bytes_differing += max(x.nbytes for x in (a, b) if x is not None)
      arrays_differing += 1
      continue
    diff = np.frombuffer(a.tobytes(), np.uint8) != np.frombuffer(
        b.tobytes(), np.uint8)
    if diff.any():
      bytes_differing += int(diff.sum())
      arrays_differing += 1
  ref_steps = _by_step(metric_records(reference))
  got_steps = _by_step(metric_records(workdir))
  steps_differing = 0
  for step in ref_steps.keys() | got_steps.keys():
    expected = ref_steps.get(step, [None])[-1]
    if not got_steps.get(step) or any(r != expected
                                      for r in got_steps[step]):
      steps_differing += 1
  return {'final_bytes_differing': bytes_differing,
          'arrays_differing': arrays_differing,
          'steps_differing': steps_differing,
          'identical': bytes_differing == 0 and steps_differing == 0}


# --------------------------------------------------------------- file systems

_MS_RDONLY, _MS_REMOUNT, _MS_BIND = 1, 32, 4096
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
  enc = lambda s: None if s is None else s.encode()
  if _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags),
                 enc(data)) != 0:
    code = ctypes.get_errno()
    raise OSError(code, f'mount {target}: {os.strerror(code)}')


def unmount(target: str) -> None:
  if _libc.umount2(target.encode(), 2) != 0:  # MNT_DETACH
    code = ctypes.get_errno()
    if code not in (errno.EINVAL, errno.ENOENT):
      raise OSError(code, f'umount {target}: {os.strerror(code)}')


def mounts_possible() -> bool:
  """Whether this process may mount (root with CAP_SYS_ADMIN; faults.py has
  entered a private mount namespace, so nothing shows outside)."""
  return os.environ.get('SIMCLR_FAULTS_NAMESPACE') == '1'


def mount_tmpfs(target: str, size_bytes: int) -> None:
  """A tmpfs of `size_bytes` at `target` (a real full disk: ENOSPC)."""
  os.makedirs(target, exist_ok=True)
  _mount('tmpfs', target, 'tmpfs', 0, f'size={size_bytes}')


def bind_read_only(target: str) -> None:
  """`target` becomes read-only from now on (new opens fail with EROFS).

  A read-only bind mount of the folder onto itself; files a process had
  already open for writing stay writable through it, as with `chmod`
  (which root ignores) they would not.
  """
  _mount(target, target, None, _MS_BIND)
  for _ in range(100):  # EBUSY while a file is open for writing through it.
    try:
      _mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)
      return
    except OSError as e:
      if e.errno != errno.EBUSY:
        unmount(target)
        raise
      time.sleep(0.01)
  unmount(target)
  raise OSError(errno.EBUSY, f'cannot make {target} read-only: busy')


def fill(folder: str, leave_bytes: int) -> str:
  """Writes a ballast file until about `leave_bytes` stay free; its path."""
  path = os.path.join(folder, 'ballast')
  stat = os.statvfs(folder)
  room = stat.f_bavail * stat.f_frsize - leave_bytes
  chunk = b'\0' * (1 << 20)
  with open(path, 'wb') as f:
    try:
      while room > 0:
        room -= f.write(chunk[:min(room, len(chunk))])
    except OSError:
      pass
  return path


def ignore_sigxfsz() -> None:
  """preexec_fn: writes past RLIMIT_FSIZE fail with EFBIG, not a signal."""
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def limit_file_size(pid: int, size_bytes: int) -> None:
  """From now on `pid` cannot grow any file beyond `size_bytes` (EFBIG)."""
  resource.prlimit(pid, resource.RLIMIT_FSIZE, (size_bytes, size_bytes))
