r"""Two settings of the CPU train step, step for step in ONE process; prints JSON.

    python bench/step_ab.py                                  # default vs no_strided_forms
    python bench/step_ab.py --a=default --b=no_materialize --steps=10
    python bench/step_ab.py --b=no_border_forms --steps=16
    python bench/step_ab.py --quick                          # smoke run, a minute or two

On a shared machine the speed drifts between runs by more than the
difference between two conv-gradient forms. Here both programs are compiled
in one process and their steps alternate (A B, B A, A B, ...), so each pair
of steps sees the same load; `paired_ratios` are B's step time over A's,
pair by pair, and `ratio_median` their median (> 1: A is faster).

Settings (the model is bench/train_bench.py's case r18_32: ResNet-18, CIFAR
stem, 32 px, LARS, global BatchNorm, augmentation on the device, 1 XLA CPU
device as `train_and_evaluate` runs it on CPU):
  default           what train_and_evaluate compiles on CPU
  no_border_forms   XLA's padded kernels for the 3x3 convs of 8 px and less
                    (models/conv.py item 3, train.cpu_border_forms=False)
  no_strided_forms  XLA's own gradients for strided convs (models/conv.py
                    train.cpu_strided_gradient_forms=False), stored operands kept
  no_materialize    plain lax convolutions (train.cpu_materialize_conv_inputs
                    = False)

Both start from the same initial state and batch; each keeps its own state,
so `final_loss` shows how far float rounding has moved them apart.
"""

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from simclr_jax import parallel  # pylint: disable=g-import-not-at-top

SETTINGS = ('default', 'no_border_forms', 'no_strided_forms', 'no_materialize')


def _parse(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--a', default='default', choices=SETTINGS)
  p.add_argument('--b', default='no_strided_forms', choices=SETTINGS)
  p.add_argument('--batch', type=int, default=128, help='global batch')
  p.add_argument('--steps', type=int, default=8,
                 help='timed steps of each (after one untimed step each)')
  p.add_argument('--cpu_devices', type=int, default=1)
  p.add_argument('--quick', action='store_true',
                 help='base width 8, batch 16, 2 steps: a smoke run whose '
                      'times mean little')
  args = p.parse_args(argv)
  if args.a == args.b:
    p.error('--a and --b are the same setting')
  if args.batch < 1 or args.steps < 1 or args.cpu_devices < 1:
    p.error('--batch, --steps and --cpu_devices must be positive')
  if args.quick:
    args.batch, args.steps = min(args.batch, 16), min(args.steps, 2)
  if args.batch % args.cpu_devices:
    p.error(f'--batch {args.batch} is not divisible by --cpu_devices '
            f'{args.cpu_devices}')
  return args


def main() -> None:
  args = _parse()
  parallel.setup_cpu_devices(args.cpu_devices)
  import jax  # pylint: disable=g-import-not-at-top
  import train_bench  # pylint: disable=g-import-not-at-top

  bench_args = train_bench._parse_args(  # pylint: disable=protected-access
      ['--cases=r18_32', '--dtype=float32', f'--batch_r18={args.batch}'] +
      (['--quick'] if args.quick else []))
  mesh = parallel.make_mesh()
  progs = {}
  for name in (args.a, args.b):
    def overrides(config, name=name):
      config.train.cpu_strided_gradient_forms = name != 'no_strided_forms'
      config.train.cpu_materialize_conv_inputs = name != 'no_materialize'
      config.train.cpu_border_forms = name != 'no_border_forms'
    prep = train_bench.prepare_case('r18_32', bench_args, mesh,
                                    total_steps=2 * args.steps + 4,
                                    num_batches=1, overrides=overrides)
    progs[name] = {'step': prep.compiled, 'state': prep.state,
                   'data': prep.batches[0], 'key': prep.train_key,
                   'times': [], 'loss': None}

  for i in range(args.steps + 1):
    order = (args.a, args.b) if i % 2 else (args.b, args.a)
    for name in order:
      p = progs[name]
      t0 = time.perf_counter()
      p['state'], metrics = p['step'](p['state'], p['data']['image'],
                                      p['data']['label'], p['key'])
      jax.block_until_ready((p['state'], metrics))
      if i:  # The first step of each is untimed (warm-up).
        p['times'].append(time.perf_counter() - t0)
      p['loss'] = float(metrics['loss'])
  ta, tb = progs[args.a]['times'], progs[args.b]['times']
  ratios = [b / a for a, b in zip(ta, tb)]
  print(json.dumps({
      'bench': 'step_ab', 'quick': args.quick,
      'a': args.a, 'b': args.b, 'global_batch': args.batch,
      'cpu_devices': args.cpu_devices, 'steps': args.steps,
      'cpu_count': os.cpu_count(),
      'results': {
          name: {'step_s_median': statistics.median(p['times']),
                 'step_s_min': min(p['times']),
                 'images_per_sec': args.batch / statistics.median(p['times']),
                 'final_loss': p['loss']}
          for name, p in progs.items()},
      'paired_ratios': [round(r, 3) for r in ratios],
      'ratio_median': statistics.median(ratios),
  }, indent=1))


if __name__ == '__main__':
  main()
