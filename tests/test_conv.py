"""models/conv.py: the weight gradient from stored copies changes no value."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from configs import default
from simclr_jax import models, parallel, train
from simclr_jax.models import conv as conv_lib

DN = ('NHWC', 'HWIO', 'NHWC')


def _grads(conv, x, w, strides, padding):
  """Value and (dx, dw) of a loss through `conv`, with a BN-like producer."""

  def loss(x, w):
    a = jax.nn.relu(x * 1.3 - 0.2)  # An elementwise producer, as in a ResNet.
    y = conv(a, w, strides, padding, dimension_numbers=DN)
    return jnp.sum(jnp.sin(y) * 0.5 + y * y)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)


@pytest.mark.parametrize('k,stride,padding', [
    (3, 1, ((1, 1), (1, 1))),
    (3, 2, ((1, 1), (1, 1))),
    (1, 2, ((0, 0), (0, 0))),
    (7, 2, ((3, 3), (3, 3))),
    (3, 1, 'SAME'),
])
def test_gradients_equal_lax_conv_bit_for_bit(k, stride, padding):
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 5))
  w = jax.random.normal(jax.random.key(1), (k, k, 5, 6)) * 0.2
  want = _grads(lax.conv_general_dilated, x, w, (stride, stride), padding)
  got = _grads(conv_lib.conv_general_dilated, x, w, (stride, stride),
               padding)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bfloat16_gradients_equal_lax_conv():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4), jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 4), jnp.bfloat16)
  pad = ((1, 1), (1, 1))
  want = _grads(lax.conv_general_dilated, x, w, (1, 1), pad)
  got = _grads(conv_lib.conv_general_dilated, x, w, (1, 1), pad)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    assert a.dtype == b.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(a, np.float32),
                                  np.asarray(b, np.float32))


def test_materialize_keeps_values_and_nans():
  x = jnp.arange(12.0).reshape(3, 4)
  np.testing.assert_array_equal(jax.jit(conv_lib.materialize)(x), x)
  bad = x.at[0, 0].set(jnp.nan)
  assert bool(jnp.all(jnp.isnan(jax.jit(conv_lib.materialize)(bad))))
  # A NaN in the layer's input still reaches the weight gradient.
  w = jnp.ones((1, 1, 4, 2))
  xs = bad.reshape(1, 3, 1, 4)
  dw = jax.grad(lambda w: jnp.sum(conv_lib.conv_general_dilated(
      xs, w, (1, 1), ((0, 0), (0, 0)), dimension_numbers=DN)))(w)
  assert bool(jnp.any(jnp.isnan(dw)))


def test_grouped_convolutions_are_refused():
  x = jnp.ones((1, 4, 4, 4))
  with pytest.raises(ValueError, match='grouped'):
    conv_lib.conv_general_dilated(x, jnp.ones((3, 3, 2, 4)), (1, 1), 'SAME',
                                  dimension_numbers=DN, feature_group_count=2)


@pytest.mark.parametrize('depth,stem,sk_ratio', [(18, 'cifar', 0.0),
                                                 (50, 'imagenet', 0.0625)])
def test_model_gradients_identical_with_and_without(depth, stem, sk_ratio):
  config = default.get_config().model
  config.depth, config.stem, config.sk_ratio = depth, stem, sk_ratio
  config.base_width = 4
  x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))
  results = []
  for materialize in (False, True):
    model = models.create_model(config, num_classes=3,
                                materialize_conv_inputs=materialize)
    variables = model.init(jax.random.key(1), x, train=False)

    def loss(params, model=model, variables=variables):
      out, _ = model.apply({'params': params,
                            'batch_stats': variables['batch_stats']},
                           x, train=True, mutable=['batch_stats'])
      return sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(out))

    results.append(jax.jit(jax.value_and_grad(loss))(variables['params']))
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_train_step_uses_it_on_cpu_only_and_when_asked():
  config = default.get_config()
  mesh = parallel.make_mesh()
  assert parallel.platform(mesh) == 'cpu'
  assert train.materialize_conv_inputs(config, mesh)
  config.train.cpu_materialize_conv_inputs = False
  assert not train.materialize_conv_inputs(config, mesh)
  config.train.cpu_materialize_conv_inputs = True
  setup = train.build(config, mesh, num_classes=0, total_steps=2,
                      steps_per_epoch=1)
  assert setup.model.materialize_conv_inputs
