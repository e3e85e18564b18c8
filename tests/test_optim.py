"""LARS masks, learning-rate scaling and the warm-up + cosine schedule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from simclr_jax import optim


def _params():
  return {
      'encoder': {
          'conv_init': {'kernel': jnp.ones((3, 3, 3, 4))},
          'bn_init': {'scale': jnp.ones((4,)), 'bias': jnp.zeros((4,))},
      },
      'projection_head': {'dense_0': {'kernel': jnp.ones((4, 4)),
                                      'bias': jnp.ones((4,))}},
      'probe': {'kernel': jnp.ones((4, 10)), 'bias': jnp.zeros((10,))},
  }


def test_kernel_mask_excludes_batchnorm_and_biases():
  mask = optim.kernel_mask(_params())
  assert mask['encoder']['conv_init']['kernel']
  assert not mask['encoder']['bn_init']['scale']
  assert not mask['encoder']['bn_init']['bias']
  assert mask['projection_head']['dense_0']['kernel']
  assert not mask['projection_head']['dense_0']['bias']


@pytest.mark.parametrize('scaling,batch,expected', [
    ('linear', 4096, 0.3 * 16), ('linear', 256, 0.3),
    ('sqrt', 4096, 0.3 * 64), ('none', 4096, 0.3)])
def test_learning_rate_scaling(scaling, batch, expected):
  assert optim.scaled_learning_rate(0.3, batch, scaling) == pytest.approx(expected)


def test_schedule_values_at_known_steps():
  sched = optim.create_schedule(peak_value=2.0, warmup_steps=10, total_steps=110)
  assert float(sched(0)) == 0.0
  assert float(sched(5)) == pytest.approx(1.0)
  assert float(sched(10)) == pytest.approx(2.0)
  # Half-way through the cosine part: half the peak.
  assert float(sched(60)) == pytest.approx(1.0, rel=1e-5)
  assert float(sched(110)) == pytest.approx(0.0, abs=1e-7)
  # Reference: google-research/simclr's warm-up then cosine.
  for s in (3, 17, 42, 99):
    want = 2.0 * s / 10 if s < 10 else 2.0 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 100))
    assert float(sched(s)) == pytest.approx(want, rel=1e-5)


def _lars_config():
  config = default.get_config()
  config.optim.name = 'lars'
  config.optim.weight_decay = 0.1
  config.optim.eeta = 0.01
  config.optim.momentum = 0.0
  config.optim.base_learning_rate = 1.0
  config.optim.lr_scaling = 'none'
  config.optim.warmup_epochs = 0.0
  config.optim.probe_learning_rate = 0.5
  return config


def test_lars_update_matches_reference_per_leaf():
  """Kernels: trust ratio and weight decay; BN params and biases: plain SGD."""
  config = _lars_config()
  tx, sched = optim.create_optimizer(config, total_steps=1000, steps_per_epoch=10)
  params = _params()
  grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p) + 0.1 * p, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr = float(sched(0))

  def lars_ref(w, g):
    g = g + 0.1 * w
    ratio = 0.01 * np.linalg.norm(w) / np.linalg.norm(g)
    return -lr * ratio * g

  enc = updates['encoder']
  np.testing.assert_allclose(
      enc['conv_init']['kernel'],
      lars_ref(params['encoder']['conv_init']['kernel'],
               grads['encoder']['conv_init']['kernel']), rtol=1e-5)
  for name in ('scale', 'bias'):
    np.testing.assert_allclose(enc['bn_init'][name],
                               -lr * grads['encoder']['bn_init'][name], rtol=1e-6)
  np.testing.assert_allclose(
      updates['projection_head']['dense_0']['bias'],
      -lr * grads['projection_head']['dense_0']['bias'], rtol=1e-6)
  # The probe has its own SGD at probe_learning_rate, no decay, no trust ratio.
  np.testing.assert_allclose(updates['probe']['kernel'],
                             -0.5 * grads['probe']['kernel'], rtol=1e-6)


def test_exclude_flag_off_decays_everything():
  config = _lars_config()
  config.optim.exclude_bn_and_bias = False
  tx, _ = optim.create_optimizer(config, total_steps=1000, steps_per_epoch=10)
  params = _params()
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  # With zero gradients only weight decay moves parameters: BN scale moves now.
  assert float(jnp.abs(updates['encoder']['bn_init']['scale']).sum()) > 0


@pytest.mark.parametrize('name', ['sgd', 'adam', 'adamw'])
def test_other_optimizers_reduce_a_quadratic(name):
  config = default.get_config()
  config.optim.name = name
  config.optim.lr_scaling = 'none'
  config.optim.base_learning_rate = 0.05
  config.optim.warmup_epochs = 0.0
  tx, _ = optim.create_optimizer(config, total_steps=200, steps_per_epoch=1)
  params = {'encoder': {'kernel': jnp.full((3,), 3.0)}}
  state = tx.init(params)
  loss = lambda p: jnp.sum(p['encoder']['kernel'] ** 2)
  for _ in range(50):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert float(loss(params)) < 0.5 * 27.0


def test_run_shorter_than_warmup_follows_the_warmup_line():
  sched = optim.create_schedule(peak_value=1.0, warmup_steps=100, total_steps=10)
  for s in range(11):
    assert float(sched(s)) == pytest.approx(s / 100)
