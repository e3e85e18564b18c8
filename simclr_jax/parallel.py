"""Devices, the 1-D data-parallel mesh, and host batches as global arrays.

Everything sharded in simclr_jax runs on one mesh axis named ``'batch'``:
parameters are replicated, batches are split along their first dimension.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = 'batch'


# XLA's own (Eigen) convolution kernels instead of YNNPACK's: YNNPACK runs
# each convolution on one thread and, on the 2-core AVX-512 machine this was
# measured on, took 1.7x the time of XLA's multi-threaded kernels for
# ResNet-18's convolutions (bench/cpu_speed.py). On jaxlib 0.12.1 YNNPACK's
# weight gradients are the slow part (3.8x XLA's at 32 px and 64 channels,
# bench/conv_layers.py), and the train step is 1.7x as fast without them.
YNN_CONVS_OFF = '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution'
# jaxlib (major, minor) versions known to accept YNN_CONVS_OFF (0.10.2 and
# 0.12.1 ran tests/test_cpu_setup.py, 0.11.2 started with it). XLA aborts the
# process on a flag it does not know, so it is never set for others.
_YNN_FLAG_VERSIONS = ((0, 10), (0, 11), (0, 12))


def _backends_started() -> bool:
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def jaxlib_knows_ynn_flag() -> bool:
  """Whether this jaxlib is one known to accept YNN_CONVS_OFF."""
  import jaxlib  # pylint: disable=g-import-not-at-top
  version = tuple(int(v) for v in jaxlib.__version__.split('.')[:2])
  return version in _YNN_FLAG_VERSIONS


def cpu_xla_flags(ynnpack_convs: bool = False) -> list[str]:
  """XLA flags for the CPU backend that simclr_jax sets before JAX starts.

  Args:
    ynnpack_convs: keep jaxlib's default of YNNPACK convolutions.

  Returns:
    [YNN_CONVS_OFF] when it applies (not `ynnpack_convs`, this jaxlib is one
    that knows the flag, XLA_FLAGS does not already choose YNN fusions),
    else []. The flag only concerns the CPU backend.
  """
  if (ynnpack_convs or not jaxlib_knows_ynn_flag() or
      'xla_cpu_experimental_ynn_fusion_type' in os.environ.get('XLA_FLAGS',
                                                               '')):
    return []
  return [YNN_CONVS_OFF]


def setup_cpu_devices(num_devices: int, ynnpack_convs: bool = False) -> None:
  """Sets up XLA's CPU backend before JAX starts it.

  Splits the host CPU into `num_devices` XLA devices (nothing when it is 0
  or when the user already set the count in XLA_FLAGS), and adds
  `cpu_xla_flags(ynnpack_convs)` to XLA_FLAGS. Does nothing once JAX has
  started its backends. Only the CPU backend is affected: on a GPU or TPU
  host the accelerators are still the default devices.
  """
  if _backends_started():
    logging.info('JAX has started: not changing the CPU backend set-up')
    return
  extra = cpu_xla_flags(ynnpack_convs)
  if extra:
    os.environ['XLA_FLAGS'] = ' '.join(
        [os.environ.get('XLA_FLAGS', ''), *extra]).strip()
  if num_devices <= 0:
    return
  if 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', ''):
    return
  try:
    jax.config.update('jax_num_cpu_devices', num_devices)
  except RuntimeError as e:  # Backends already initialised.
    logging.info('Not changing the CPU device count: %s', e)


def maybe_initialize_distributed(dist_config: Any) -> None:
  """Calls `jax.distributed.initialize` when `dist_config.initialize` is set."""
  if not dist_config.initialize:
    return
  # Collectives between CPU processes (tests, CPU clusters) go through gloo;
  # GPU and TPU backends have their own and ignore this.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  kwargs = {}
  if dist_config.coordinator_address:
    kwargs['coordinator_address'] = dist_config.coordinator_address
  if dist_config.num_processes > 0:
    kwargs['num_processes'] = dist_config.num_processes
  if dist_config.process_id >= 0:
    kwargs['process_id'] = dist_config.process_id
  jax.distributed.initialize(**kwargs)


def min_over_processes(n: int) -> int:
  """The smallest `n` of all processes (`n` itself on one process)."""
  if jax.process_count() == 1:
    return int(n)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(np.min(multihost_utils.process_allgather(np.array(n))))


def make_mesh(num_devices: int = 0,
              devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
  """A 1-D mesh with axis 'batch' over `num_devices` devices (0 = all).

  Args:
    num_devices: how many of the devices to use; 0 for all of them.
    devices: the devices to build the mesh from, in mesh order; None for
      `jax.devices()` (every device of every process). Given devices may be
      ones this host cannot run on, e.g. a TPU topology's
      (`jax.experimental.topologies`) for compiling ahead of time: the mesh
      is then built as given, with no topology-aware reordering (which
      `jax.make_mesh` refuses for, e.g., TPU v4 with one device per core).

  On several processes the mesh always spans every device of every process.
  """
  given = devices is not None
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError('make_mesh needs at least one device')
  if num_devices <= 0 or num_devices == len(devices):
    num_devices = len(devices)
  elif jax.process_count() > 1 and not given:
    raise ValueError('train.num_devices must be 0 (all devices) on several '
                     'processes')
  elif num_devices > len(devices):
    raise ValueError(f'train.num_devices={num_devices} but only '
                     f'{len(devices)} devices are available')
  axis_types = (jax.sharding.AxisType.Explicit,)
  if given:
    return jax.sharding.Mesh(np.array(devices[:num_devices]), (AXIS,),
                             axis_types=axis_types)
  return jax.make_mesh((num_devices,), (AXIS,), axis_types=axis_types,
                       devices=devices[:num_devices])


def platform(mesh: jax.sharding.Mesh) -> str:
  """The platform of the mesh's devices: 'cpu', 'gpu' or 'tpu'.

  Not `jax.default_backend()`: a step compiled ahead of time for a TPU
  topology on a CPU host must be traced for the TPU.
  """
  p = mesh.devices.flat[0].platform
  return 'gpu' if p in ('cuda', 'rocm') else p


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def host_to_global(batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """Turns this process's part of a batch into global arrays on the mesh.

  Args:
    batch: pytree of NumPy arrays whose leading dimension is this process's
      local batch (global batch / process count).
    mesh: the mesh from `make_mesh`.

  Returns:
    The same pytree of `jax.Array`s with the global batch as leading
    dimension, sharded over 'batch'.
  """
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      batch)


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
  """Places a pytree replicated on every mesh device.

  Leaves are NumPy arrays, jax arrays or typed PRNG keys; every process must
  pass the same values.
  """
  sharding = replicated(mesh)

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key):
      # device_put rejects typed keys for meshes that span several processes:
      # move the raw key data and wrap it again.
      data = jax.device_put(jax.random.key_data(x), sharding)
      return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)

  return jax.tree.map(put, tree)


def conv_gradients(config: Any, mesh: jax.sharding.Mesh) -> str:
  """The gradient forms of the model's convs (`models/conv.py` GRADIENTS).

  On CPU meshes 'border' (stored operands, the strided forms and the border
  forms of small 3x3 convs), 'strided' with train.cpu_border_forms off,
  'stored' with train.cpu_strided_gradient_forms off, 'xla' with
  train.cpu_materialize_conv_inputs off: XLA CPU otherwise recomputes
  BatchNorm and ReLU inside slow transposing copies and multiplies the zeros
  of dilated output gradients. 'xla' elsewhere (the forms would only add
  copies).
  """
  train = config.train
  if (platform(mesh) != 'cpu'
      or not bool(train.get('cpu_materialize_conv_inputs', True))):
    return 'xla'
  if not bool(train.get('cpu_strided_gradient_forms', True)):
    return 'stored'
  return 'border' if bool(train.get('cpu_border_forms', True)) else 'strided'
