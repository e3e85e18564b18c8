r"""A scale plan measured by the compiler: the real train step, compiled ahead
of time for a TPU topology (or N virtual CPU devices standing in for a GPU
box), at the real per-device batch; prints one JSON object.

    python bench/scale_plan.py --config=configs/imagenet.py --target=v3-32
    python bench/scale_plan.py --config=configs/imagenet.py --target=v4-32 \
        --config.model.remat=true --out=bench/results/v4-32_remat.json
    python bench/scale_plan.py --config=configs/imagenet.py \
        --topology=v3:4x4 --global_batch=4096
    python bench/scale_plan.py --quick --target=h100x8   # smoke check, no libtpu

TPU targets need libtpu (`pip install -e ".[tpu]"`, in its own virtual
environment); nothing runs on a TPU: libtpu's compiler builds the program for
the topology's devices on this CPU host (`jax.experimental.topologies`), the
state is abstract (`train.build(...).abstract_state()`, `jax.eval_shape`) and
the batch is `ShapeDtypeStruct`s with the train step's shardings. The GPU
target ('h100x8') compiles for N virtual CPU devices instead (there is no GPU
compiler here): its FLOPs and collective bytes are the GPU program's, its
memory is the CPU compiler's buffer assignment, indicative only.

What it prints, per device unless named otherwise:

* `memory`: XLA's `memory_analysis()` of the compiled step (arguments,
  outputs, aliased (donated state), temporaries, generated code) and
  `peak_bytes` = arguments + outputs - aliased + temporaries + code, against
  the target's HBM; `fits`.
* `flops_per_step_per_device`: XLA's `cost_analysis()` of the step.
* `collectives` (bench/hlo_collectives.py): every all-gather / all-reduce /
  reduce-scatter of the compiled HLO text, counted and sized from their
  result shapes, grouped by
  the JAX op that made them (metadata op_name): the all-gather of z for the
  negatives, the forward BatchNorm statistics, the backward all-reduces
  (parameter gradients and the cotangents of the BatchNorm statistics), the
  rest (loss and metrics; the transpose of the z all-gather, which XLA does
  not name). `wire_bytes` is what a ring moves per device for them.
* `prediction`: compute time = FLOPs / (peak FLOP/s x --utilization);
  communication time = wire bytes / the per-device interconnect bandwidth
  + --collective_latency_us per collective; the step time assumes no overlap
  (an upper bound; `step_s_overlapped` the lower one). Epoch and 100-epoch
  times from the schedule (ImageNet's 1,281,167 images: no dataset needed).
* `host_input`: images/s the step consumes and the host CPU cores that
  decoding needs at --host_images_per_core (bench/input_bench.py: about 680
  images/s on 2 cores for 500x375 JPEGs host-cropped to 224 px).
* `google_reference`: google-research/simclr's "100 epochs takes around 6
  hours with 32 TPU v3s" as a step time and as the utilisation it implies
  for our FLOP count (only for a v3 target at batch 4096).

Compiling ResNet-50 at 224 px takes minutes of CPU. Set
ALLOW_MULTIPLE_LIBTPU_LOAD=1 to run two of these at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hlo_collectives import count_collectives  # pylint: disable=g-import-not-at-top,wrong-import-position

GIB = 2**30
# ImageNet-1k training images (TFDS imagenet2012 'train'), and its classes.
KNOWN_DATASETS = {'imagenet2012': (1_281_167, 1000)}
# bench/input_bench.py on the development machine: ~680 images/s on 2 cores
# for 500x375 JPEGs host-cropped to two 224 px views.
HOST_IMAGES_PER_CORE = 340.0
# google-research/simclr README: "100 epochs takes around 6 hours with 32 TPU
# v3s" (ResNet-50, batch 4096).
GOOGLE_V3_32_100_EPOCH_HOURS = 6.0


@dataclasses.dataclass(frozen=True)
class Target:
  """An accelerator slice: what the compiler targets and the stated specs.

  Attributes:
    name: e.g. 'v3-32'.
    kind: 'tpu' (libtpu deviceless compilation) or 'cpu' (N virtual CPU
      devices standing in for GPUs).
    topology: libtpu topology name ('v3:4x4'), or the device count for 'cpu'.
    topology_options: extra arguments of `get_topology_desc`
      (chip_config_name='megacore' for v4: one device per chip).
    accelerator_type: TPU_ACCELERATOR_TYPE for libtpu ('' for 'cpu').
    chip: the hardware, in words.
    devices_per_chip: JAX devices per chip (2 for v3's two TensorCores).
    peak_flops_per_chip: dense bf16 peak FLOP/s.
    hbm_bytes_per_chip: high-bandwidth memory per chip.
    interconnect_bytes_per_s_per_chip: the bandwidth collectives get per chip
      (TPU: the pod's all-reduce bandwidth / chips per pod; H100: NVLink 4,
      one direction).
    chips_per_host: chips per host VM (host CPU for the input pipeline).
    source: where the numbers come from.
  """
  name: str
  kind: str
  topology: str
  topology_options: tuple[tuple[str, Any], ...]
  accelerator_type: str
  chip: str
  devices_per_chip: int
  peak_flops_per_chip: float
  hbm_bytes_per_chip: float
  interconnect_bytes_per_s_per_chip: float
  chips_per_host: int
  source: str


TARGETS = {t.name: t for t in [
    Target('v3-32', 'tpu', 'v3:4x4', (), 'v3-32', 'TPU v3 (2 TensorCores '
           'per chip, one JAX device each)', 2, 123e12, 32 * GIB,
           340e12 / 1024, 4,
           'cloud.google.com/tpu/docs/v3: 123 TFLOP/s bf16, 32 GiB HBM per '
           'chip; all-reduce 340 TB/s per 1024-chip pod; 4 chips per host'),
    Target('v4-32', 'tpu', 'v4:2x2x4', (('chip_config_name', 'megacore'),),
           'v4-32', 'TPU v4 (megacore: one JAX device per chip)', 1, 275e12,
           32 * GIB, 1.1e15 / 4096, 4,
           'cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM per '
           'chip; all-reduce 1.1 PB/s per 4096-chip pod; 4 chips per host'),
    Target('v5e-64', 'tpu', 'v5e:8x8', (), 'v5litepod-64', 'TPU v5e', 1,
           197e12, 16e9, 51.2e12 / 256, 8,
           'cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM per '
           'chip; all-reduce 51.2 TB/s per 256-chip pod; 8x8 = 8 hosts of 8 '
           'chips (224 vCPUs each)'),
    Target('v6e-64', 'tpu', 'v6e:8x8', (), 'v6e-64', 'TPU v6e (Trillium)', 1,
           918e12, 32e9, 102.4e12 / 256, 8,
           'cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM per '
           'chip; all-reduce 102.4 TB/s per 256-chip pod; 8 chips per host'),
    Target('h100x8', 'cpu', '8', (), '', 'NVIDIA H100 SXM (8 virtual CPU '
           'devices stand in)', 1, 989e12, 80e9, 450e9, 8,
           'NVIDIA H100 SXM datasheet: 989 TFLOP/s dense bf16, 80 GB HBM3; '
           'NVLink 4 900 GB/s per GPU both directions (450 GB/s one way)'),
]}

def memory_summary(stats: Any, hbm_bytes: float) -> dict[str, Any]:
  """Per-device bytes from `compiled.memory_analysis()` against the HBM."""
  fields = ('argument_size_in_bytes', 'output_size_in_bytes',
            'alias_size_in_bytes', 'temp_size_in_bytes',
            'generated_code_size_in_bytes')
  m = {f.replace('_size_in_bytes', '_bytes'): int(getattr(stats, f))
       for f in fields}
  peak = (m['argument_bytes'] + m['output_bytes'] - m['alias_bytes'] +
          m['temp_bytes'] + m['generated_code_bytes'])
  return dict(m, peak_bytes=peak, peak_gib=round(peak / GIB, 2),
              hbm_bytes=int(hbm_bytes), hbm_gib=round(hbm_bytes / GIB, 2),
              fraction_of_hbm=round(peak / hbm_bytes, 3),
              fits=bool(peak <= hbm_bytes))


def predict(*, flops_per_device: float, wire_bytes_per_device: float,
            num_collectives: int, target: Target, num_devices: int,
            global_batch: int, steps_per_epoch: int, utilization: float,
            collective_latency_s: float,
            host_images_per_core: float) -> dict[str, Any]:
  """Step, epoch and 100-epoch times, and the host cores input needs.

  compute = FLOPs / (peak per device x utilization); communication = wire
  bytes / interconnect bandwidth per device + latency per collective; the
  step is their sum (no overlap: an upper bound) and `step_s_overlapped`
  their maximum (full overlap: a lower bound).
  """
  peak = target.peak_flops_per_chip / target.devices_per_chip
  bandwidth = (target.interconnect_bytes_per_s_per_chip /
               target.devices_per_chip)
  compute_s = flops_per_device / (peak * utilization)
  comm_s = (wire_bytes_per_device / bandwidth +
            num_collectives * collective_latency_s)
  step_s = compute_s + comm_s
  images_per_s = global_batch / step_s
  chips = num_devices / target.devices_per_chip
  hosts = max(chips / target.chips_per_host, 1.0)
  cores = images_per_s / host_images_per_core
  return {
      'peak_flops_per_device': peak,
      'utilization': utilization,
      'interconnect_bytes_per_s_per_device': bandwidth,
      'compute_s': compute_s,
      'communication_s': comm_s,
      'step_s': step_s,
      'step_s_overlapped': max(compute_s, comm_s),
      'epoch_s': steps_per_epoch * step_s,
      'hours_100_epochs': 100 * steps_per_epoch * step_s / 3600,
      'host_input': {
          'images_per_s': images_per_s,
          'host_images_per_core': host_images_per_core,
          'host_cores_total': cores,
          'hosts': hosts,
          'host_cores_per_host': cores / hosts,
      },
  }


def google_reference(flops_per_device: float, target: Target,
                     steps_per_epoch: int) -> dict[str, Any]:
  """google's 6 h / 100 epochs on 32 TPU v3 cores as step time and MFU."""
  step_s = GOOGLE_V3_32_100_EPOCH_HOURS * 3600 / (100 * steps_per_epoch)
  peak = target.peak_flops_per_chip / target.devices_per_chip
  return {'quote': '100 epochs takes around 6 hours with 32 TPU v3s '
                   '(google-research/simclr README, batch 4096)',
          'hours_100_epochs': GOOGLE_V3_32_100_EPOCH_HOURS,
          'step_s': step_s,
          'implied_utilization_of_bf16_peak': flops_per_device / (step_s *
                                                                 peak)}


def make_devices(target: Target, topology: str | None = None) -> list[Any]:
  """The target's devices: a libtpu topology's, or this host's CPU devices."""
  import jax  # pylint: disable=g-import-not-at-top
  if target.kind == 'cpu':
    n = int(topology or target.topology)
    from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
    parallel.setup_cpu_devices(n)
    devices = jax.devices('cpu')
    if len(devices) < n:
      raise SystemExit(f'error: {n} CPU devices needed, {len(devices)} '
                       'available (XLA_FLAGS sets another count?)')
    return devices[:n]
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  # Before libtpu loads: no metadata-server lookups on a host without a TPU.
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', target.accelerator_type)
  desc = topologies.get_topology_desc(
      topology_name=topology or target.topology, platform='tpu',
      **dict(target.topology_options))
  return list(desc.devices)


def abstract_inputs(config: Any, mesh: Any, global_batch: int):
  """(images, labels, key) of the train step as sharded ShapeDtypeStructs.

  Host-cropped configs (data.crop 'host', or 'auto' for ImageNet) feed
  uint8 (B, 2, S, S, 3); others whole uint8 (B, S, S, 3) images with S =
  image_size (the device crops).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  s = config.image_size
  host = config.data.crop == 'host' or (
      config.data.crop == 'auto' and config.data.name in KNOWN_DATASETS)
  shape = (global_batch, 2, s, s, 3) if host else (global_batch, s, s, 3)
  batch = parallel.batch_sharded(mesh)
  images = jax.ShapeDtypeStruct(shape, jnp.uint8, sharding=batch)
  labels = jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=batch)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype,
                             sharding=parallel.replicated(mesh))
  return images, labels, key


def compile_step(config: Any, mesh: Any, *, global_batch: int,
                 num_classes: int, num_train_examples: int):
  """Lowers and compiles the real train step for `mesh`, without running it.

  Returns (compiled, info) with the schedule, the input shapes and the
  lower/compile seconds.
  """
  from simclr_jax import train  # pylint: disable=g-import-not-at-top
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.train.global_batch_size = global_batch
  steps_per_epoch, total_steps = train.schedule_steps(config,
                                                      num_train_examples)
  setup = train.build(config, mesh, num_classes=num_classes,
                      total_steps=total_steps, steps_per_epoch=steps_per_epoch)
  state = setup.abstract_state()
  images, labels, key = abstract_inputs(config, mesh, global_batch)
  t0 = time.perf_counter()
  lowered = setup.train_step.lower(state, images, labels, key)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  import jax  # pylint: disable=g-import-not-at-top
  num_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))
  bn_channels = sum(
      math.prod(x.shape) for path, x in
      jax.tree_util.tree_flatten_with_path(state.batch_stats)[0]
      if jax.tree_util.keystr(path).endswith("['mean']"))
  return compiled, {
      'steps_per_epoch': steps_per_epoch, 'total_steps': total_steps,
      'images_shape': list(images.shape), 'num_params': num_params,
      'bn_channels': bn_channels, 'proj_out_dim': config.model.proj_out_dim,
      'lower_s': round(t1 - t0, 1), 'compile_s': round(t2 - t1, 1)}


def collectives_from_shapes(info: dict[str, Any],
                            global_batch: int) -> dict[str, int]:
  """Bytes the step's collectives must move, from the model's shapes.

  z: both views of the global batch, float32, received by every device;
  gradients: every parameter, float32; forward BatchNorm statistics: two
  float32 all-reduces (mean, then variance) of each BatchNorm's channels
  (their backward cotangents are about as many again, three per BatchNorm
  in the HLO).
  """
  return {'z_all_gather_bytes': 2 * global_batch * info['proj_out_dim'] * 4,
          'gradient_all_reduce_bytes': 4 * info['num_params'],
          'bn_statistics_forward_bytes': 2 * 4 * info['bn_channels']}


def analyse(compiled: Any, info: dict[str, Any], *, target: Target,
            num_devices: int, global_batch: int, utilization: float,
            collective_latency_s: float,
            host_images_per_core: float) -> dict[str, Any]:
  """Memory, FLOPs, collectives and the predictions of a compiled step.

  `info` is `compile_step`'s. Collective bytes come twice: counted in the
  compiled HLO text (`collectives`, what the prediction uses) and computed
  from the shapes (`collectives_from_shapes`).
  """
  steps_per_epoch = info['steps_per_epoch']
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  flops = float(cost['flops'])
  collectives = count_collectives(compiled.as_text(), num_devices)
  return {
      'memory': memory_summary(compiled.memory_analysis(),
                               target.hbm_bytes_per_chip /
                               target.devices_per_chip),
      'flops_per_step_per_device': flops,
      'bytes_accessed_per_step_per_device': float(
          cost.get('bytes accessed', float('nan'))),
      'collectives': collectives,
      'collectives_from_shapes': collectives_from_shapes(info, global_batch),
      'prediction': predict(
          flops_per_device=flops,
          wire_bytes_per_device=collectives['total']['wire_bytes'],
          num_collectives=collectives['total']['count'], target=target,
          num_devices=num_devices, global_batch=global_batch,
          steps_per_epoch=steps_per_epoch, utilization=utilization,
          collective_latency_s=collective_latency_s,
          host_images_per_core=host_images_per_core),
  }


def _target_for_topology(topology: str) -> Target:
  chip = topology.split(':')[0]
  for t in TARGETS.values():
    if t.kind == 'tpu' and t.topology.split(':')[0] == chip:
      return t
  raise SystemExit(f'error: no target for topology {topology!r}; known '
                   f'chips: {sorted({t.topology.split(":")[0] for t in TARGETS.values() if t.kind == "tpu"})}')


def main(argv: list[str]) -> None:
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  del argv
  f = flags.FLAGS
  target = (_target_for_topology(f.topology) if f.topology
            else TARGETS[f.target])
  topology = f.topology or None
  config = f.config
  num_examples, classes = KNOWN_DATASETS.get(config.data.name, (0, 0))
  num_examples = f.num_train_examples or num_examples
  if not num_examples:
    raise SystemExit(f'error: the size of {config.data.name!r} is not known: '
                     'pass --num_train_examples')
  num_classes = (f.num_classes if f.num_classes >= 0 else classes
                 if config.train.online_probe else 0)
  global_batch = f.global_batch or config.train.global_batch_size
  if f.quick:  # A smoke check: ResNet-18 at base width 8, 32 px.
    with config.unlocked():
      config.model.depth, config.model.base_width = 18, 8
      config.image_size = 32
  if target.kind == 'cpu':
    # The GPU program: augmentation as on GPU ('auto' would pick CPU's).
    with config.unlocked():
      if config.augment.strategy == 'auto':
        config.augment.strategy = 'vmap'

  try:
    devices = make_devices(target, topology)
  except Exception as e:  # pylint: disable=broad-except
    hint = ('' if os.environ.get('ALLOW_MULTIPLE_LIBTPU_LOAD') else
            ' (if another process is using libtpu, set '
            'ALLOW_MULTIPLE_LIBTPU_LOAD=1)')
    first = str(e).strip().splitlines()[0] if str(e).strip() else ''
    raise SystemExit(f'error: no devices for {target.name}: '
                     f'{type(e).__name__}: {first[:300]}{hint}') from None
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  mesh = parallel.make_mesh(devices=devices)
  if f.quick:
    global_batch = f.global_batch or 2 * mesh.size
  if global_batch % mesh.size:
    raise SystemExit(f'error: --global_batch={global_batch} does not split '
                     f'over {mesh.size} devices')
  compiled = info = None
  try:
    compiled, info = compile_step(config, mesh, global_batch=global_batch,
                                  num_classes=num_classes,
                                  num_train_examples=num_examples)
  except Exception as e:  # pylint: disable=broad-except
    # Reported, not hidden: e.g. libtpu's compiler crashing on a topology.
    result = {'target': target.name, 'error': f'{type(e).__name__}: {e}'[:2000]}
    print(json.dumps(result, indent=1))
    if f.out:
      with open(f.out, 'w') as fh:
        json.dump(result, fh, indent=1)
    raise SystemExit(1)
  import jax  # pylint: disable=g-import-not-at-top
  result = {
      'target': target.name,
      'chip': target.chip,
      'topology': topology or target.topology,
      'compiler': ('libtpu (deviceless, ahead of time)' if target.kind ==
                   'tpu' else f'XLA CPU, {mesh.size} virtual devices'),
      'device_kind': devices[0].device_kind,
      'num_devices': mesh.size,
      'global_batch': global_batch,
      'per_device_batch': global_batch // mesh.size,
      'config': {'file': config_flags.get_config_filename(f['config']),
                 'depth': config.model.depth,
                 'width_multiplier': config.model.width_multiplier,
                 'sk_ratio': config.model.sk_ratio,
                 'image_size': config.image_size,
                 'dtype': config.model.dtype, 'remat': config.model.remat,
                 'augment_strategy': config.augment.strategy,
                 'online_probe_classes': num_classes},
      'num_train_examples': num_examples,
      **info,
      **analyse(compiled, info, target=target, num_devices=mesh.size,
                global_batch=global_batch, utilization=f.utilization,
                collective_latency_s=f.collective_latency_us * 1e-6,
                host_images_per_core=f.host_images_per_core),
      'target_specs': target.source,
      'jax': jax.__version__,
  }
  if target.name == 'v3-32' and global_batch == 4096:
    result['google_reference'] = google_reference(
        result['flops_per_step_per_device'], target, info['steps_per_epoch'])
  if target.kind == 'cpu':
    result['what_this_tells'] = (
        'FLOPs and collective bytes are those of the GPU program (same '
        'partitioned step, per-device batch and dtypes); memory is XLA CPU\'s '
        'buffer assignment, not the GPU compiler\'s (other fusion, layouts, '
        'no cuDNN workspaces): indicative only; the prediction uses H100 '
        'specs, not a measurement.')
  text = json.dumps(result, indent=1)
  print(text)
  if f.out:
    os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
    with open(f.out, 'w') as fh:
      fh.write(text + '\n')


def _define_flags() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', 'configs/imagenet.py',
                                  'ml_collections config file')
  flags.DEFINE_enum('target', 'v3-32', sorted(TARGETS), 'accelerator slice')
  flags.DEFINE_string('topology', '', 'libtpu topology name (e.g. v3:4x4); '
                      'overrides --target\'s, keeps its chip specs')
  flags.DEFINE_integer('global_batch', 0, 'global batch (0: the config\'s)')
  flags.DEFINE_integer('num_train_examples', 0, 'training images (0: known '
                       'size of the config\'s data set, e.g. ImageNet)')
  flags.DEFINE_integer('num_classes', -1, 'online-probe classes (-1: the '
                       'data set\'s when train.online_probe)')
  flags.DEFINE_float('utilization', 0.4, 'assumed fraction of peak FLOP/s')
  flags.DEFINE_float('collective_latency_us', 10.0,
                     'assumed latency per collective op')
  flags.DEFINE_float('host_images_per_core', HOST_IMAGES_PER_CORE,
                     'host-crop decode rate per CPU core (input_bench.py)')
  flags.DEFINE_string('out', '', 'also write the JSON here')
  flags.DEFINE_bool('quick', False, 'smoke check: ResNet-18 at base width 8, '
                    '32 px, 2 examples per device (about a minute)')


if __name__ == '__main__':
  # Compile-only: JAX's own backend is this host's CPU, also where libtpu is
  # installed (it would otherwise look for a TPU).
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  from absl import app  # pylint: disable=g-import-not-at-top
  _define_flags()
  app.run(main)
