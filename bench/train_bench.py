r"""Throughput of the SimCLR train step on synthetic data; prints one JSON object.

    python bench/train_bench.py                 # ResNet-18/32 px and ResNet-50/224 px
    python bench/train_bench.py --quick         # tiny widths and batches, ~40 s
    python bench/train_bench.py --cases=r18_32 --batch_r18=1024 --dtype=bfloat16
    python bench/train_bench.py --quick --compare_torch   # + a PyTorch step

Cases (each the train step of `simclr_jax.train`, built exactly as
`train_and_evaluate` builds it, by `train.build`):

  r18_32   ResNet-18, CIFAR stem, 32 px, blur off, 10-class online probe; the
           batch is whole uint8 images (B, 32, 32, 3) and the device does every
           augmentation, crop included (as for CIFAR-10).
  r50_224  ResNet-50, ImageNet stem, 224 px, blur on, 1000-class probe; the
           batch is host-cropped uint8 views (B, 2, 224, 224, 3) and the device
           does flip, colour, grayscale and blur (as for ImageNet).

Both use LARS, NT-Xent over the all-gathered global batch and global
BatchNorm over every device. Random uint8 batches are placed with
`parallel.host_to_global` before timing: the numbers are the device step
alone, without the input pipeline. An image (example) gives two views: the
network sees 2B images per step (`views_per_sec`).

Times: `train_step.lower(...).compile()` is timed on its own
(`compile_s`); then `--warmup` steps, then `--steps` steps each timed with
`block_until_ready` (mean and median). FLOPs come from XLA's cost analysis
of the compiled step: the step is one `jax.shard_map` program, so the count
is per device (`flops_per_step_per_device`); `flops_per_step` multiplies by
the device count. `mfu` = per-device FLOP/s / per-device peak (--peak_tflops,
or bench/accel.py's table for known accelerators: dense bf16, or TF32 when
the compute dtype is float32); null on CPU. --fit_batch halves a case's batch
until its step fits the device's memory (the largest that fits, from the
given batch down).

Does not import TensorFlow (it runs where only jax, flax, optax, chex and
orbax are installed). On CPU it splits the host into --cpu_devices XLA
devices unless XLA_FLAGS already sets a count. --quick (base width 8, batches
16 and 8, 3 steps) also sets XLA_FLAGS=--xla_backend_optimization_level=0 so
it compiles in seconds: a smoke check whose times mean little.
"""

import argparse
import dataclasses
import os
import sys


def _parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      description='Throughput of the simclr_jax train step (JSON on stdout).')
  p.add_argument('--quick', action='store_true',
                 help='tiny widths and batches: a smoke check in seconds')
  p.add_argument('--cases', default='r18_32,r50_224',
                 help='comma-separated: r18_32, r50_224')
  p.add_argument('--batch_r18', type=int, default=512,
                 help='global batch (examples) of r18_32')
  p.add_argument('--batch_r50', type=int, default=256,
                 help='global batch (examples) of r50_224')
  p.add_argument('--base_width', type=int, default=0,
                 help='ResNet base width (0: 64, or 8 with --quick)')
  p.add_argument('--dtype', default='auto',
                 choices=('auto', 'float32', 'bfloat16'),
                 help='compute dtype; auto = bfloat16 on GPU/TPU, float32 on CPU')
  p.add_argument('--steps', type=int, default=0,
                 help='timed steps (0: 20, or 3 with --quick)')
  p.add_argument('--warmup', type=int, default=-1,
                 help='untimed steps first (-1: 2, or 1 with --quick)')
  p.add_argument('--fit_batch', action='store_true',
                 help='on running out of device memory (XLA '
                      'RESOURCE_EXHAUSTED, or a compiled step larger than the '
                      "device's limit) halve the case's batch and try again; "
                      'the record lists the batches tried')
  p.add_argument('--num_devices', type=int, default=0,
                 help='devices of the mesh (0: all)')
  p.add_argument('--peak_tflops', type=float, default=None,
                 help='peak dense TFLOP/s of ONE device for the MFU '
                      '(default: built-in for known GPUs/TPUs, none on CPU)')
  p.add_argument('--cpu_devices', type=int, default=-1,
                 help='XLA CPU devices when XLA_FLAGS does not set a count '
                      '(-1: config default train.cpu_devices, as '
                      'train_and_evaluate; 0: leave XLA alone)')
  p.add_argument('--cpu_ynnpack_convs', action='store_true',
                 help="keep jaxlib's YNNPACK convolutions on CPU (config "
                      'train.cpu_ynnpack_convs; default: XLA\'s own)')
  p.add_argument('--no_materialize', action='store_true',
                 help='train.cpu_materialize_conv_inputs=False: let XLA CPU '
                      'recompute BatchNorm/ReLU inside the transposes of the '
                      'conv weight gradients (the default before)')
  p.add_argument('--no_strided_forms', action='store_true',
                 help='with the stored operands, but XLA\'s own input '
                      'gradient of strided convs and weight gradient of '
                      'strided 1x1 convs (models/conv.py '
                      'train.cpu_strided_gradient_forms=False; the default before)')
  p.add_argument('--no_border_forms', action='store_true',
                 help='XLA\'s own padded kernels for the 3x3 convs of 8 px '
                      'and less (models/conv.py item 3; '
                      'train.cpu_border_forms=False; the default before)')
  p.add_argument('--augment_strategy', default='auto',
                 choices=('auto', 'map', 'vmap'),
                 help='config.augment.strategy')
  p.add_argument('--no_augment', action='store_true',
                 help='replace the augmentation by a uint8->float cast of the '
                      'centre 32x32 (to time the step without it)')
  p.add_argument('--proj_layers', type=int, default=0,
                 help='model.num_proj_layers (0: config default, 3)')
  p.add_argument('--matmul_rate', action='store_true',
                 help='also time a float32 4096x4096 matmul on the first '
                      'device (best of 5) and report each step\'s FLOP rate '
                      'as a fraction of it: how close a CPU step is to '
                      'compute-bound')
  p.add_argument('--profile_dir', default='',
                 help='also write a jax.profiler trace of 2 steps here')
  p.add_argument('--small_pages', action='store_true',
                 help="keep glibc's default malloc (4 KiB pages) instead of "
                 'restarting with glibc.malloc.hugetlb=1 as main.py does '
                 '(simclr_jax/hostmem.py)')
  p.add_argument('--hlo_stats', action='store_true',
                 help='count convolutions / custom calls in the compiled HLO')
  p.add_argument('--compare_torch', action='store_true',
                 help='also time a plain PyTorch ResNet-18 SimCLR step (r18_32)')
  p.add_argument('--torch_threads', type=int, default=0,
                 help='torch.set_num_threads (0: torch default)')
  args = p.parse_args(argv)
  cases = [c.strip() for c in args.cases.split(',') if c.strip()]
  unknown = sorted(set(cases) - set(CASES))
  if unknown or not cases:
    p.error(f'--cases must name some of {", ".join(CASES)}, got {args.cases!r}')
  args.cases = cases
  for name in ('batch_r18', 'batch_r50', 'base_width', 'steps',
               'num_devices', 'torch_threads', 'proj_layers'):
    if getattr(args, name) < 0:
      p.error(f'--{name} must be >= 0, got {getattr(args, name)}')
  if args.batch_r18 == 0 or args.batch_r50 == 0:
    p.error('--batch_r18 and --batch_r50 must be positive')
  if args.peak_tflops is not None and args.peak_tflops <= 0:
    p.error(f'--peak_tflops must be positive, got {args.peak_tflops}')
  if args.quick:
    args.batch_r18 = min(args.batch_r18, 16)
    args.batch_r50 = min(args.batch_r50, 8)
  args.base_width = args.base_width or (8 if args.quick else 64)
  args.steps = args.steps or (3 if args.quick else 20)
  if args.warmup < 0:
    args.warmup = 1 if args.quick else 2
  if args.cpu_devices < -1:
    p.error(f'--cpu_devices must be >= -1, got {args.cpu_devices}')
  return args


CASES = ('r18_32', 'r50_224')

if __name__ == '__main__':
  ARGS = _parse_args()
  if not ARGS.small_pages:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from simclr_jax import hostmem  # pylint: disable=g-import-not-at-top
    # As main.py: restart once with glibc's huge-page malloc (simclr_jax/hostmem.py).
    hostmem.reexec_with_huge_pages()
  if ARGS.quick and 'xla_backend_optimization_level' not in os.environ.get(
      'XLA_FLAGS', ''):
    # A smoke check: XLA compiles ~3x faster without LLVM optimisations (the
    # step then runs slower; --quick times are not representative).
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               ' --xla_backend_optimization_level=0').strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,g-bad-import-order,wrong-import-position
import gc
import json
import platform
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np

from configs import default
from simclr_jax import hostmem
from simclr_jax import models
from simclr_jax import parallel
from simclr_jax import train
import torch_twin  # bench/torch_twin.py  # pylint: disable=g-bad-import-order
from accel import (device_bytes_limit, device_memory_bytes, hlo_stats,  # bench/accel.py
                   is_out_of_memory, matmul_tflops, mfu, peak_tflops, xla_flops)

if __name__ == '__main__':
  # CPU devices and convolution kernels exactly as train_and_evaluate sets
  # them (before JAX starts its backends; nothing changes on GPU/TPU).
  _count = (default.get_config().train.cpu_devices if ARGS.cpu_devices < 0
            else ARGS.cpu_devices)
  parallel.setup_cpu_devices(_count, ARGS.cpu_ynnpack_convs)

def case_config(case: str, args: argparse.Namespace) -> tuple[Any, int, tuple]:
  """(config, num_classes, per-example batch shape) of one case."""
  config = default.get_config()
  config.model.base_width = args.base_width
  config.model.dtype = args.dtype
  config.optim.warmup_epochs = 0.0
  config.augment.strategy = args.augment_strategy
  config.train.cpu_materialize_conv_inputs = not args.no_materialize
  config.train.cpu_strided_gradient_forms = not args.no_strided_forms
  config.train.cpu_border_forms = not args.no_border_forms
  if args.proj_layers:
    config.model.num_proj_layers = args.proj_layers
  if case == 'r18_32':
    config.image_size = 32
    config.model.depth = 18
    config.model.stem = 'cifar'
    config.augment.blur = False
    config.train.global_batch_size = args.batch_r18
    return config, 10, (32, 32, 3)
  if case == 'r50_224':
    config.image_size = 224
    config.model.depth = 50
    config.model.stem = 'imagenet'
    config.train.global_batch_size = args.batch_r50
    return config, 1000, (2, 224, 224, 3)
  raise ValueError(f'unknown case {case!r}; known: {CASES}')


def _no_augment(size: int) -> None:
  """Replaces augment.two_views by a cast (both views = the centre crop).

  Only for timing the step without augmentation: the model, loss, BN,
  collectives and optimizer are unchanged.
  """
  from simclr_jax import augment  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def two_views(keys, images, config, strategy=None):
    del keys, config, strategy
    if images.ndim == 5:
      a, b = images[:, 0], images[:, 1]
    else:
      a = b = images
    cast = lambda x: x[:, :size, :size].astype(jnp.float32) / 255.0
    return cast(a), cast(b) * 0.5  # Two different arrays, like two views.

  augment.two_views = two_views


def random_batches(batch: int, shape: tuple, num_classes: int,
                   mesh: jax.sharding.Mesh, count: int) -> list[dict]:
  """`count` different random batches (uint8 images (batch,) + shape, int32
  labels), placed on the mesh as the train step takes them; seed 0."""
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(count):
    host = {'image': rng.integers(0, 256, (batch,) + shape, dtype=np.uint8),
            'label': rng.integers(0, num_classes, (batch,)).astype(np.int32)}
    batches.append(parallel.host_to_global(host, mesh))
  return batches


@dataclasses.dataclass
class Prepared:
  """One case built, initialised and compiled, as every bench times it."""
  config: Any
  num_classes: int      # classes of the online probe
  shape: tuple          # per-example shape of a batch's images
  setup: Any            # train.Setup
  state: Any            # the initial TrainState on the mesh
  train_key: jax.Array  # replicated train key
  batches: list[dict]   # random batches on the mesh (see random_batches)
  compiled: Any         # the compiled train step
  init_s: float
  lower_s: float
  compile_s: float


def prepare_case(case: str, args: argparse.Namespace, mesh: jax.sharding.Mesh,
                 *, total_steps: int, num_batches: int = 2,
                 overrides: Callable[[Any], None] | None = None) -> Prepared:
  """Builds `case` with `train.build`, initialises it and compiles its step.

  The one build/lower/compile sequence that train_bench, step_ab and (through
  train_bench) cpu_speed time. `overrides(config)` may change the case's
  config before the build (step_ab's conv-gradient settings).
  """
  config, num_classes, shape = case_config(case, args)
  if overrides is not None:
    overrides(config)
  batch = config.train.global_batch_size
  if batch % mesh.size:
    raise ValueError(f'{case}: global batch {batch} is not divisible by the '
                     f'{mesh.size} devices; change --batch_r18/--batch_r50')
  if getattr(args, 'no_augment', False):
    _no_augment(config.image_size)
  setup = train.build(config, mesh, num_classes=num_classes,
                      total_steps=total_steps, steps_per_epoch=total_steps)
  t0 = time.perf_counter()
  state = setup.init_state()
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  train_key = setup.replicated_train_key()
  batches = random_batches(batch, shape, num_classes, mesh, count=num_batches)
  t0 = time.perf_counter()
  lowered = setup.train_step.lower(state, batches[0]['image'],
                                   batches[0]['label'], train_key)
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  return Prepared(config, num_classes, shape, setup, state, train_key, batches, compiled, init_s,
                  lower_s, compile_s)


BATCH_ARG = {'r18_32': 'batch_r18', 'r50_224': 'batch_r50'}


def fitted_run(case: str, args: argparse.Namespace, mesh: jax.sharding.Mesh,
               peak: float | None) -> dict[str, Any]:
  """`run_case`; with --fit_batch, halving the batch while it runs out of
  device memory (down to one example per device)."""
  trial = argparse.Namespace(**vars(args))
  tried, error, record = [], None, None
  while record is None:
    batch = getattr(trial, BATCH_ARG[case])
    tried.append(batch)
    try:
      record = run_case(case, trial, mesh, peak)
    except Exception as e:  # pylint: disable=broad-except
      half = batch // 2
      if not (args.fit_batch and is_out_of_memory(str(e)) and
              half >= mesh.size and half % mesh.size == 0):
        raise
      error = str(e).splitlines()[0][:300]
      setattr(trial, BATCH_ARG[case], half)
    # Outside the except block: the failed attempt's buffers are released.
    gc.collect()
  if args.fit_batch:
    record['batch_fit'] = {'tried': tried, 'fits': batch, 'last_error': error}
  return record


def _check_fits(compiled: Any, mesh: jax.sharding.Mesh) -> None:
  """Raises an out-of-memory error when XLA's memory analysis of the step
  exceeds what the device allows (before a step runs into it)."""
  need = device_memory_bytes(compiled)
  limit = device_bytes_limit(mesh.devices.flat[0])
  if need and limit and need > limit:
    raise MemoryError(f'RESOURCE_EXHAUSTED: the compiled step needs {need} '
                      f'bytes per device; the device allows {limit}')


def run_case(case: str, args: argparse.Namespace, mesh: jax.sharding.Mesh,
             peak: float | None) -> dict[str, Any]:
  """Compiles and times the train step of one case; returns its JSON record."""
  prep = prepare_case(case, args, mesh,
                      total_steps=args.warmup + args.steps + 1)
  if args.fit_batch:
    _check_fits(prep.compiled, mesh)
  config, model = prep.config, prep.setup.model
  num_classes, shape = prep.num_classes, prep.shape
  batch = config.train.global_batch_size
  state, train_key, batches, compiled = (prep.state, prep.train_key,
                                         prep.batches, prep.compiled)
  init_s, lower_s, compile_s = prep.init_s, prep.lower_s, prep.compile_s

  def one_step(i):
    nonlocal state
    b = batches[i % 2]
    state, metrics = compiled(state, b['image'], b['label'], train_key)
    return metrics

  for i in range(args.warmup):
    jax.block_until_ready(one_step(i))
  if args.profile_dir:
    with jax.profiler.trace(os.path.join(args.profile_dir, case),
                            create_perfetto_trace=True):
      for i in range(2):
        jax.block_until_ready((one_step(i), state))
  times = []
  cpu_times = []  # This process's CPU seconds (all threads) per step.
  metrics = None
  for i in range(args.steps):
    t0 = time.perf_counter()
    c0 = time.process_time()
    metrics = one_step(i)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
    cpu_times.append(time.process_time() - c0)
  loss = float(jax.device_get(metrics['loss']))

  mean_s = statistics.fmean(times)
  median_s = statistics.median(times)
  flops_dev = xla_flops(compiled)
  record = {
      'case': case,
      'depth': config.model.depth,
      'stem': config.model.stem,
      'base_width': config.model.base_width,
      'image_size': config.image_size,
      'blur': bool(config.augment.blur),
      'input': ('uint8 (B, H, W, 3), device crop' if len(shape) == 3 else
                'uint8 (B, 2, S, S, 3), host-cropped views'),
      'num_classes_probe': num_classes,
      'dtype': config.model.dtype,
      'global_batch': batch,
      'per_device_batch': batch // mesh.size,
      'num_params': models.count_params(model, config.image_size),
      'steps_timed': args.steps,
      'images_per_sec': batch / median_s,
      'views_per_sec': 2 * batch / median_s,
      'images_per_sec_from_mean': batch / mean_s,
      'step_time_mean_ms': 1e3 * mean_s,
      'step_time_median_ms': 1e3 * median_s,
      'step_time_min_ms': 1e3 * min(times),
      # CPU seconds this process spent per step (median), all threads: on a
      # CPU backend, how many cores the step kept busy.
      'step_process_cpu_s_median': statistics.median(cpu_times),
      'compile_s': compile_s,
      'lower_s': lower_s,
      'init_s': init_s,
      'final_loss': loss,
      'augment': ('none (--no_augment)' if args.no_augment
                  else config.augment.strategy),
      'num_proj_layers': config.model.num_proj_layers,
      'hlo': hlo_stats(compiled) if args.hlo_stats else None,
      'memory_per_device_bytes': device_memory_bytes(compiled),
      'flops_per_step_per_device': flops_dev,
      'flops_per_step': None if flops_dev is None else flops_dev * mesh.size,
      'flops_per_image': (None if flops_dev is None
                          else flops_dev * mesh.size / batch),
      'tflops_per_sec_per_device': (None if flops_dev is None
                                    else flops_dev / median_s / 1e12),
      'mfu': mfu(None if flops_dev is None else flops_dev * mesh.size,
                 median_s, peak, mesh.size),
  }
  del state, batches, compiled
  return record


def main(args: argparse.Namespace) -> dict[str, Any]:
  if args.dtype == 'auto':
    args.dtype = ('float32' if jax.devices()[0].platform == 'cpu'
                  else 'bfloat16')
  mesh = parallel.make_mesh(args.num_devices)
  device = mesh.devices.flat[0]
  peak = args.peak_tflops
  if peak is None and device.platform != 'cpu':
    peak = peak_tflops(device.device_kind, args.dtype)
  result = {
      'bench': 'train_step',
      'quick': args.quick,
      'jax_version': jax.__version__,
      'platform': device.platform,
      'device_kind': device.device_kind,
      'device_count': mesh.size,
      'process_count': jax.process_count(),
      'host': platform.machine(),
      'cpu_count': os.cpu_count(),
      'cpu_model': hostmem.cpu_model(),
      'huge_pages': hostmem.active(),  # glibc.malloc.hugetlb=1 (hostmem.py)
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'dtype': args.dtype,
      'peak_tflops_per_device': peak,
      'flops_source': ('XLA cost_analysis() of the compiled shard_map step: '
                       'per device; flops_per_step = per device x devices'),
      'timing': ('after lower().compile() and --warmup steps, each step timed '
                 'with block_until_ready; images/s = global batch / median '
                 'step time; no input pipeline'),
      'cases': [fitted_run(c, args, mesh, peak) for c in args.cases],
  }
  if args.matmul_rate:
    rate = matmul_tflops(device)
    result['matmul_tflops_float32'] = rate
    for case in result['cases']:
      # The whole step's FLOP rate (all devices share the host's cores on
      # CPU) over the rate of one large matmul.
      flops = case['flops_per_step']
      case['step_flop_rate_over_matmul'] = (
          None if flops is None
          else flops / (case['step_time_median_ms'] / 1e3) / 1e12 / rate)
  if args.compare_torch:
    try:
      import torch  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      result['torch'] = None
      result['torch_note'] = 'torch is not importable'
    else:
      record = torch_twin.torch_step_record(args)
      result['torch'] = record
      ours = next((c for c in result['cases'] if c['case'] == 'r18_32'), None)
      if ours is not None:
        result['r18_32_ours_over_torch'] = (ours['images_per_sec'] /
                                            record['images_per_sec'])
  result['tensorflow_imported'] = 'tensorflow' in sys.modules
  return result


if __name__ == '__main__':
  print(json.dumps(main(ARGS), indent=1))
