"""The sharded train step against its single-device twin, and the online probe."""

import jax
import numpy as np
import pytest

from simclr_jax import parallel
from simclr_jax import train
from tiny import tiny_config


def _setup(config, num_devices, num_classes):
  mesh = parallel.make_mesh(num_devices)
  setup = train.build(config, mesh, num_classes=num_classes, total_steps=10,
                      steps_per_epoch=5)
  return (mesh, setup.init_state(), setup.train_step,
          setup.replicated_train_key())


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  n, s = config.train.global_batch_size, config.image_size
  images = rng.integers(0, 256, size=(n, s, s, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, size=(n,)).astype(np.int32)
  labels[::5] = -1  # Some unlabelled examples.
  return images, labels


def _run(config, num_devices, num_classes=10, steps=2):
  mesh, state, step, key = _setup(config, num_devices, num_classes)
  metrics = []
  for i in range(steps):
    images, labels = _batch(config, seed=i)
    batch = parallel.host_to_global({'image': images, 'label': labels}, mesh)
    state, m = step(state, batch['image'], batch['label'], key)
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


def _assert_trees_close(a, b, rtol, atol):
  la, ta = jax.tree.flatten_with_path(a)
  lb, tb = jax.tree.flatten_with_path(b)
  assert ta == tb
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol,
                               atol=atol, err_msg=jax.tree_util.keystr(path))


def test_eight_devices_equal_one_device():
  """Params, BatchNorm statistics, optimiser state and metrics after 2 steps."""
  config = tiny_config()
  state8, metrics8 = _run(config, 8)
  state1, metrics1 = _run(config, 1)
  assert int(state8.step) == int(state1.step) == 2
  _assert_trees_close(state8.params, state1.params, rtol=1e-4, atol=1e-5)
  _assert_trees_close(state8.batch_stats, state1.batch_stats, rtol=1e-4, atol=1e-5)
  _assert_trees_close(state8.opt_state, state1.opt_state, rtol=1e-4, atol=1e-5)
  for m8, m1 in zip(metrics8, metrics1):
    for k in m1:
      np.testing.assert_allclose(m8[k], m1[k], rtol=1e-4, atol=1e-6, err_msg=k)
  # The step did something: parameters moved.
  _, state0, _, _ = _setup(config, 1, 10)
  moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                       state1.params, jax.device_get(state0.params))
  assert max(jax.tree.leaves(moved)) > 1e-4


def test_online_probe_leaves_encoder_gradients_unchanged():
  config = tiny_config()
  config.optim.name = 'sgd'  # Updates proportional to gradients.
  with_probe, m_probe = _run(config, 8, num_classes=10, steps=1)
  without, m_plain = _run(config, 8, num_classes=0, steps=1)
  assert 'probe_accuracy' in m_probe[0] and 'probe_accuracy' not in m_plain[0]
  for name in ('encoder', 'projection_head'):
    _assert_trees_close(with_probe.params[name], without.params[name],
                        rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(m_probe[0]['loss'], m_plain[0]['loss'], rtol=1e-6)


def test_augmentation_keys_do_not_depend_on_device_count():
  """Per-example keys come from the global example index."""
  from jax.sharding import PartitionSpec as P
  key = jax.random.key(3)

  def keys_on(n_dev):
    mesh = parallel.make_mesh(n_dev)
    f = jax.jit(jax.shard_map(
        lambda k: jax.random.key_data(train.example_keys(k, 16 // n_dev)),
        mesh=mesh, in_specs=P(), out_specs=P(parallel.AXIS)))
    return np.asarray(f(parallel.replicate(key, mesh)))

  k1, k8 = keys_on(1), keys_on(8)
  np.testing.assert_array_equal(k1, k8)
  assert len({tuple(r) for r in k1.reshape(16, -1)}) == 16


def test_divergence_is_reported_with_the_step(tmp_path):
  config = tiny_config()
  config.data.resize_to = 8
  config.train.num_steps = 6
  config.train.log_every_steps = 1
  config.train.checkpoint_every_steps = 2
  config.eval.linear_probe = False
  config.optim.name = 'sgd'
  config.optim.lr_scaling = 'none'
  config.optim.base_learning_rate = 1e30
  with pytest.raises(train.TrainingDiverged, match=r'at step \d+'):
    train.train_and_evaluate(config, str(tmp_path))


def test_checkpoint_of_another_model_is_a_clear_config_error(tmp_path):
  from simclr_jax import config_lib  # pylint: disable=g-import-not-at-top
  config = tiny_config()
  config.train.num_steps = 1
  config.eval.linear_probe = False
  train.train_and_evaluate(config, str(tmp_path))
  config.model.base_width = 8
  with pytest.raises(config_lib.ConfigError, match='new --workdir'):
    train.train_and_evaluate(config, str(tmp_path))
