r"""Host memory of linear evaluation's streaming path at N and 10N examples.

    python bench/eval_memory_bench.py                 # 20,000 and 200,000 rows
    python bench/eval_memory_bench.py --rows 5000 --dim 128 --quick

For each size, in a fresh process: writes a features file of `rows` x `dim`
float32 (and labels) block by block with `features.RowWriter`, as
`evaluate.probe.cache_features` does; computes the streamed statistics; then
trains the linear head for `--steps` steps reading mini-batches from disk
(`probe._feature_file_batches`) with the real sharded step
(`evaluate.linear.make_train_step(inputs='features')`) on 8 CPU devices.
Prints one JSON object with the peak resident memory (`ru_maxrss`) of each
process and the ratio: at 10x the examples (and 10x the file size) the peak
stays the same, because nothing holds more than one batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(rows: int, dim: int, steps: int, batch: int) -> dict:
  """Runs the streaming path once; returns its measurements."""
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  from simclr_jax.evaluate import features  # pylint: disable=g-import-not-at-top
  from simclr_jax.evaluate import linear  # pylint: disable=g-import-not-at-top
  from simclr_jax.evaluate import probe  # pylint: disable=g-import-not-at-top

  folder = tempfile.mkdtemp()
  path_h, path_y = (os.path.join(folder, n) for n in ('h.npy', 'y.npy'))
  rng = np.random.default_rng(0)
  t0 = time.perf_counter()
  out_h = features.RowWriter(path_h, (rows, dim), np.float32)
  out_y = features.RowWriter(path_y, (rows,), np.int32)
  for start in range(0, rows, 4096):
    n = min(4096, rows - start)
    out_h.append(rng.normal(size=(n, dim)).astype(np.float32))
    out_y.append(rng.integers(0, 10, n).astype(np.int32))
  out_y.close()
  out_h.close()
  write_s = time.perf_counter() - t0
  stats = probe._feature_stats(path_h)  # pylint: disable=protected-access
  mesh = parallel.make_mesh(0)
  tx, _ = linear.create_optimizer(0.1, steps)
  state = linear.create_state(tx, dim, 10, mesh, stats)
  step = linear.make_train_step(None, tx, mesh, inputs='features')
  batches = probe._feature_file_batches(  # pylint: disable=protected-access
      path_h, path_y, 0, batch, 0, max(rows // batch, 1))
  key = parallel.replicate(jax.random.key(0), mesh)
  t0 = time.perf_counter()
  for _ in range(steps):
    b = parallel.host_to_global(next(batches), mesh)
    state, metrics = step(state, None, b['image'], b['label'], key)
  jax.block_until_ready(metrics)
  train_s = time.perf_counter() - t0
  file_mb = os.path.getsize(path_h) / 2**20
  for p in (path_h, path_y):
    os.remove(p)
  return {'rows': rows, 'dim': dim, 'feature_file_mb': round(file_mb, 1),
          'peak_rss_mb': round(resource.getrusage(
              resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
          'write_s': round(write_s, 2), 'train_s': round(train_s, 2),
          'steps': steps, 'batch': batch}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rows', type=int, default=20_000)
  parser.add_argument('--dim', type=int, default=512)
  parser.add_argument('--steps', type=int, default=100)
  parser.add_argument('--batch', type=int, default=512)
  parser.add_argument('--quick', action='store_true', help='20 steps')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  steps = 20 if args.quick else args.steps
  if args.child:
    print(json.dumps(child(args.rows, args.dim, steps, args.batch)))
    return
  env = dict(os.environ)
  env.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  env.setdefault('JAX_PLATFORMS', 'cpu')
  runs = []
  for rows in (args.rows, 10 * args.rows):
    out = subprocess.run(
        [sys.executable, __file__, '--child', f'--rows={rows}',
         f'--dim={args.dim}', f'--steps={steps}', f'--batch={args.batch}'],
        env=env, capture_output=True, text=True, check=True)
    runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
  print(json.dumps({
      'what': 'peak host memory of the linear-eval feature path, N vs 10N',
      'runs': runs,
      'peak_rss_ratio_10x': round(runs[1]['peak_rss_mb'] /
                                  runs[0]['peak_rss_mb'], 3),
      'feature_file_ratio_10x': round(runs[1]['feature_file_mb'] /
                                      runs[0]['feature_file_mb'], 1),
  }, indent=1))


if __name__ == '__main__':
  main()
