r"""ResNet-18's convolutions one by one, ours (XLA CPU) beside PyTorch's; prints JSON.

    bash ../shared/peers/setup_lightly.sh        # once: the peer's PyTorch
    python bench/conv_layers.py                  # 2 rounds, batch 256
    python bench/conv_layers.py --rounds=3 --layers=s3_conv,s4_conv
    python bench/conv_layers.py --quick          # smoke run

Where the train step's time goes, layer by layer, against the peer's: each
distinct convolution of ResNet-18 with the CIFAR stem at 32 px (the step of
bench/cpu_speed.py; batch 256 = two views of 128), timed three ways, each
alone: the forward pass (`fwd`), the input gradient (`dgrad`) and the weight
gradient (`wgrad`).

Ours: `simclr_jax.models.conv` with the gradient forms the CPU train step
uses (`conv_function('border')`: stored operands, sub-pixel strided forms,
border forms of the 3x3 convs of 8 px and less; `--gradients` picks another),
jitted, under the XLA flags `train_and_evaluate` sets on CPU
(`parallel.setup_cpu_devices(1)`) and glibc's huge-page malloc (as main.py).
A pass is one jitted function of stored arrays: `fwd` the convolution,
`dgrad` and `wgrad` one cotangent of `jax.vjp`.

The peer: PyTorch (oneDNN) in lightly's environment, NCHW as lightly's
ResNet runs, `conv2d` and `aten.convolution_backward` with one output
each, torch threads = os.cpu_count(), no gradient tape.

Ours and the peer's run in alternating fresh processes (ours, peer, ours,
peer, ...); each pass's score is its best median over the rounds, so a change
of the shared machine's load hits both alike. `ratio` = peer ms / our ms (> 1:
ours faster); `step_ms` weights each layer by how often ResNet-18 has it
(without the stem's input gradient, which no train step computes).
The JSON names the CPU model (`cpu_model`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# name -> (input side, in channels, out channels, kernel, stride, count in
# ResNet-18 with the CIFAR stem at 32 px). Padding: google's fixed symmetric
# padding ((k - 1) // 2 before), which is PyTorch's padding=k // 2 here.
LAYERS = {
    'stem': (32, 3, 64, 3, 1, 1),
    's1_conv': (32, 64, 64, 3, 1, 4),
    's1_short': (32, 64, 64, 1, 1, 1),
    's2_down': (32, 64, 128, 3, 2, 1),
    's2_short': (32, 64, 128, 1, 2, 1),
    's2_conv': (16, 128, 128, 3, 1, 3),
    's3_down': (16, 128, 256, 3, 2, 1),
    's3_short': (16, 128, 256, 1, 2, 1),
    's3_conv': (8, 256, 256, 3, 1, 3),
    's4_down': (8, 256, 512, 3, 2, 1),
    's4_short': (8, 256, 512, 1, 2, 1),
    's4_conv': (4, 512, 512, 3, 1, 3),
}
PASSES = ('fwd', 'dgrad', 'wgrad')


def median_ms(fn, reps: int) -> float:
  """Median ms of `reps` calls of `fn` after one warm-up call."""
  fn()  # Compile / warm up.
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def jax_worker(names: list[str], batch: int, reps: int,
               ynnpack_convs: bool = False,
               gradients: str = 'border') -> dict:
  """Median ms of each pass of each layer in `names`, ours."""
  sys.path.insert(0, os.path.dirname(HERE))
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.setup_cpu_devices(1, ynnpack_convs)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from simclr_jax.models import conv as conv_lib  # pylint: disable=g-import-not-at-top

  conv = conv_lib.conv_function(gradients) or jax.lax.conv_general_dilated
  rng = np.random.default_rng(0)
  out = {}
  for name in names:
    side, cin, cout, k, s, _ = LAYERS[name]
    before = (k - 1) // 2
    pad = ((before, k - 1 - before),) * 2
    fwd = lambda x, w, s=s, pad=pad: conv(x, w, (s, s), pad,  # pylint: disable=g-long-lambda
                                          dimension_numbers=('NHWC', 'HWIO',
                                                             'NHWC'))
    x = jax.numpy.asarray(rng.standard_normal((batch, side, side, cin),
                                              np.float32))
    w = jax.numpy.asarray(rng.standard_normal((k, k, cin, cout), np.float32))
    y = jax.eval_shape(fwd, x, w)
    g = jax.numpy.asarray(rng.standard_normal(y.shape, np.float32))
    fns = {
        'fwd': jax.jit(fwd),
        'dgrad': jax.jit(lambda x, w, g, f=fwd: jax.vjp(
            lambda x: f(x, w), x)[1](g)[0]),
        'wgrad': jax.jit(lambda x, w, g, f=fwd: jax.vjp(
            lambda w: f(x, w), w)[1](g)[0]),
    }
    args = {'fwd': (x, w), 'dgrad': (x, w, g), 'wgrad': (x, w, g)}
    out[name] = {p: round(median_ms(
        lambda p=p: jax.block_until_ready(fns[p](*args[p])), reps), 2)
                 for p in PASSES}
  return out


def torch_worker(names: list[str], batch: int, reps: int) -> dict:
  """Median ms of each pass of each layer in `names`, PyTorch's."""
  import torch  # pylint: disable=g-import-not-at-top,import-error
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  aten_bwd = torch.ops.aten.convolution_backward
  out = {}
  for name in names:
    side, cin, cout, k, s, _ = LAYERS[name]
    x = torch.randn(batch, cin, side, side)
    w = torch.randn(cout, cin, k, k)
    with torch.no_grad():
      y = torch.nn.functional.conv2d(x, w, stride=s, padding=k // 2)
      g = torch.randn(y.shape)
      bwd = lambda mask, x=x, w=w, g=g, s=s, k=k: aten_bwd(  # pylint: disable=g-long-lambda
          g, x, w, None, [s, s], [k // 2, k // 2], [1, 1], False, [0, 0], 1,
          mask)
      fns = {'fwd': lambda x=x, w=w, s=s, k=k: torch.nn.functional.conv2d(
                 x, w, stride=s, padding=k // 2),
             'dgrad': lambda bwd=bwd: bwd([True, False, False]),
             'wgrad': lambda bwd=bwd: bwd([False, True, False])}
      out[name] = {p: round(median_ms(fns[p], reps), 2) for p in PASSES}
  out['_torch'] = torch.__version__
  return out


def step_time_ms(best: dict, names: list[str]) -> float:
  """The passes of `names` as a train step runs them: each layer times its
  count in ResNet-18, and no input gradient for the stem (the images need
  none; neither step computes it)."""
  return round(sum(LAYERS[n][5] * sum(ms for ps, ms in best[n].items()
                                      if not (n == 'stem' and ps == 'dgrad'))
                   for n in names), 1)


def _jax_version() -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  return metadata.version('jax')


def _run(cmd: list[str], env: dict) -> dict:
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        check=False)
  if proc.returncode:
    return {'error': proc.stderr.strip().splitlines()[-3:]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--layers', default=','.join(LAYERS))
  p.add_argument('--batch', type=int, default=256)
  p.add_argument('--reps', type=int, default=5)
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--ynnpack_convs', action='store_true',
                 help="ours with jaxlib's YNNPACK convolutions "
                      '(train.cpu_ynnpack_convs) instead of XLA\'s own')
  p.add_argument('--gradients', default='border',
                 choices=('xla', 'stored', 'strided', 'border'),
                 help='ours with these models/conv.py gradient forms (default: '
                      "the CPU train step's)")
  p.add_argument('--quick', action='store_true',
                 help='smoke run: the two smallest layers, batch 16, 1 round')
  p.add_argument('--worker', choices=('jax', 'torch'), default=None,
                 help=argparse.SUPPRESS)
  p.add_argument('--peer_python', default='/tmp/peers/torchvenv/bin/python',
                 help="python of lightly's environment (PyTorch)")
  args = p.parse_args()
  if args.quick:
    args.layers, args.batch, args.reps, args.rounds = (
        's4_short,s3_short', 16, 1, 1)
  names = [n.strip() for n in args.layers.split(',') if n.strip()]
  unknown = [n for n in names if n not in LAYERS]
  if unknown:
    p.error(f'unknown layers {unknown}; known: {",".join(LAYERS)}')
  if args.batch < 1 or args.reps < 1 or args.rounds < 1:
    p.error('--batch, --reps and --rounds must be positive')
  if args.worker:
    if args.worker == 'jax':
      print(json.dumps(jax_worker(names, args.batch, args.reps,
                                  args.ynnpack_convs, args.gradients)))
    else:
      print(json.dumps(torch_worker(names, args.batch, args.reps)))
    return

  sys.path.insert(0, os.path.dirname(HERE))
  from simclr_jax import hostmem  # pylint: disable=g-import-not-at-top
  import cpu_speed  # pylint: disable=g-import-not-at-top
  base = [__file__, f'--layers={",".join(names)}', f'--batch={args.batch}',
          f'--reps={args.reps}', f'--gradients={args.gradients}'] + (
              ['--ynnpack_convs'] if args.ynnpack_convs else [])
  runners = {'ours': ([sys.executable] + base + ['--worker=jax'],
                      hostmem.environ_with_huge_pages(os.environ))}
  if os.path.exists(args.peer_python):
    runners['peer'] = ([args.peer_python] + base + ['--worker=torch'],
                       cpu_speed.small_pages_env(os.environ))
  else:
    print(f'conv_layers: no peer python at {args.peer_python} (bash '
          '../shared/peers/setup_lightly.sh builds it): ours only',
          file=sys.stderr)
  runs = {who: [] for who in runners}
  for r in range(args.rounds):
    for who, (cmd, env) in runners.items():
      print(f'conv_layers: round {r + 1}/{args.rounds}, {who}', file=sys.stderr,
            flush=True)
      runs[who].append({'load_before': [round(v, 2) for v in os.getloadavg()],
                        **_run(cmd, env)})
  best = {}
  for who, rs in runs.items():
    ok = [r for r in rs if 'error' not in r]
    best[who] = {n: {ps: min(r[n][ps] for r in ok) for ps in PASSES}
                 for n in names} if ok else None
  layers = {}
  for n in names:
    row = {'shape': dict(zip(('side', 'cin', 'cout', 'k', 'stride', 'count'),
                             LAYERS[n]))}
    for who in best:
      if best[who]:
        row[who] = best[who][n]
    if best.get('ours') and best.get('peer'):
      row['ratio'] = {ps: round(best['peer'][n][ps] / best['ours'][n][ps], 3)
                      for ps in PASSES}
    layers[n] = row
  step_ms = {who: step_time_ms(b, names) for who, b in best.items() if b}
  print(json.dumps({
      'bench': 'conv_layers', 'cpu_model': hostmem.cpu_model(),
      'cpu_count': os.cpu_count(), 'jax': _jax_version(),
      'ynnpack_convs': args.ynnpack_convs, 'gradients': args.gradients,
      'batch': args.batch, 'reps': args.reps,
      'rounds': args.rounds, 'score': 'best median ms over rounds',
      'layers': layers, 'step_ms': step_ms,
      'step_ratio': (round(step_ms['peer'] / step_ms['ours'], 3)
                     if len(step_ms) == 2 else None),
      'runs': runs}, indent=1))


if __name__ == '__main__':
  main()
