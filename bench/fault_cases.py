"""The faults of bench/faults.py, one function each, each returning a dict.

Every case works on a workdir of the bench's tiny run and leaves it so that
the same command can go on; `faults.py` then finishes the run and compares
it with the uninterrupted reference (`fault_tools.compare`). A case's dict
has `injected` (faults injected), `recovered` (of them, those after which
the next run went on from an intact checkpoint, one line at most told the
fault, and nothing but the lost steps was recomputed) and its own figures.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import time
from typing import Any

import fault_tools as ft

# Non-progress stderr lines a fault may cause (tests/test_run_safety.py).
MAX_NOISE = 5
# Seconds a run may take to end once the workdir refuses writes.
EXIT_WITHIN = 120
_SAVED = re.compile(r'stopped by a signal .*; saved step (\d+)')


def _summary(values: list[float]) -> dict[str, float]:
  if not values:
    return {'max': 0, 'mean': 0}
  return {'max': round(max(values), 3),
          'mean': round(sum(values) / len(values), 3)}


class Reference:
  """The uninterrupted run: its workdir and timings.

  Attributes:
    workdir: where it ran.
    startup_seconds: from its start to its first step (a cold compilation
      cache: restarts take less).
    step_seconds: the median step time (a batch over images_per_sec of its
      last three quarters of steps).
    seconds: the whole run.
  """

  def __init__(self, runner: ft.Runner, workdir: str):
    child = runner.start(workdir)
    ft.wait_until(lambda: child.step_reached() is not None, child,
                  runner.timeout)
    self.startup_seconds = time.monotonic() - child.started
    if child.wait(runner.timeout) != 0:
      raise ft.BenchError(f'the reference run failed: {child.stderr()[-2000:]}')
    self.workdir = workdir
    self.seconds = time.monotonic() - child.started
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      rates = [r['images_per_sec'] for r in map(json.loads, f)
               if 'images_per_sec' in r]
    rates = sorted(rates[len(rates) // 4:])
    self.step_seconds = 32 / rates[len(rates) // 2]


def _wait_started(child: ft.Child, runner: ft.Runner) -> bool:
  """Waits until the child has finished a step of its own (False: it ended)."""
  first = lambda: (child.step_reached() or -1) > (child.resumed_from() or 0)
  return ft.wait_until(first, child, runner.timeout)


def _finish_kill(child: ft.Child) -> None:
  child.kill(signal.SIGKILL)
  child.proc.wait(timeout=60)


# ---------------------------------------------------------------- kill -9


def _wait_steps(child: ft.Child, runner: ft.Runner, steps: int) -> bool:
  """Waits until the child has done `steps` steps of its own (False: ended)."""
  done = lambda: ((child.step_reached() or -1) - (child.resumed_from() or 0)
                  >= steps)
  return ft.wait_until(done, child, runner.timeout)


def kills(runner: ft.Runner, workdir: str, count: int, rng: random.Random,
          startup_seconds: float, step_seconds: float,
          moments: list[str] | None = None) -> dict[str, Any]:
  """kill -9 `count` times at random moments, restarting after each.

  Aimed at (drawn 2:5:3, or `moments` in turn): start-up (uniform over the
  last start-up measured, at first `startup_seconds`); training (after a
  uniform 1 to 3 checkpoint periods of steps of the run, within the next
  step); or a checkpoint being written (after 0, 1 or 2 of the run's saves,
  the moment orbax's temporary folder appears, polled every 2 ms). Each
  kill is counted by where it landed (`by_moment`): in a save if a
  temporary folder was there after it, in training if the run had done a
  step, else in start-up. Steps lost by a kill: the step the run had
  reached minus the step the next run resumed from.
  """
  every = runner.every
  landed = {'startup': 0, 'training': 0, 'save': 0}
  lost, leftovers, resumes, restarts = [], 0, [], []
  pending = None  # The step reached by the last kill, until a run resumes.
  injected = 0
  while injected < count:
    child = runner.start(workdir)
    aim = (moments[injected % len(moments)] if moments else
           rng.choices(list(landed), weights=[2, 5, 3])[0])
    if aim == 'startup':
      ok = ft.sleep_while_alive(child, rng.uniform(0, startup_seconds))
    else:
      ok = _wait_started(child, runner)
      startup_seconds = time.monotonic() - child.started
      if ok:  # Start to first step, warm compilation cache.
        restarts.append(startup_seconds)
      if aim == 'training':
        ok = ok and _wait_steps(child, runner, rng.randint(1, 3 * every))
        ok = ok and ft.sleep_while_alive(child, rng.uniform(0, step_seconds))
        # Between saves (here a save often lasts as long as a period).
        ok = ok and ft.wait_until(lambda: not ft.tmp_saves(workdir), child,
                                  runner.timeout, poll=0.002)
      else:
        saves = rng.randint(0, 2)
        ok = ok and (not saves or _wait_steps(child, runner, saves * every + 1))
        ok = ok and ft.wait_until(lambda: bool(ft.tmp_saves(workdir)), child,
                                  runner.timeout, poll=0.002)
    if not ok or not child.alive():
      child.wait(runner.timeout)
      break  # The run ended before the kill: nothing left to kill.
    _finish_kill(child)
    injected += 1
    resumed, reached = child.resumed_from(), child.step_reached()
    if ft.tmp_saves(workdir):
      moment = 'save'
      leftovers += 1
    elif reached is not None and reached > (resumed or 0):
      moment = 'training'
    else:
      moment = 'startup'
    landed[moment] += 1
    if pending is not None and resumed is not None:
      lost.append((pending[0] - resumed, pending[1]))
      pending = None
    if resumed is not None:
      pending = (max(reached or 0, resumed), moment)
      resumes.append(resumed)
  restarts.sort()
  return {'injected': injected, 'by_moment': landed, '_pending': pending,
          '_lost': lost, 'tmp_folders_left_by_kills': leftovers,
          'runs_resumed_from_a_checkpoint': sum(1 for r in resumes if r > 0),
          'restart_seconds_median': round(restarts[len(restarts) // 2], 1)
                                    if restarts else None}


def settle_kills(result: dict[str, Any], resumed: int | None,
                 every: int, step_seconds: float, recovered_ok: bool
                 ) -> dict[str, Any]:
  """Adds the last kill's loss (`resumed`: the next run's start) and sums up.

  Steps lost, overall and by where the kill landed ('training': between
  saves, at most `every`; 'save': while a save was written, back to the
  checkpoint before it, so up to `every` plus the steps run meanwhile).
  """
  lost = list(result.pop('_lost'))
  pending = result.pop('_pending')
  if pending is not None and resumed is not None:
    lost.append((pending[0] - resumed, pending[1]))
  steps = [n for n, _ in lost]
  result['steps_lost_per_kill'] = _summary(steps)
  result['steps_lost_by_moment'] = {
      m: _summary([n for n, where in lost if where == m])
      for m in ('startup', 'training', 'save')}
  result['seconds_lost_per_kill'] = _summary([n * step_seconds for n in steps])
  result['kills_losing_more_than_checkpoint_every_steps'] = sum(
      1 for n in steps if n > every)
  result['recovered'] = result['injected'] if recovered_ok else 0
  return result


# ----------------------------------------------------------------- SIGTERM


def sigterms(runner: ft.Runner, workdir: str, count: int,
             rng: random.Random, step_seconds: float) -> dict[str, Any]:
  """SIGTERM `count` times at random moments of training, restarting after each.

  Each time: seconds until the run acknowledges ('SIGTERM received') and
  until it exits; it must exit 0 having saved the step it reached, so the
  next run resumes there (steps lost 0).
  """
  every = runner.every
  acks, exits, lost, noise = [], [], [], []
  injected = recovered = 0
  first_resumed = None
  for _ in range(count):
    child = runner.start(workdir)
    if not (_wait_started(child, runner) and ft.sleep_while_alive(
        child, rng.uniform(0, 2 * every * step_seconds))):
      child.wait(runner.timeout)
      break
    if first_resumed is None:
      first_resumed = child.resumed_from()
    child.kill(signal.SIGTERM)
    sent = time.monotonic()
    injected += 1
    ft.wait_until(lambda: 'SIGTERM received' in child.stderr(), child, 60)
    acks.append(time.monotonic() - sent)
    code = child.wait(runner.timeout)
    exits.append(time.monotonic() - sent)
    reached = child.step_reached() or 0
    said = _SAVED.search(child.stdout())
    noise.append(len(child.noise()))
    if code == 0 and said and int(said.group(1)) in ft.saved_steps(workdir):
      recovered += 1
      lost.append(max(reached - int(said.group(1)), 0))
  return {'injected': injected, 'recovered': recovered,
          'seconds_to_acknowledge': _summary(acks),
          'seconds_to_exit': _summary(exits),
          'steps_lost': sum(lost), 'max_stderr_lines': max(noise or [0]),
          '_first_resumed': first_resumed}


# -------------------------------------------------------------- full disks


def _write_fault(runner: ft.Runner, workdir: str, inject, clear,
                 how: str) -> dict[str, Any]:
  """A write fault injected once a checkpoint beyond the first is saved.

  `inject(child)` makes the workdir refuse writes, `clear()` gives room
  back. The run must end with one line (exit status not 0) and leave the
  checkpoints saved before intact: the next run resumes from the latest.
  """
  child = runner.start(workdir)
  base = ft.saved_steps(workdir)
  target = lambda: [s for s in ft.saved_steps(workdir) if s not in base]
  if not ft.wait_until(lambda: bool(target()), child, runner.timeout):
    child.wait(runner.timeout)
    return {'injected': 0, 'recovered': 0, 'how': how}
  start = ft.saved_steps(workdir)[-1]
  inject(child)
  injected_at = time.monotonic()
  try:
    code = child.wait(EXIT_WITHIN)
  except ft.BenchError:
    code = None  # Hung: killed after EXIT_WITHIN seconds.
  exit_seconds = time.monotonic() - injected_at
  noise = child.noise()
  saved = ft.saved_steps(workdir)
  clear()
  resume = runner.start(workdir)
  ft.wait_until(lambda: resume.resumed_from() is not None, resume,
                runner.timeout)
  resumed = resume.resumed_from()
  _finish_kill(resume)
  errors = [l for l in noise if l.startswith('error: ')]
  ok = (code is not None and code > 0 and len(noise) <= MAX_NOISE
        and len(errors) == 1
        and 'Traceback' not in child.stderr() and saved
        and resumed == saved[-1] and resumed >= start
        and not resume.noise())
  return {'injected': 1, 'recovered': int(bool(ok)), 'how': how,
          'exit_status': 'hung' if code is None else code,
          'seconds_to_exit': round(exit_seconds, 1),
          'stderr_lines': len(noise),
          'line': errors[0] if errors else (noise[-1] if noise else ''),
          'checkpoint_before_fault': start, 'resumed_from': resumed}


def disk_full_rlimit(runner: ft.Runner, workdir: str) -> dict[str, Any]:
  """RLIMIT_FSIZE of 64 KiB set on the running process: the checkpoint's data
  file (about 260 KB) cannot be written, metrics lines still can (EFBIG)."""
  return _write_fault(
      runner, workdir, lambda c: ft.limit_file_size(c.pid, 64 << 10),
      lambda: None, 'RLIMIT_FSIZE=64KiB set on the running process (EFBIG)')


def disk_full_tmpfs(runner: ft.Runner, folder: str) -> tuple[dict, str]:
  """The workdir on a 64 MiB tmpfs, filled but for 64 KiB once a checkpoint
  is saved: the next save (or log line) meets a real ENOSPC."""
  ft.mount_tmpfs(folder, 64 << 20)
  workdir = os.path.join(folder, 'w')
  ballast = []
  result = _write_fault(
      runner, workdir, lambda c: ballast.append(ft.fill(folder, 64 << 10)),
      lambda: [os.remove(b) for b in ballast],
      'tmpfs of 64 MiB filled to 64 KiB free (ENOSPC)')
  return result, workdir


def read_only(runner: ft.Runner, workdir: str) -> dict[str, Any]:
  """The workdir made read-only mid-run: a read-only bind mount onto itself
  (root ignores chmod), EROFS for every new file; undone before the resume."""
  return _write_fault(
      runner, workdir, lambda c: ft.bind_read_only(workdir),
      lambda: ft.unmount(workdir),
      'read-only bind mount of the workdir onto itself (EROFS)')


def read_only_rlimit(runner: ft.Runner, workdir: str) -> dict[str, Any]:
  """Without mounts: RLIMIT_FSIZE=0 on the running process (nothing grows)."""
  return _write_fault(
      runner, workdir, lambda c: ft.limit_file_size(c.pid, 0), lambda: None,
      'simulated with RLIMIT_FSIZE=0 on the running process (EFBIG)')


# ----------------------------------------------------- damaged checkpoints


def _damage(folder: str, how: str) -> str:
  """Damages checkpoint `folder` as `how` says; returns the file touched."""
  files = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
  if how == 'metadata_zeroed':
    path = os.path.join(folder, 'default', '_METADATA')
  elif how == 'manifest_zeroed':
    path = next(p for p in files if p.endswith('manifest.ocdbt'))
  else:
    path = max(files, key=os.path.getsize)
  size = os.path.getsize(path)
  if how == 'file_missing':
    os.remove(path)
  elif how == 'file_truncated':
    os.truncate(path, size // 2)
  else:
    with open(path, 'r+b') as f:
      f.write(b'\0' * size)
  return os.path.relpath(path, folder)


def damaged(runner: ft.Runner, workdir: str, how: str,
            to_end: bool = False) -> dict[str, Any]:
  """kill -9 once two checkpoints are saved, damage the latest, restart.

  `how`: 'file_zeroed' (the largest file, every byte 0), 'file_truncated'
  (cut to half), 'file_missing', 'metadata_zeroed' (default/_METADATA),
  'manifest_zeroed' (the OCDBT manifest). The restart must say it in one
  warning line, move the checkpoint to damaged_checkpoints/ and resume from
  the previous one. `to_end`: the restart runs to the end (else it is
  killed after its first step).
  """
  child = runner.start(workdir)
  base = max(ft.saved_steps(workdir) or [0])
  ready = lambda: (len(ft.saved_steps(workdir)) >= 2
                   and ft.saved_steps(workdir)[-1] > base)
  if not ft.wait_until(ready, child, runner.timeout):
    child.wait(runner.timeout)
    return {'injected': 0, 'recovered': 0, 'how': how}
  _finish_kill(child)
  saved = ft.saved_steps(workdir)
  touched = _damage(os.path.join(workdir, 'checkpoints', str(saved[-1])), how)
  resume = runner.start(workdir)
  ft.wait_until(lambda: resume.resumed_from() is not None, resume,
                runner.timeout)
  resumed = resume.resumed_from()
  if to_end:
    resume.wait(runner.timeout)
  else:
    ft.wait_until(lambda: (resume.step_reached() or -1) > (resumed or 0),
                  resume, runner.timeout)
    _finish_kill(resume)
  noise = resume.noise()
  aside = os.path.join(workdir, 'damaged_checkpoints', str(saved[-1]))
  ok = (len(noise) == 1 and 'is damaged' in noise[0]
        and os.path.isdir(aside) and resumed == saved[-2])
  return {'injected': 1, 'recovered': int(ok), 'how': how, 'file': touched,
          'damaged_step': saved[-1], 'resumed_from': resumed,
          'stderr_lines': len(noise), 'line': noise[0] if noise else ''}


# ------------------------------------------------- damaged images (libjpeg)


def _jpeg(rng, damaged: bool) -> bytes:
  """An 8x8 JPEG; damaged: its entropy-coded data junk (markers kept)."""
  import io  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  pixels = np.asarray(rng.integers(0, 256, (8, 8, 3)), np.uint8)
  Image.fromarray(pixels).save(buf, 'JPEG', quality=90)
  good = buf.getvalue()
  if not damaged:
    return good
  sos = good.rfind(b'\xff\xda')
  start = sos + 2 + int.from_bytes(good[sos + 2:sos + 4], 'big')
  end = good.rfind(b'\xff\xd9')
  junk = rng.integers(0, 255, end - start - 2).astype(np.uint8).tobytes()
  return good[:start] + b'\xff\x6b' + junk + good[end:]


def decoder_messages(runner: ft.Runner, folder: str, good: int,
                     bad: int) -> dict[str, Any]:
  """A folder of `good` JPEGs and `bad` undecodable ones, trained on.

  Counts what libjpeg printed (kept in decoder_messages.log by
  native_stderr.py), the files listed in undecodable.txt and the lines the
  console got.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  data = os.path.join(folder, 'images')
  for i in range(good + bad):
    os.makedirs(os.path.join(data, f'c{i % 2}'), exist_ok=True)
    with open(os.path.join(data, f'c{i % 2}', f'{i:04d}.jpg'), 'wb') as f:
      f.write(_jpeg(rng, damaged=i < bad))
  workdir = os.path.join(folder, 'w')
  base = ['--config=configs/cifar10_folder.py', f'--config.data.data_dir={data}',
          '--config.data.cache=false', '--config.model.depth=18',
          '--config.model.base_width=4', '--config.image_size=8',
          '--config.data.resize_to=8', '--config.train.global_batch_size=16',
          '--config.train.num_steps=4', '--config.eval.linear_probe=false',
          '--config.eval.compare_random_init=false']
  child = runner.start(workdir, base=base)
  code = child.wait(runner.timeout)

  def lines(name):
    try:
      with open(os.path.join(workdir, name), errors='replace') as f:
        return [l for l in f.read().splitlines() if l.strip()]
    except OSError:
      return []

  listed = lines('undecodable.txt')
  ok = code == 0 and len(listed) == bad and len(child.noise()) <= MAX_NOISE
  return {'injected': bad, 'recovered': bad if ok else 0,
          'files': good + bad, 'undecodable_listed': len(listed),
          'decoder_messages_logged': len(lines('decoder_messages.log')),
          'console_lines': len(child.noise()), 'exit_status': code}
