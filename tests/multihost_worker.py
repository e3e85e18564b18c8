r"""One process of the multi-host test (tests/test_multihost.py); not a test itself.

Runs the full `train.train_and_evaluate` on a tiny digits config, then
restores the final checkpoint with orbax and writes this process's copy of
the (replicated) train state to an .npz file:

    # Two processes (set XLA_FLAGS=--xla_force_host_platform_device_count=4):
    python tests/multihost_worker.py --workdir=W --out=p0.npz \
        --num_processes=2 --process_id=0 --port=PORT
    python tests/multihost_worker.py --workdir=W --out=p1.npz \
        --num_processes=2 --process_id=1 --port=PORT
    # The single-process reference (8 devices), fed the same global batches:
    python tests/multihost_worker.py --workdir=W1 --out=ref.npz \
        --emulate_processes=2

The batch of a step depends on the number of processes (each process draws
its own permutation of its part of the data), so the single-process reference
builds each global batch by concatenating the local batches that the
library's own iterator gives processes 0..n-1 of an n-process run
(`--emulate_processes=n`). The multi-host run itself is not patched.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,g-bad-import-order
import jax
import numpy as np

from simclr_jax import checkpoint
from simclr_jax import data
from simclr_jax import parallel
from simclr_jax import train
import tiny  # pylint: disable=g-bad-import-order

NUM_STEPS = 3


def tiny_config(args: argparse.Namespace) -> Any:
  """tests/tiny.py's config for NUM_STEPS steps, on 1 or several processes."""
  config = tiny.tiny_config()
  config.train.num_steps = NUM_STEPS
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2  # A save at step 2, the last at 3.
  config.eval.linear_probe = False
  config.eval.compare_random_init = False
  # A tenth of the demo's rate: at 1.0 this 8 px, width-4 network amplifies
  # float32 reordering (gloo vs in-process sums) about 100-fold in 3 steps
  # (BatchNorm variances near epsilon in its 32-wide head), past the 1e-4
  # the test allows; at 0.1 the two runs agree to 0.15 of it.
  config.optim.base_learning_rate = 0.1
  if args.num_processes > 1:
    config.distributed.initialize = True
    config.distributed.coordinator_address = f'127.0.0.1:{args.port}'
    config.distributed.num_processes = args.num_processes
    config.distributed.process_id = args.process_id
  return config


def emulate_processes(n: int) -> None:
  """Makes a one-process run read the global batches of an n-process run.

  Global batch = concatenation of the local batches of processes 0..n-1, in
  process order (the order `host_to_global` lays them out on the mesh).
  Patches `data.DataSource.train_iterator`, which every source inherits.
  """
  original = data.DataSource.train_iterator

  def train_iterator(self, local_batch_size, start_step=0, process_index=None,
                     process_count=None):
    del process_index, process_count
    if local_batch_size % n:
      raise ValueError(f'batch {local_batch_size} does not split over {n}')
    parts = [original(self, local_batch_size // n, start_step, p, n)
             for p in range(n)]
    while True:
      batches = [next(it) for it in parts]
      yield {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

  data.DataSource.train_iterator = train_iterator


def local_copy(x: jax.Array) -> np.ndarray:
  """This process's copy of a replicated global array."""
  if not x.is_fully_replicated:
    raise ValueError(f'expected a replicated array, got {x.sharding}')
  return np.asarray(x.addressable_data(0))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--out', required=True, help='.npz of the final state')
  parser.add_argument('--num_processes', type=int, default=1)
  parser.add_argument('--process_id', type=int, default=0)
  parser.add_argument('--port', type=int, default=0)
  parser.add_argument('--emulate_processes', type=int, default=1)
  args = parser.parse_args()
  config = tiny_config(args)
  if args.emulate_processes > 1:
    emulate_processes(args.emulate_processes)

  record = train.train_and_evaluate(config, args.workdir)
  assert record.get('final'), record

  # Restore the last checkpoint (every process takes part) into an abstract
  # template of the same structure, replicated (nothing is compiled).
  mesh = parallel.make_mesh(config.train.num_devices)
  info = data.get_info(config)
  template = train.build(config, mesh, num_classes=info.num_classes,
                         total_steps=NUM_STEPS,
                         steps_per_epoch=1).abstract_state()
  state = checkpoint.restore_for_evaluation(args.workdir, template)
  flat, _ = jax.tree.flatten_with_path(state)
  arrays = {jax.tree_util.keystr(path): local_copy(x) for path, x in flat}
  np.savez(args.out, process_count=jax.process_count(),
           device_count=jax.device_count(),
           local_device_count=jax.local_device_count(), **arrays)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('simclr_jax multihost worker done')
  print(f'worker {jax.process_index()}/{jax.process_count()}: wrote '
        f'{args.out}', flush=True)


if __name__ == '__main__':
  main()
