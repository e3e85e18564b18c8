"""The train step on the default backend against the CPU's, for a GPU check.

Under the usual test set-up the default backend is the CPU (8 devices) and
these compare one CPU device with eight. `bench/gpu_check.py` runs them with
SIMCLR_TEST_ACCELERATOR=1 (tests/conftest.py), where the default device is a
GPU: then they check, on that GPU, the train step (augmentation, forward,
NT-Xent, global BatchNorm, LARS) against the 8 CPU devices, the 'auto'
augmentation strategy and a bfloat16 step. One default device is enough.
"""

import functools
import os

import jax
import numpy as np
import pytest

from simclr_jax import augment
from simclr_jax import parallel
from simclr_jax import train
from tiny import tiny_config


# On the CPU, tests/test_train.py already checks one device against eight
# and tests/test_models.py bfloat16 against float32: the two costly cases
# here (48 s on 2 cores) run only on an accelerator
# (SIMCLR_TEST_ACCELERATOR=1, bench/gpu_check.py).
on_accelerator_only = pytest.mark.skipif(
    os.environ.get('SIMCLR_TEST_ACCELERATOR') != '1',
    reason='CPU twin in tests/test_train.py; runs under bench/gpu_check.py')


def _one_step(config, mesh, seed=0):
  """(state before, state after, metrics) of one train step on `mesh`."""
  with jax.default_device(mesh.devices.flat[0]):
    setup = train.build(config, mesh, num_classes=10, total_steps=10,
                        steps_per_epoch=5)
    state = setup.init_state()
    before = jax.device_get(state)
    rng = np.random.default_rng(seed)
    n, s = config.train.global_batch_size, config.image_size
    host = {'image': rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8),
            'label': rng.integers(0, 10, (n,)).astype(np.int32)}
    batch = parallel.host_to_global(host, mesh)
    state, metrics = setup.train_step(state, batch['image'], batch['label'],
                                      setup.replicated_train_key())
    return before, jax.device_get(state), jax.device_get(metrics)


@functools.lru_cache(maxsize=None)
def _float32_step_on_default_device():
  """`_one_step` of the tiny float32 config on one default device (shared)."""
  with jax.default_matmul_precision('highest'):  # No TF32 on the GPU.
    return _one_step(tiny_config(), parallel.make_mesh(1))


def _cpu_mesh():
  return parallel.make_mesh(8, devices=jax.devices('cpu'))


def _assert_updates_close(before, after_a, after_b, rtol):
  """Each leaf's update (after - before) agrees to rtol of its largest entry."""
  flat_before = jax.tree.leaves_with_path(before)
  for (path, p0), a, b in zip(flat_before, jax.tree.leaves(after_a),
                              jax.tree.leaves(after_b)):
    da = np.asarray(a, np.float64) - np.asarray(p0, np.float64)
    db = np.asarray(b, np.float64) - np.asarray(p0, np.float64)
    scale = max(float(np.abs(db).max()), 1e-8)
    err = float(np.abs(da - db).max())
    assert err <= rtol * scale, (jax.tree_util.keystr(path), err, scale)


@on_accelerator_only
def test_train_step_on_default_device_equals_eight_cpu_devices():
  """Loss, metrics, parameter updates and BatchNorm statistics after one
  float32 step: one default device (a GPU under gpu_check, with XLA's own
  convolution gradients) against 8 CPU devices (models/conv.py's forms)."""
  before, ours, m_ours = _float32_step_on_default_device()
  with jax.default_matmul_precision('highest'):
    _, ref, m_ref = _one_step(tiny_config(), _cpu_mesh())
  for k in m_ref:
    np.testing.assert_allclose(m_ours[k], m_ref[k], rtol=1e-3, atol=1e-5,
                               err_msg=k)
  _assert_updates_close(before.params, ours.params, ref.params, rtol=2e-2)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3,
                                                       atol=1e-5),
               ours.batch_stats, ref.batch_stats)
  assert int(ours.step) == int(ref.step) == 1


def test_auto_augmentation_on_default_device_equals_cpu():
  """'auto' is 'vmap' on a GPU and 'map' on the CPU; both give the CPU's
  views (blur on, so the Gaussian blur's convolution runs too)."""
  mesh = parallel.make_mesh(1)
  strategy = augment.resolve_strategy('auto', parallel.platform(mesh))
  assert strategy == ('map' if parallel.platform(mesh) == 'cpu' else 'vmap')
  full = tiny_config()
  full.image_size = 32  # A 3x3 blur kernel.
  config = full.augment
  config.blur = True
  images = np.random.default_rng(1).integers(0, 256, (8, 40, 40, 3),
                                             dtype=np.uint8)
  keys = jax.random.split(jax.random.key(0), 8)

  def views(device, how):
    with jax.default_device(device), jax.default_matmul_precision('highest'):
      fn = jax.jit(lambda k, x: augment.two_views(k, x, config, strategy=how))
      return jax.device_get(fn(jax.device_put(keys, device),
                               jax.device_put(images, device)))

  ours = views(mesh.devices.flat[0], strategy)
  ref = views(jax.devices('cpu')[0], 'map')
  for a, b in zip(ours, ref):
    assert a.shape == (8, config.output_size, config.output_size, 3)
    np.testing.assert_allclose(a, b, atol=2e-3)


@on_accelerator_only
def test_bfloat16_step_on_default_device_is_close_to_float32():
  _, f32, m32 = _float32_step_on_default_device()
  config = tiny_config()
  config.model.dtype = 'bfloat16'
  _, bf16, m16 = _one_step(config, parallel.make_mesh(1))
  for leaf in jax.tree.leaves((bf16.params, bf16.batch_stats)):
    assert leaf.dtype == np.float32 and np.isfinite(leaf).all()
  assert abs(float(m16['loss']) - float(m32['loss'])) < 0.05 * float(m32['loss'])
  assert jax.tree.structure(f32.params) == jax.tree.structure(bf16.params)
