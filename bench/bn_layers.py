r"""BatchNorm + ReLU, forward and backward, ours against flax's; prints JSON.

    python bench/bn_layers.py                 # ResNet-18's four stage shapes, batch 256
    python bench/bn_layers.py --quick         # smoke run

One training BatchNorm of each ResNet-18 stage at 32 px input (batch 256 =
two views of 128; (256, 32, 32, 64) ... (256, 4, 4, 512)) followed by a
ReLU, timed as one jitted function of stored arrays that returns the
gradients of x, scale and bias for a given output cotangent (the running
averages update too). `flax`: `nn.BatchNorm(use_fast_variance=False)`
differentiated by autodiff (the model's layer before 2026-12-08); `ours`:
`simclr_jax.models.batchnorm.BatchNorm` (one fused VJP). Both compiled in
one process under the CPU train step's XLA flags, timed alternately (flax,
ours, flax, ours, ...); the score is each one's best median over rounds.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from conv_layers import median_ms  # pylint: disable=g-import-not-at-top,wrong-import-position
from simclr_jax import hostmem, parallel  # pylint: disable=g-import-not-at-top,wrong-import-position

SHAPES = {'s1': (32, 64), 's2': (16, 128), 's3': (8, 256), 's4': (4, 512)}


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--batch', type=int, default=256)
  p.add_argument('--reps', type=int, default=5)
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--quick', action='store_true',
                 help='smoke run: batch 8, 1 rep, 1 round')
  args = p.parse_args()
  if args.quick:
    args.batch, args.reps, args.rounds = 8, 1, 1
  if min(args.batch, args.reps, args.rounds) < 1:
    p.error('--batch, --reps and --rounds must be positive')
  parallel.setup_cpu_devices(1)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import batchnorm  # pylint: disable=g-import-not-at-top

  def step(module):
    def f(variables, x, g):
      def forward(x, params):
        y, new = module.apply({'params': params,
                               'batch_stats': variables['batch_stats']},
                              x, mutable=['batch_stats'])
        return jax.nn.relu(y), new
      _, vjp, new = jax.vjp(forward, x, variables['params'], has_aux=True)
      return vjp(g), new
    return jax.jit(f)

  kinds = {
      'flax': step(nn.BatchNorm(use_running_average=False, momentum=0.9,
                                epsilon=1e-5, use_fast_variance=False)),
      'ours': step(batchnorm.BatchNorm(use_running_average=False,
                                       momentum=0.9, epsilon=1e-5)),
  }
  layers = {}
  for name, (side, c) in SHAPES.items():
    k = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(k[0], (args.batch, side, side, c)) + 0.5
    g = jax.random.normal(k[1], x.shape)
    variables = {'params': {'scale': jnp.ones((c,)), 'bias': jnp.zeros((c,))},
                 'batch_stats': {'mean': jnp.zeros((c,)),
                                 'var': jnp.ones((c,))}}
    medians = {kind: [] for kind in kinds}
    for _ in range(args.rounds):
      for kind, fn in kinds.items():
        medians[kind].append(median_ms(
            lambda fn=fn: jax.block_until_ready(fn(variables, x, g)),
            args.reps))
    best = {kind: round(min(m), 2) for kind, m in medians.items()}
    layers[name] = {'shape': [args.batch, side, side, c], 'ms': best,
                    'ratio': round(best['flax'] / best['ours'], 3)}
    print(f'bn_layers: {name} {best}', file=sys.stderr, flush=True)
  print(json.dumps({
      'bench': 'bn_layers', 'cpu_model': hostmem.cpu_model(),
      'cpu_count': os.cpu_count(), 'batch': args.batch, 'reps': args.reps,
      'rounds': args.rounds, 'score': 'best median ms over rounds',
      'what': 'BatchNorm (train) + ReLU, forward and backward',
      'layers': layers}, indent=1))


if __name__ == '__main__':
  main()
