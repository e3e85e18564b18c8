"""models/batchnorm.py: the fused-gradient BatchNorm against flax's.

Same variables and statistics as `nn.BatchNorm(use_fast_variance=False)`
(the model's configuration before), forward passes equal to float rounding,
gradients equal to autodiff's through flax to float rounding, on one device
and with global statistics over 8 devices under `jax.shard_map`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from simclr_jax import parallel
from simclr_jax.models import batchnorm


def _pair(**kwargs):
  common = dict(momentum=0.9, epsilon=1e-5, param_dtype=jnp.float32, **kwargs)
  return (nn.BatchNorm(use_fast_variance=False, **common),
          batchnorm.BatchNorm(**common))


def _variables(x, scale_init=1.0):
  c = x.shape[-1]
  rng = np.random.default_rng(3)
  return {'params': {'scale': jnp.asarray(scale_init + 0.1 * rng.standard_normal(c), jnp.float32),
                     'bias': jnp.asarray(0.1 * rng.standard_normal(c), jnp.float32)},
          'batch_stats': {'mean': jnp.asarray(rng.standard_normal(c), jnp.float32),
                          'var': jnp.asarray(1 + rng.random(c), jnp.float32)}}


def _close(a, b, tol):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape
  np.testing.assert_allclose(b, a, rtol=0, atol=tol * max(np.abs(a).max(), 1e-30))


def test_same_variables_as_flax():
  x = jnp.ones((4, 3, 3, 5))
  for kwargs in ({}, {'use_bias': False}, {'use_scale': False}):
    ref, ours = _pair(use_running_average=False, **kwargs)
    a = ref.init(jax.random.key(0), x)
    b = ours.init(jax.random.key(0), x)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      assert u.dtype == v.dtype
      np.testing.assert_array_equal(u, v)


@pytest.mark.parametrize('shape', [(8, 4, 4, 6), (16, 7)])
@pytest.mark.parametrize('kwargs', [{}, {'use_bias': False}])
def test_train_mode_values_and_gradients_equal_flax(shape, kwargs):
  x = jax.random.normal(jax.random.key(0), shape) * 2 + 3  # Mean >> spread.
  g = jax.random.normal(jax.random.key(1), shape)
  ref, ours = _pair(use_running_average=False, **kwargs)
  variables = _variables(x)
  if kwargs.get('use_bias') is False:
    del variables['params']['bias']

  def run(module):
    def f(x, params):
      y, new = module.apply({'params': params,
                             'batch_stats': variables['batch_stats']},
                            x, mutable=['batch_stats'])
      return y, new['batch_stats']
    (y, stats), vjp = jax.vjp(f, x, variables['params'])
    zero = jax.tree.map(jnp.zeros_like, stats)
    return y, stats, jax.jit(vjp)((g, zero))

  (y0, s0, d0), (y1, s1, d1) = run(ref), run(ours)
  _close(y0, y1, 1e-6)
  for a, b in zip(jax.tree.leaves(s0), jax.tree.leaves(s1)):
    _close(a, b, 1e-6)
  for a, b in zip(jax.tree.leaves(d0), jax.tree.leaves(d1)):
    _close(a, b, 1e-5)


def test_eval_mode_and_bfloat16_equal_flax():
  x = jax.random.normal(jax.random.key(0), (8, 4, 4, 6), jnp.bfloat16)
  variables = _variables(x)
  for train in (False, True):
    ref, ours = _pair(use_running_average=not train, dtype=jnp.bfloat16)
    a, _ = ref.apply(variables, x, mutable=['batch_stats'])
    b, _ = ours.apply(variables, x, mutable=['batch_stats'])
    assert a.dtype == b.dtype == jnp.bfloat16
    _close(a.astype(jnp.float32), b.astype(jnp.float32), 1e-2)
    dx = jax.grad(lambda x: jnp.sum(jnp.sin(ours.apply(
        variables, x, mutable=['batch_stats'])[0].astype(jnp.float32))))(x)
    assert dx.dtype == jnp.bfloat16


def test_the_statistics_cotangents_reach_the_input():
  """A loss of the returned mean and variance differentiates as autodiff
  through the plain formulas does."""
  x = jax.random.normal(jax.random.key(0), (6, 5)) + 1
  scale, bias = jnp.full((5,), 1.5), jnp.full((5,), 0.2)

  def plain(x):
    mean = jnp.mean(x, 0)
    var = jnp.mean(jnp.square(x - mean), 0)
    y = (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias
    return jnp.sum(jnp.sin(y)) + jnp.sum(mean ** 3) + jnp.sum(jnp.sqrt(var))

  def fused(x):
    y, mean, var = batchnorm.batch_norm_train(x, scale, bias, 1e-5, None,
                                              jnp.float32)
    return jnp.sum(jnp.sin(y)) + jnp.sum(mean ** 3) + jnp.sum(jnp.sqrt(var))

  _close(jax.grad(plain)(x), jax.grad(fused)(x), 1e-5)


def test_global_statistics_on_8_devices_equal_one_device():
  """Under shard_map with axis_name: the statistics and every gradient are
  those of the whole batch on one device (and flax's under shard_map)."""
  mesh = parallel.make_mesh()
  assert mesh.size == 8
  spec = jax.sharding.PartitionSpec
  x = jax.random.normal(jax.random.key(0), (16, 3, 3, 4)) + 2
  g = jax.random.normal(jax.random.key(1), x.shape)
  variables = _variables(x)

  def grads(module, sharded):
    def f(x, g, params):
      def loss(x, params):
        y, new = module.apply({'params': params,
                               'batch_stats': variables['batch_stats']},
                              x, mutable=['batch_stats'])
        total = jnp.sum(y * g)
        if sharded:
          total = jax.lax.psum(total, parallel.AXIS)
        return total, new['batch_stats']
      (_, stats), d = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
          x, params)
      return stats, d
    if not sharded:
      return jax.jit(f)(x, g, variables['params'])
    batch = spec(parallel.AXIS)
    put = lambda a, s: jax.device_put(a, jax.sharding.NamedSharding(mesh, s))
    return jax.jit(jax.shard_map(
        f, mesh=mesh, in_specs=(batch, batch, spec()),
        out_specs=(spec(), (batch, spec()))))(
            put(x, batch), put(g, batch), put(variables['params'], spec()))

  make = functools.partial(_pair, use_running_average=False)
  one = grads(make()[1], False)
  flax8 = grads(make(axis_name=parallel.AXIS)[0], True)
  ours8 = grads(make(axis_name=parallel.AXIS)[1], True)
  for a, b, c in zip(jax.tree.leaves(one), jax.tree.leaves(flax8),
                     jax.tree.leaves(ours8)):
    _close(a, c, 1e-5)
    _close(b, c, 1e-5)
