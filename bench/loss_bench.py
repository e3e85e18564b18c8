"""Time and per-device memory of NT-Xent forward + backward; prints one JSON object.

    python bench/loss_bench.py            # global batches 256 .. 16384, d = 128
    python bench/loss_bench.py --quick    # 256 only, a few seconds

Three sweeps over the global batch N (pairs), each row one jitted
`value_and_grad` of the loss w.r.t. both views:

  sharded_fixed_devices   shard_map over 8 devices; each holds n = N / 8 pairs
                          and a 2n x 2N block of logits: quadratic in N, 1/8
                          of the single-device matrix.
  sharded_fixed_per_device  n = 128 pairs per device on N / 128 devices
                          (compiled, not run, up to 128 virtual devices): the
                          per-device block 2n x 2N grows linearly in N.
  single_device_full      axis_name=None on one device: the full 2N x 2N
                          logits, the baseline.

Memory is the compiled executable's `memory_analysis()` per device (temp +
argument + output bytes; nothing is allocated to measure it). Time is the
median of a few runs, measured in increasing N until one run takes longer
than --time_budget_s; larger sizes report memory only (fwd_bwd_ms null).
"""

import os
import sys

# Virtual CPU devices must exist before JAX starts. Compiling (not running)
# the fixed-per-device sweep needs N / 128 devices, up to 128.
_MAX_DEVICES = 128
if '--xla_force_host_platform_device_count' not in os.environ.get(
    'XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') +
      f' --xla_force_host_platform_device_count={_MAX_DEVICES}').strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import argparse  # pylint: disable=g-import-not-at-top,g-bad-import-order
import functools
import json
import math
import platform
import time

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from simclr_jax import losses

DIM = 128
TEMPERATURE = 0.1
FIXED_DEVICES = 8
PER_DEVICE = 128


def _memory(compiled) -> dict[str, int]:
  ma = compiled.memory_analysis()
  out = {
      'temp_bytes': int(ma.temp_size_in_bytes),
      'argument_bytes': int(ma.argument_size_in_bytes),
      'output_bytes': int(ma.output_size_in_bytes),
  }
  out['peak_bytes_per_device'] = sum(out.values())
  return out


def _step(axis_name):
  return jax.value_and_grad(
      functools.partial(losses.nt_xent, temperature=TEMPERATURE,
                        axis_name=axis_name), argnums=(0, 1))


def _compile(global_batch: int, num_devices: int | None):
  """Compiled fwd+bwd and its (z_a, z_b) inputs. None devices: unsharded."""
  rng = np.random.default_rng(0)
  z_a = rng.normal(size=(global_batch, DIM)).astype(np.float32)
  z_b = rng.normal(size=(global_batch, DIM)).astype(np.float32)
  if num_devices is None:
    fn = jax.jit(_step(None))
    args = (jax.device_put(z_a, jax.devices()[0]),
            jax.device_put(z_b, jax.devices()[0]))
  else:
    mesh = jax.make_mesh((num_devices,), ('batch',),
                         axis_types=(jax.sharding.AxisType.Explicit,),
                         devices=jax.devices()[:num_devices])
    fn = jax.jit(jax.shard_map(
        _step('batch'), mesh=mesh, in_specs=(P('batch'), P('batch')),
        out_specs=(P(), (P('batch'), P('batch')))))
    sharding = NamedSharding(mesh, P('batch'))
    args = (jax.device_put(z_a, sharding), jax.device_put(z_b, sharding))
  return fn.lower(*args).compile(), args


def _time_ms(compiled, args, repeats: int) -> tuple[float, float]:
  """(median ms, seconds of the first run) after one warm-up run."""
  start = time.perf_counter()
  jax.block_until_ready(compiled(*args))
  first = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times)), first


def _growth(rows, sweep):
  """Exponent e of memory ~ N^e between consecutive sizes of a sweep."""
  pts = [(r['global_batch'], r['peak_bytes_per_device'])
         for r in rows if r['sweep'] == sweep]
  return [round(math.log(m1 / m0) / math.log(n1 / n0), 3)
          for (n0, m0), (n1, m1) in zip(pts, pts[1:])]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--quick', action='store_true',
                      help='Only the global batch 256.')
  parser.add_argument('--time_budget_s', type=float, default=5.0,
                      help='Stop timing a sweep after a run this long.')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--max_timed_bytes', type=float, default=2e9,
                      help='Skip timing when devices would hold more in all.')
  flags = parser.parse_args()
  batches = [256] if flags.quick else [256, 1024, 4096, 16384]
  if len(jax.devices()) < FIXED_DEVICES:
    raise SystemExit(f'needs {FIXED_DEVICES} devices, have {jax.devices()}')

  rows = []
  sweeps = [
      ('sharded_fixed_devices', lambda b: FIXED_DEVICES, True),
      ('sharded_fixed_per_device', lambda b: b // PER_DEVICE, False),
      ('single_device_full', lambda b: None, True),
  ]
  for sweep, devices_of, timed in sweeps:
    keep_timing = timed
    for b in batches:
      k = devices_of(b)
      if k is not None and k > len(jax.devices()):
        continue
      start = time.perf_counter()
      compiled, args = _compile(b, k)
      compile_s = time.perf_counter() - start
      n = b // (k or 1)
      row = {
          'sweep': sweep,
          'global_batch': b,
          'devices': k or 1,
          'per_device_batch': n,
          'logits_block': [2 * n, 2 * b],
          'logits_block_bytes': 4 * (2 * n) * (2 * b),
          **_memory(compiled),
          'compile_s': round(compile_s, 3),
          'fwd_bwd_ms': None,
      }
      total_bytes = row['peak_bytes_per_device'] * (k or 1)
      if keep_timing and total_bytes <= flags.max_timed_bytes:
        ms, first_s = _time_ms(compiled, args, flags.repeats)
        row['fwd_bwd_ms'] = round(ms, 3)
        keep_timing = first_s <= flags.time_budget_s
      else:
        keep_timing = False
      rows.append(row)
      del compiled, args

  result = {
      'bench': 'nt_xent forward+backward (value_and_grad w.r.t. z_a, z_b)',
      'backend': jax.default_backend(),
      'cpu': platform.processor() or platform.machine(),
      'cpu_count': os.cpu_count(),
      'jax': jax.__version__,
      'dim': DIM,
      'temperature': TEMPERATURE,
      'rows': rows,
      'memory_growth_exponent': {
          s: _growth(rows, s) for s, _, _ in sweeps},
  }
  full = {r['global_batch']: r for r in rows
          if r['sweep'] == 'single_device_full'}
  result['full_over_sharded8_memory'] = {
      str(r['global_batch']): round(
          full[r['global_batch']]['peak_bytes_per_device'] /
          r['peak_bytes_per_device'], 2)
      for r in rows
      if r['sweep'] == 'sharded_fixed_devices' and r['global_batch'] in full}
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
