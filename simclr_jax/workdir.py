"""A workdir belongs to one run: its lock, its configs, and what may change on resume.

* `lock(workdir)` refuses a second concurrent run on the same workdir with one
  line. It is an advisory `fcntl.flock` on `workdir/run.lock`: the kernel
  drops it when the process dies (even by SIGKILL), so a stale lock from a
  killed run never blocks a restart.
* `record_config(workdir, config, step)` keeps every config a run was started
  or resumed with (`workdir/config_history/NNN-stepK.json`) and the latest as
  `workdir/config.json`.
* `check_resume(workdir, config)` refuses a resume whose config changes what
  the run computes (batch, schedule, data, augmentation, model, loss, seed),
  naming the fields, unless `train.allow_config_change` is set. Fields that
  only change how the run is executed or reported (logging and checkpoint
  periods, device counts, data parallelism and prefetch, evaluation) may
  change freely, as may the sections of the other modes (a pretraining
  run does not read `finetune.*`), and a field the recorded config lacks
  (a field added to configs/default.py since: its default keeps what older
  versions did).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from typing import Any

from simclr_jax.config_lib import ConfigError

LOCK_NAME = 'run.lock'
HISTORY_DIR = 'config_history'

# Fields that do not change what a run computes: free to change on resume.
FREE_FIELDS = (
    'train.log_every_steps', 'train.checkpoint_every_steps',
    'train.keep_checkpoints', 'train.num_devices', 'train.cpu_devices',
    'train.cpu_ynnpack_convs', 'train.cpu_materialize_conv_inputs',
    'train.cpu_strided_gradient_forms', 'train.cpu_border_forms',
    'train.allow_config_change',
    'data.prefetch', 'data.num_parallel_calls', 'data.cache',
    'data.on_undecodable',  # Whether to stop: it changes no result.
    'data.data_dir',  # The same data may move; its size is checked apart.
    'data.download', 'augment.strategy', 'model.remat',
)
FREE_SECTIONS = ('eval.', 'distributed.')
# The sections each mode reads besides the shared ones; those of the other
# modes are free for it.
MODE_SECTIONS = {'pretrain': (), 'linear_eval': ('linear_eval.',),
                 'finetune': ('finetune.',),
                 'distill': ('distill.', 'finetune.'), 'export': ('export.',)}


def _flat(config: Any, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = list(value) if isinstance(value, tuple) else value
  return out


def _as_dict(config: Any) -> dict[str, Any]:
  if hasattr(config, 'to_json_best_effort'):
    return json.loads(config.to_json_best_effort())
  return dict(config)


class WorkdirLock:
  """An exclusive advisory lock on `workdir/run.lock` (see module doc)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_NAME)
    self._fd = None

  def acquire(self) -> 'WorkdirLock':
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      try:
        holder = os.read(fd, 200).decode(errors='replace').strip()
      finally:
        os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise ConfigError(
            f'workdir {os.path.dirname(self.path)!r} is in use by another run '
            f'({holder or "unknown process"}); wait for it to end, stop it, '
            'or use another --workdir') from e
      raise
    os.ftruncate(fd, 0)
    os.write(fd, (f'pid {os.getpid()} on {socket.gethostname()}, started '
                  f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n').encode())
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire() if self._fd is None else self

  def __exit__(self, *exc) -> None:
    self.release()


def prepare(workdir: str) -> None:
  """Creates `workdir` and checks it is writable; one-line ConfigError if not."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f'.write_test.{os.getpid()}')
    with open(probe, 'w') as f:
      f.write('ok')
    os.remove(probe)
  except OSError as e:
    reason = e.strerror or str(e)
    raise ConfigError(f'cannot create or write the workdir {workdir!r}: '
                      f'{reason}') from e


def history(workdir: str) -> list[dict[str, Any]]:
  """Every recorded config of the run, oldest first, as plain dicts."""
  folder = os.path.join(workdir, HISTORY_DIR)
  if not os.path.isdir(folder):
    return []
  out = []
  for name in sorted(os.listdir(folder)):
    if name.endswith('.json'):
      with open(os.path.join(folder, name)) as f:
        out.append(json.load(f))
  return out


def _free_sections(mode: Any) -> tuple[str, ...]:
  """FREE_SECTIONS and the sections only other modes read."""
  own = MODE_SECTIONS.get(mode, ())
  others = {p for ps in MODE_SECTIONS.values() for p in ps} - set(own)
  return FREE_SECTIONS + tuple(sorted(others))


def changed_fields(old: dict[str, Any], new: Any) -> list[str]:
  """Fields of `new` (a config) that differ from `old` and change the run.

  Not counted: FREE_FIELDS, the free sections (FREE_SECTIONS and those of
  the modes other than `new`'s) and fields `old` does not have (added to
  the config since `old` was recorded).
  """
  before, after = _flat(old), _flat(_as_dict(new))
  free = _free_sections(after.get('mode', 'pretrain'))
  changed = []
  for key in sorted(before.keys() | after.keys()):
    if key in FREE_FIELDS or key.startswith(free) or key not in before:
      continue
    if before.get(key) != after.get(key):
      changed.append(key)
  return changed


def check_resume(workdir: str, config: Any) -> None:
  """Raises ConfigError if resuming with `config` changes what the run computes.

  Compared with the config the run was last started or resumed with. Does
  nothing when `config.train.allow_config_change` is set, or for a workdir
  without recorded configs (runs older than the history).
  """
  past = history(workdir)
  if not past or config.train.allow_config_change:
    return
  changed = changed_fields(past[-1], config)
  if changed:
    last = _flat(past[-1])
    now = _flat(_as_dict(config))
    shown = ', '.join(f'{k} {last.get(k)!r} -> {now.get(k)!r}'
                      for k in changed[:4])
    more = f' and {len(changed) - 4} more' if len(changed) > 4 else ''
    raise ConfigError(
        f'resuming {workdir!r} with a config that changes what the run '
        f'computes: {shown}{more}; use the same config, a new --workdir, or '
        '--config.train.allow_config_change=true to continue anyway')


def record_config(workdir: str, config: Any, step: int) -> str:
  """Keeps `config` (started or resumed at `step`) in the run's history.

  Writes `config_history/NNN-step{step}.json` and `config.json` (the
  latest), each atomically. Returns the history file's path.
  """
  folder = os.path.join(workdir, HISTORY_DIR)
  os.makedirs(folder, exist_ok=True)
  index = len([n for n in os.listdir(folder) if n.endswith('.json')])
  text = json.dumps(_as_dict(config), indent=2, sort_keys=True)
  path = os.path.join(folder, f'{index:03d}-step{step}.json')
  for target in (path, os.path.join(workdir, 'config.json')):
    tmp = f'{target}.tmp.{os.getpid()}'
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, target)
  return path
