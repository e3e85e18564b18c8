"""Crash safety: a run killed with SIGKILL, or stopped with SIGTERM, and started
again with the same command ends with exactly the parameters of a run that was
never interrupted."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp

from simclr_jax import reporting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12
TINY = [
    '--config=configs/demo.py',
    '--config.image_size=8', '--config.data.resize_to=8',
    '--config.model.base_width=4', '--config.model.proj_out_dim=8',
    '--config.train.global_batch_size=32',
    f'--config.train.num_steps={STEPS}',
    '--config.train.checkpoint_every_steps=2',
    '--config.train.log_every_steps=2',
    '--config.train.keep_checkpoints=2',
    '--config.eval.linear_probe=false',
]


CACHE = {}


def _command(workdir):
  return [sys.executable, 'main.py', f'--workdir={workdir}', *TINY]


def _env():
  env = dict(os.environ)
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  # The four runs compile the same step: share JAX's persistent cache.
  env['JAX_COMPILATION_CACHE_DIR'] = CACHE['dir']
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  return env


def _run(workdir, timeout=300):
  return subprocess.run(_command(workdir), cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=timeout)


def _steps_saved(workdir):
  path = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(path):
    return []
  return sorted(int(d) for d in os.listdir(path) if d.isdigit())


def _start_and_signal(workdir, sig, after_step, timeout=300):
  """Starts a run, sends `sig` once a checkpoint of >= after_step exists."""
  proc = subprocess.Popen(_command(workdir), cwd=ROOT, env=_env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + timeout
  try:
    while time.time() < deadline and proc.poll() is None:
      if any(s >= after_step for s in _steps_saved(workdir)):
        proc.send_signal(sig)
        break
      time.sleep(0.05)
    out, err = proc.communicate(timeout=timeout)
  finally:
    if proc.poll() is None:
      proc.kill()
  return proc.returncode, out, err


def _final_params(workdir):
  path = os.path.join(workdir, 'checkpoints', str(STEPS), 'default')
  tree = ocp.PyTreeCheckpointer().restore(path)
  return tree


def _assert_same(a, b):
  import jax  # pylint: disable=g-import-not-at-top
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sigkill_and_sigterm_then_resume_equal_uninterrupted(tmp_path):
  CACHE['dir'] = str(tmp_path / 'jax_cache')
  straight = str(tmp_path / 'straight')
  result = _run(straight)
  assert result.returncode == 0, result.stderr[-3000:]
  assert _steps_saved(straight)[-1] == STEPS

  broken = str(tmp_path / 'broken')
  code, _, err = _start_and_signal(broken, signal.SIGKILL, after_step=4)
  assert code == -signal.SIGKILL, err[-3000:]
  killed_at = max(_steps_saved(broken))
  assert killed_at < STEPS

  # SIGTERM (preemption): saves where it is and exits 0.
  code, out, err = _start_and_signal(broken, signal.SIGTERM,
                                     after_step=killed_at + 2)
  assert code == 0, err[-3000:]
  stopped = None
  if 'stopped by a signal' in out:  # It may have finished before the signal.
    stopped = reporting.read_metrics(broken)[-1]
    assert stopped.get('preempted') is True and stopped['train_seconds'] > 0

  result = _run(broken)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'resuming at step' in result.stdout
  if stopped is not None:  # train_seconds adds up the invocations.
    final = reporting.read_metrics(broken)[-1]
    assert final['final'] and final['train_seconds'] > stopped['train_seconds']
  _assert_same(_final_params(straight), _final_params(broken))
  # Logged losses agree too (the last record per step wins after a resume).
  by_step = lambda w: {r['step']: r['loss'] for r in reporting.read_metrics(w)
                       if 'loss' in r}
  assert by_step(straight) == by_step(broken)
