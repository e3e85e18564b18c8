"""Two processes of 4 CPU devices train exactly like one process of 8.

Three child processes run `tests/multihost_worker.py` (the full
`train.train_and_evaluate` on a tiny digits config, 3 steps, a checkpoint at
steps 2 and 3, evaluation off) at the same time:

* processes 0 and 1 of a 2-process run (`jax.distributed` on localhost, gloo
  CPU collectives), 4 CPU devices each, sharing one workdir;
* one process with 8 CPU devices, fed the same global batches (the
  concatenation of what the library's iterator gives processes 0 and 1).

Each restores the final checkpoint with orbax and dumps the train state to an
.npz. The test checks that both processes of the multi-host run hold the same
state, that it equals the single-process state to ~1e-5, that the logged
metrics agree, and that only process 0 wrote metrics.jsonl and TensorBoard
events. The children run with XLA's LLVM optimisations off to compile fast;
the whole test takes ~35 s of wall time on 2 cores.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WORKER = os.path.join(_ROOT, 'tests', 'multihost_worker.py')
_TIMEOUT_S = 300  # For all three children; they normally need ~30 s.
_NUM_STEPS = 3


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _child_env(num_devices: int) -> dict:
  env = dict(os.environ)
  flags = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                   if 'xla_force_host_platform_device_count' not in f)
  # LLVM optimisation level 0 makes XLA:CPU compile ~3x faster; every child
  # uses it, so the programs compared are the same.
  env['XLA_FLAGS'] = (
      flags + f' --xla_force_host_platform_device_count={num_devices}'
      ' --xla_backend_optimization_level=0').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  env['CUDA_VISIBLE_DEVICES'] = ''
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  env['PYTHONUNBUFFERED'] = '1'
  env.pop('JAX_NUM_CPU_DEVICES', None)
  return env


def _run_children(specs, tmp_path):
  """Starts every (name, args, num_devices) at once; waits; kills all on failure."""
  procs = {}
  logs = {}
  try:
    for name, args, num_devices in specs:
      logs[name] = open(tmp_path / f'{name}.log', 'w+')
      procs[name] = subprocess.Popen(
          [sys.executable, _WORKER] + args, cwd=_ROOT, env=_child_env(num_devices),
          stdout=logs[name], stderr=subprocess.STDOUT)
    deadline = time.monotonic() + _TIMEOUT_S
    pending = dict(procs)
    while pending:
      for name, p in list(pending.items()):
        rc = p.poll()
        if rc is None:
          continue
        del pending[name]
        if rc != 0:
          raise AssertionError(f'{name} exited with status {rc}')
      if pending and time.monotonic() > deadline:
        raise AssertionError(f'{sorted(pending)} still running after '
                             f'{_TIMEOUT_S} s')
      time.sleep(0.2)
  except AssertionError as e:
    tails = []
    for name, f in logs.items():
      f.flush()
      f.seek(0)
      tails.append(f'--- {name} ---\n' + f.read()[-3000:])
    pytest.fail(f'{e}\n' + '\n'.join(tails))
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
        p.wait()
    for f in logs.values():
      f.close()


def _load(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def test_two_processes_of_four_devices_equal_one_process_of_eight(tmp_path):
  port = _free_port()
  multi_dir, single_dir = tmp_path / 'multi', tmp_path / 'single'
  specs = [
      (f'process{p}', [f'--workdir={multi_dir}', f'--out={tmp_path}/p{p}.npz',
                       '--num_processes=2', f'--process_id={p}',
                       f'--port={port}'], 4)
      for p in range(2)]
  specs.append(('single', [f'--workdir={single_dir}',
                           f'--out={tmp_path}/single.npz',
                           '--emulate_processes=2'], 8))
  _run_children(specs, tmp_path)

  p0, p1 = _load(tmp_path / 'p0.npz'), _load(tmp_path / 'p1.npz')
  single = _load(tmp_path / 'single.npz')
  assert int(p0['process_count']) == int(p1['process_count']) == 2
  assert int(p0['local_device_count']) == 4 and int(p0['device_count']) == 8
  assert int(single['process_count']) == 1
  assert int(single['local_device_count']) == 8

  names = [k for k in single if k.startswith('.')]
  assert set(names) == {k for k in p0 if k.startswith('.')}
  assert any('params' in k for k in names)
  assert int(single['.step']) == int(p0['.step']) == _NUM_STEPS
  for k in names:
    # Both processes hold the same replicated state, bit for bit.
    np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    # As tests/test_train.py: float32 sums in another order, 3 steps of LARS.
    np.testing.assert_allclose(p0[k], single[k], rtol=1e-4, atol=2e-5,
                               err_msg=k)
  # Training moved the parameters (the comparison is not of two inits).
  moved = [np.abs(single[k]).max() for k in names
           if k.startswith('.opt_state') and single[k].dtype == np.float32]
  assert max(moved) > 0

  # Only process 0 writes metrics.jsonl (one line per step plus the final
  # record; two writers would give twice as many) and TensorBoard events.
  multi, ref = _metrics(multi_dir), _metrics(single_dir)
  assert [r['step'] for r in multi] == list(range(1, _NUM_STEPS + 1)) + [
      _NUM_STEPS]
  assert multi[-1].get('final') is True
  assert os.path.exists(multi_dir / 'config.json')
  if os.path.isdir(multi_dir / 'tensorboard'):  # When TensorFlow is there.
    assert len(os.listdir(multi_dir / 'tensorboard')) == 1
  for r, s in zip(multi[:-1], ref[:-1]):
    for k in ('loss', 'grad_norm', 'probe_loss', 'contrastive_accuracy',
              'learning_rate'):
      # Sums over devices run in another order through gloo.
      np.testing.assert_allclose(r[k], s[k], rtol=1e-4, err_msg=k)
  # Both processes wrote one checkpoint together at steps 2 and 3.
  steps = sorted(int(d) for d in os.listdir(multi_dir / 'checkpoints')
                 if d.isdigit())
  assert steps == [2, 3]
