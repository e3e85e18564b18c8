r"""Faults survived, counted: a real pretraining hit by faults; prints JSON.

    python bench/faults.py                 # every fault, 20 kills (~15-20 min, 2 cores)
    python bench/faults.py --kills=40 --sigterms=10 --seed=1
    python bench/faults.py --quick         # a few faults on one workdir (~1.5 min):
                                           # what tests/test_faults.py runs

Runs `python main.py` on a tiny config (the demo's digits at 8 px, ResNet-18
of width 4, batch 32, `--steps` steps, a checkpoint every `--every`, a
metrics record every step) in subprocesses, as a user would, and injects:

* kill -9 at random moments (`--kills`): during start-up, training, or while
  a checkpoint is written (orbax's temporary folder polled every 2 ms),
  restarting after each;
* SIGTERM at random moments of training (`--sigterms`): acknowledged, saved
  and exited, then restarted;
* a full disk during a save: RLIMIT_FSIZE lowered on the running process,
  and (as root) the workdir on a tmpfs filled up (a real ENOSPC);
* the workdir made read-only mid-run (as root: a read-only bind mount; else
  simulated with RLIMIT_FSIZE=0), room given back, restarted;
* a damaged latest checkpoint (a file zeroed, truncated or missing, the
  metadata or the OCDBT manifest zeroed), restarted;
* undecodable JPEGs in a folder: libjpeg's own lines counted.

After each training case the same command runs to the end and its final
checkpoint and every metrics record (before and after resumes) are compared
with an uninterrupted reference run, byte for byte. The figures: faults
injected, runs that recovered, bytes and steps that differ from the
reference (goal 0 and 0), steps and seconds of work lost per kill (bounded
by `--every` steps), seconds to acknowledge and obey SIGTERM, the one line
each write fault printed. Progress goes to stderr, one JSON line to stdout.

Mounts need root (CAP_SYS_ADMIN): the bench then re-executes itself in a
private mount namespace (`unshare -m`), so its mounts vanish with it. A
SIGTERM or Ctrl-C stops the bench: its runs are killed, its mounts undone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import fault_cases as cases  # pylint: disable=g-import-not-at-top,wrong-import-position
import fault_tools as ft  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import hostmem  # pylint: disable=g-import-not-at-top,wrong-import-position

DAMAGES = ('file_zeroed', 'file_truncated', 'file_missing', 'metadata_zeroed',
           'manifest_zeroed')


class Stopped(Exception):
  """The bench got SIGTERM or Ctrl-C."""


def _stop(signum, frame):
  del frame
  raise Stopped(signal.Signals(signum).name)


def _log(message: str) -> None:
  print(f'faults: {message}', file=sys.stderr, flush=True)


def _enter_private_mounts() -> None:
  """Re-executes the bench in a private mount namespace, if allowed."""
  if ft.mounts_possible() or os.geteuid() != 0 or not shutil.which('unshare'):
    return
  probe = subprocess.run(['unshare', '-m', '--propagation', 'private', 'true'],
                         capture_output=True, check=False)
  if probe.returncode != 0:
    return
  env = dict(os.environ, SIMCLR_FAULTS_NAMESPACE='1')
  sys.stdout.flush()
  os.execvpe('unshare', ['unshare', '-m', '--propagation', 'private',
                         sys.executable, *sys.orig_argv[1:]], env)


def finish(runner: ft.Runner, workdir: str,
           ref: cases.Reference) -> tuple[dict[str, Any], int | None]:
  """Runs the same command to the end; compares with the reference.

  Returns (comparison, the step the finishing run resumed from).
  """
  child = runner.run(workdir)
  if child.proc.returncode != 0:
    _log(f'the finishing run in {workdir} failed: {child.stderr()[-1500:]}')
  result = ft.compare(ref.workdir, workdir, runner.steps)
  result['finish_exit_status'] = child.proc.returncode
  result['tmp_bytes_left'] = sum(
      ft.folder_bytes(os.path.join(workdir, 'checkpoints', n))
      for n in ft.tmp_saves(workdir))
  return result, child.resumed_from()


def _case(name: str, results: dict, fn, *fn_args) -> dict[str, Any]:
  """Runs one case; a run that hangs or fails to start is its result."""
  _log(f'{name} ...')
  t0 = time.monotonic()
  try:
    out = fn(*fn_args)
  except Stopped:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # A run that hung or failed to start, a mount refused: the case's result.
    out = {'injected': 1, 'recovered': 0,
           'error': f'{type(e).__name__}: {e}'[:2000]}
  results[name] = out
  out['seconds'] = round(time.monotonic() - t0, 1)
  _log(f'{name}: {json.dumps(out)}')
  return out


def _with_finish(runner, ref, results, name, workdir, fn, *fn_args):
  """A case on `workdir`, then the finishing run and its comparison."""

  def run():
    out = fn(*fn_args)
    compared, resumed = finish(runner, workdir, ref)
    out.update(compared)
    if not compared['identical']:
      out['recovered'] = 0
    out['_resumed'] = resumed
    return out
  return _case(name, results, run)


def full(args, runner: ft.Runner, ref: cases.Reference, root: str,
         rng: random.Random, mounts: list[str]) -> dict[str, Any]:
  """Every fault, each case on its own workdir."""
  results = {}
  w = lambda name: os.path.join(root, name)
  out = _with_finish(runner, ref, results, 'kill9', w('kill9'), cases.kills,
                     runner, w('kill9'), args.kills, rng, ref.startup_seconds,
                     ref.step_seconds)
  if 'error' not in out:
    cases.settle_kills(out, out.pop('_resumed'), runner.every,
                       ref.step_seconds, out['identical'])
  _with_finish(runner, ref, results, 'sigterm', w('sigterm'), cases.sigterms,
               runner, w('sigterm'), args.sigterms, rng, ref.step_seconds)
  _with_finish(runner, ref, results, 'disk_full_rlimit', w('rlimit'),
               cases.disk_full_rlimit, runner, w('rlimit'))
  if ft.mounts_possible():
    folder = w('tmpfs')
    mounts.append(folder)
    _with_finish(runner, ref, results, 'disk_full_tmpfs',
                 os.path.join(folder, 'w'),
                 lambda: cases.disk_full_tmpfs(runner, folder)[0])
    mounts.append(w('read_only'))
    _with_finish(runner, ref, results, 'read_only', w('read_only'),
                 cases.read_only, runner, w('read_only'))
  else:
    _with_finish(runner, ref, results, 'read_only', w('read_only'),
                 cases.read_only_rlimit, runner, w('read_only'))
  for how in args.damage:
    _with_finish(runner, ref, results, f'damaged_{how}', w(how),
                 cases.damaged, runner, w(how), how)
  if args.bad_images:
    _case('undecodable_jpegs', results, cases.decoder_messages, runner,
          w('images'), 60, args.bad_images)
  for out in results.values():
    out.pop('_resumed', None)
    out.pop('_first_resumed', None)
  return results


def quick(args, runner: ft.Runner, ref: cases.Reference, root: str,
          rng: random.Random) -> dict[str, Any]:
  """A few faults one after the other on one workdir, then one comparison."""
  workdir = os.path.join(root, 'quick')
  results = {}
  _case('kill9', results, cases.kills, runner, workdir, args.kills, rng,
        ref.startup_seconds, ref.step_seconds, ['save', 'training', 'startup'])
  _case('sigterm', results, cases.sigterms, runner, workdir, args.sigterms,
        rng, ref.step_seconds)
  _case('disk_full_rlimit', results, cases.disk_full_rlimit, runner, workdir)
  for i, how in enumerate(args.damage):
    # The last restart runs to the end: it is the finishing run.
    _case(f'damaged_{how}', results, cases.damaged, runner, workdir, how,
          i == len(args.damage) - 1)
  if not args.damage:
    finish(runner, workdir, ref)
  compared = ft.compare(ref.workdir, workdir, runner.steps)
  compared['tmp_bytes_left'] = sum(
      ft.folder_bytes(os.path.join(workdir, 'checkpoints', n))
      for n in ft.tmp_saves(workdir))
  # The run after the last kill is the SIGTERM case's first.
  if 'error' not in results['kill9']:
    cases.settle_kills(results['kill9'],
                       results['sigterm'].pop('_first_resumed', None),
                       runner.every, ref.step_seconds, compared['identical'])
  for out in results.values():
    if not compared['identical']:
      out['recovered'] = 0
  results['final_comparison'] = compared
  return results


def totals(results: dict[str, Any]) -> dict[str, Any]:
  """The headline figures over every case."""
  training = [r for r in results.values() if 'identical' in r]
  failed = [n for n, r in results.items() if 'error' in r]
  kill = results.get('kill9', {})
  return {
      'faults_injected': sum(r.get('injected', 0) for r in results.values()),
      'recovered': sum(r.get('recovered', 0) for r in results.values()),
      'final_bytes_differing': sum(r['final_bytes_differing']
                                   for r in training),
      'final_steps_differing': sum(r['steps_differing'] for r in training),
      'tmp_bytes_left': sum(r.get('tmp_bytes_left', 0) for r in training),
      'max_steps_lost_per_kill': kill.get('steps_lost_per_kill', {}).get('max'),
      'mean_seconds_lost_per_kill': kill.get('seconds_lost_per_kill',
                                             {}).get('mean'),
      'cases_in_error': failed,
  }


def _parse(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--quick', action='store_true',
                 help='1 kill (in a save), 1 SIGTERM, 1 full disk, 1 zeroed '
                 'file, on one workdir')
  p.add_argument('--kills', type=int, default=None, help='kill -9 count (20)')
  p.add_argument('--sigterms', type=int, default=None, help='SIGTERMs (5)')
  p.add_argument('--damage', default=None,
                 help=f'comma-separated damages of a checkpoint ({",".join(DAMAGES)})')
  p.add_argument('--bad_images', type=int, default=None,
                 help='undecodable JPEGs among 60 good ones (30; 0: skip)')
  p.add_argument('--steps', type=int, default=None, help='steps of the run (200)')
  p.add_argument('--every', type=int, default=None,
                 help='train.checkpoint_every_steps (4)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--timeout', type=float, default=600,
                 help='seconds any one run may take')
  p.add_argument('--keep', action='store_true', help='keep the work folder')
  args = p.parse_args(argv)
  q = args.quick
  defaults = dict(kills=1 if q else 20, sigterms=1 if q else 5,
                  damage='file_zeroed' if q else ','.join(DAMAGES),
                  bad_images=0 if q else 30, steps=16 if q else 200,
                  every=2 if q else 4)
  for k, v in defaults.items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  args.damage = [d for d in args.damage.split(',') if d]
  unknown = set(args.damage) - set(DAMAGES)
  if unknown:
    p.error(f'unknown --damage {sorted(unknown)}; choose from {DAMAGES}')
  return args


def main(argv: list[str]) -> int:
  args = _parse(argv)
  if not args.quick:
    _enter_private_mounts()
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, _stop)
  root = tempfile.mkdtemp(prefix='simclr_faults_')
  runner = ft.Runner(root, args.steps, args.every, args.timeout)
  mounts: list[str] = []
  t0 = time.monotonic()
  try:
    _log(f'work folder {root}; reference run of {args.steps} steps ...')
    ref = cases.Reference(runner, os.path.join(root, 'reference'))
    _log(f'reference: {ref.seconds:.1f} s, start-up {ref.startup_seconds:.1f} '
         f's, {ref.step_seconds:.3f} s a step')
    rng = random.Random(args.seed)
    results = (quick(args, runner, ref, root, rng) if args.quick else
               full(args, runner, ref, root, rng, mounts))
  except Stopped as e:
    _log(f'stopped by {e}: runs killed, mounts undone')
    return 130
  finally:
    runner.close()
    for m in mounts:
      ft.unmount(m)
    if not args.keep:
      shutil.rmtree(root, ignore_errors=True)
  record = {
      'bench': 'faults', 'command': ' '.join(['python', 'bench/faults.py',
                                              *argv]),
      'date': datetime.date.today().isoformat(),
      'cpu_model': hostmem.cpu_model(), 'cpus': os.cpu_count(),
      'mounts': ft.mounts_possible(),
      'run': {'steps': args.steps, 'checkpoint_every_steps': args.every,
              'seed': args.seed, 'reference_seconds': round(ref.seconds, 1),
              'startup_seconds': round(ref.startup_seconds, 1),
              'step_seconds': round(ref.step_seconds, 4)},
      'totals': totals(results), 'cases': results,
      'seconds': round(time.monotonic() - t0, 1)}
  print(json.dumps(record), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
