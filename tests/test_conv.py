"""models/conv.py: CPU-friendly conv gradients against lax's and a reference.

The stored-operand weight gradient changes no value (bit for bit); the
sub-pixel input gradient of strided convs, the matmul weight gradient of
1x1 convs and the border forms of small 3x3 convs (forward pass and both
gradients) sum in another order: they equal a float64 reference as
closely as lax's own gradient does.
"""

import collections
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
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


def _reference_grads(x, w, g, strides, padding):
  """(dx, dw) of <conv(x, w), g> in float64 NumPy, tap by tap."""
  x, w, g = (np.asarray(a, np.float64) for a in (x, w, g))
  (lo_h, hi_h), (lo_w, hi_w) = padding
  xp = np.pad(x, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
  dxp = np.zeros_like(xp)
  dw = np.zeros_like(w)
  _, ho, wo, _ = g.shape
  sh, sw = strides
  for i in range(w.shape[0]):
    for j in range(w.shape[1]):
      rows = slice(i, i + sh * (ho - 1) + 1, sh)
      cols = slice(j, j + sw * (wo - 1) + 1, sw)
      dw[i, j] = np.einsum('nhwc,nhwf->cf', xp[:, rows, cols], g)
      dxp[:, rows, cols] += np.einsum('nhwf,cf->nhwc', g, w[i, j])
  dx = dxp[:, lo_h:xp.shape[1] - hi_h, lo_w:xp.shape[2] - hi_w]
  return dx, dw


CASES = [  # (input size, kernel, stride, padding)
    (12, 3, 1, ((1, 1), (1, 1))),
    (12, 3, 2, ((1, 1), (1, 1))),   # ResNet stage transitions.
    (11, 3, 2, ((1, 1), (1, 1))),   # Odd sizes: residue classes differ.
    (12, 1, 2, ((0, 0), (0, 0))),   # Projection shortcuts.
    (12, 1, 1, ((0, 0), (0, 0))),   # Stride-1 1x1: the weight gradient's matmul.
    (11, 1, 2, ((0, 0), (0, 0))),
    (13, 7, 2, ((3, 3), (3, 3))),   # The ImageNet stem.
    (10, 4, 2, ((1, 2), (1, 2))),   # Asymmetric padding.
    (10, 3, 3, ((1, 1), (1, 1))),
    (9, 2, 3, ((0, 0), (0, 0))),    # k < s: rows no tap reaches.
]


@pytest.mark.parametrize('size,k,stride,padding', CASES)
def test_gradients_match_float64_reference_as_closely_as_lax(
    size, k, stride, padding):
  x = jax.random.normal(jax.random.key(0), (3, size, size, 5))
  w = jax.random.normal(jax.random.key(1), (k, k, 5, 6)) * 0.2
  strides = (stride, stride)
  y = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)
  g = jax.random.normal(jax.random.key(2), y.shape)
  want = _reference_grads(x, w, g, strides, padding)

  def grads(conv):
    f = lambda x, w: conv(x, w, strides, padding, dimension_numbers=DN)
    out, vjp = jax.vjp(f, x, w)
    np.testing.assert_array_equal(out, y)  # The forward pass is lax's.
    return jax.jit(vjp)(g)

  _assert_as_close_as_lax(want, grads(lax.conv_general_dilated),
                          grads(conv_lib.conv_general_dilated))


def _assert_as_close_as_lax(want, lax_values, ours):
  """Each of `ours` is float32 and as close to the float64 `want` as lax's."""
  for ref, a, b in zip(want, lax_values, ours):
    assert a.shape == b.shape == ref.shape and b.dtype == jnp.float32
    scale = np.abs(ref).max()
    lax_err = np.abs(np.asarray(a, np.float64) - ref).max() / scale
    our_err = np.abs(np.asarray(b, np.float64) - ref).max() / scale
    assert lax_err < 1e-5 and our_err < max(4 * lax_err, 1e-6), (
        lax_err, our_err)


@pytest.mark.parametrize('k,stride,padding', [
    (3, 1, ((1, 1), (1, 1))),
    (1, 1, ((0, 0), (0, 0))),
    (3, 2, ((1, 1), (1, 1))),
    (1, 2, ((0, 0), (0, 0))),
    (3, 1, 'SAME'),
])
def test_stored_operand_gradients_equal_lax_conv_bit_for_bit(
    k, stride, padding):
  """Without the strided forms every gradient is lax's, bit for bit."""
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 5))
  w = jax.random.normal(jax.random.key(1), (k, k, 5, 6)) * 0.2
  want = _grads(lax.conv_general_dilated, x, w, (stride, stride), padding)
  got = _grads(conv_lib.conv_function('stored'), x, w, (stride, stride),
               padding)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_stride_one_gradients_stay_bit_for_bit():
  """The strided forms leave stride-1 kxk convs' gradients exactly lax's
  (a 1x1 conv's weight gradient is a matmul: CASES checks it)."""
  x = jax.random.normal(jax.random.key(0), (4, 12, 12, 5))
  w = jax.random.normal(jax.random.key(1), (3, 3, 5, 6)) * 0.2
  pad = ((1, 1), (1, 1))
  want = _grads(lax.conv_general_dilated, x, w, (1, 1), pad)
  got = _grads(conv_lib.conv_general_dilated, x, w, (1, 1), pad)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_strided_bfloat16_gradients_keep_dtype_and_values():
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 4), jnp.bfloat16)
  pad = ((1, 1), (1, 1))
  for k, p in ((3, pad), (1, ((0, 0), (0, 0)))):
    w = jax.random.normal(jax.random.key(1), (k, k, 4, 4), jnp.bfloat16)
    want = _grads(lax.conv_general_dilated, x, w, (2, 2), p)
    got = _grads(conv_lib.conv_general_dilated, x, w, (2, 2), p)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      assert a.dtype == b.dtype == jnp.bfloat16
      a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
      np.testing.assert_allclose(b, a, rtol=0, atol=0.02 * np.abs(a).max())


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


@pytest.mark.parametrize('shape', [(3, 3), (4, 4), (8, 8), (5, 7), (3, 8)])
def test_border_forms_match_float64_reference_as_closely_as_lax(shape):
  """Forward pass and both gradients of a small 3x3 conv in border form."""
  x = jax.random.normal(jax.random.key(0), (3, *shape, 5))
  w = jax.random.normal(jax.random.key(1), (3, 3, 5, 6)) * 0.2
  pad = ((1, 1), (1, 1))
  conv = conv_lib.conv_function('border')
  assert conv_lib._border_applies(  # pylint: disable=protected-access
      ((1, 1), pad, None, None, DN), x, w)
  f = lambda x, w: conv(x, w, (1, 1), pad, dimension_numbers=DN)
  y, vjp = jax.vjp(f, x, w)
  g = jax.random.normal(jax.random.key(2), y.shape)
  x64, w64 = np.asarray(x, np.float64), np.asarray(w, np.float64)
  xp = np.pad(x64, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want_y = sum(np.einsum('nhwc,cf->nhwf', xp[:, i:i + shape[0], j:j + shape[1]],
                         w64[i, j]) for i in range(3) for j in range(3))
  lax_y, lax_vjp = jax.vjp(
      lambda x, w: lax.conv_general_dilated(x, w, (1, 1), pad,
                                            dimension_numbers=DN), x, w)
  want = (want_y, *_reference_grads(x, w, g, (1, 1), pad))
  _assert_as_close_as_lax(want, (lax_y, *lax_vjp(g)), (y, *jax.jit(vjp)(g)))


@pytest.mark.parametrize('size,k,stride,padding', [
    (16, 3, 1, ((1, 1), (1, 1))),   # Over BORDER_MAX_SIDE.
    (2, 3, 1, ((1, 1), (1, 1))),    # No interior.
    (8, 3, 2, ((1, 1), (1, 1))),
    (8, 3, 1, ((0, 0), (0, 0))),
    (8, 5, 1, ((2, 2), (2, 2))),
])
def test_border_forms_leave_other_convs_to_the_other_forms(
    size, k, stride, padding):
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  w = jax.random.normal(jax.random.key(1), (k, k, 3, 4)) * 0.2
  assert not conv_lib._border_applies(  # pylint: disable=protected-access
      ((stride, stride), padding, None, None, DN), x, w)
  want = _grads(conv_lib.conv_function('strided'), x, w, (stride, stride),
                padding)
  got = _grads(conv_lib.conv_function('border'), x, w, (stride, stride),
               padding)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_border_forms_keep_bfloat16_and_nans():
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 4), jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 4), jnp.bfloat16)
  pad = ((1, 1), (1, 1))
  want = _grads(lax.conv_general_dilated, x, w, (1, 1), pad)
  got = _grads(conv_lib.conv_function('border'), x, w, (1, 1), pad)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    assert a.dtype == b.dtype == jnp.bfloat16
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    np.testing.assert_allclose(b, a, rtol=0, atol=0.02 * np.abs(a).max())
  bad = x.astype(jnp.float32).at[0, 0, 0, 0].set(jnp.nan)
  dw = jax.grad(lambda w: jnp.sum(conv_lib.conv_function('border')(
      bad, w, (1, 1), pad, dimension_numbers=DN)))(w.astype(jnp.float32))
  assert bool(jnp.any(jnp.isnan(dw)))


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
def test_model_gradients_with_and_without(depth, stem, sk_ratio):
  """Whole-model gradients: stored operands alone change no bit; with the
  strided forms, and the border forms, they agree to float32 rounding."""
  config = default.get_config().model
  config.depth, config.stem, config.sk_ratio = depth, stem, sk_ratio
  config.base_width = 4
  x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3))
  results = []
  for gradients in ('xla', 'stored', 'strided', 'border'):
    model = models.create_model(config, num_classes=3,
                                conv_gradients=gradients)
    variables = model.init(jax.random.key(1), x, train=False)

    def loss(params, model=model, variables=variables):
      out, _ = model.apply({'params': params,
                            'batch_stats': variables['batch_stats']},
                           x, train=True, mutable=['batch_stats'])
      return sum(jnp.sum(jnp.sin(o)) for o in jax.tree.leaves(out))

    results.append(jax.jit(jax.value_and_grad(loss))(variables['params']))
  plain, stored, fast, border = (jax.tree.leaves(r) for r in results)
  for a, b in zip(plain, stored):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(plain[0]) == float(fast[0])  # The forward pass is the same.
  # The border forms change the forward pass too (to float rounding).
  np.testing.assert_allclose(float(border[0]), float(plain[0]), rtol=1e-5)
  for a, c, d in zip(plain[1:], fast[1:], border[1:]):
    a, c, d = np.asarray(a), np.asarray(c), np.asarray(d)
    np.testing.assert_allclose(c, a, rtol=0, atol=1e-5 * np.abs(a).max())
    np.testing.assert_allclose(d, a, rtol=0, atol=1e-5 * np.abs(a).max())
  if depth == 18:  # The forms ran (R50's 1x1-pixel last stage at 32 px
    # sums so few terms that its rounding can agree bit for bit).
    assert any(not np.array_equal(a, c)
               for a, c in zip(plain[1:], fast[1:]))


def test_the_train_step_uses_it_on_cpu_only_and_when_asked():
  config = default.get_config()
  mesh = parallel.make_mesh()
  assert parallel.platform(mesh) == 'cpu'
  assert parallel.conv_gradients(config, mesh) == 'border'
  config.train.cpu_border_forms = False
  assert parallel.conv_gradients(config, mesh) == 'strided'
  config.train.cpu_border_forms = True
  config.train.cpu_strided_gradient_forms = False
  assert parallel.conv_gradients(config, mesh) == 'stored'
  config.train.cpu_materialize_conv_inputs = False
  assert parallel.conv_gradients(config, mesh) == 'xla'
  config.train.cpu_materialize_conv_inputs = True
  config.train.cpu_strided_gradient_forms = True
  setup = train.build(config, mesh, num_classes=0, total_steps=2,
                      steps_per_epoch=1)
  assert setup.model.conv_gradients == 'border'


@pytest.mark.parametrize('k,padding,stride', [(1, ((0, 0), (0, 0)), 2),
                                              (1, ((0, 0), (0, 0)), 1),
                                              (3, ((1, 1), (1, 1)), 2),
                                              (3, ((1, 1), (1, 1)), 1)])
def test_strided_gradients_under_shard_map_equal_lax(k, padding, stride):
  """A weight replicated over the devices gets its gradient summed over
  them (as fine-tuning's step takes it), and the result equals lax's (the
  stride-1 3x3 case at 8 px takes the border forms)."""
  mesh = parallel.make_mesh()
  spec = jax.sharding.PartitionSpec
  x = jax.random.normal(jax.random.key(0), (2 * mesh.size, 8, 8, 5))
  w = jax.random.normal(jax.random.key(1), (k, k, 5, 6)) * 0.2

  def grads(conv):
    def per_device(x, w):
      def loss(w):
        y = conv(jax.nn.relu(x), w, (stride, stride), padding,
                 dimension_numbers=DN)
        return lax.psum(jnp.sum(jnp.sin(y)), parallel.AXIS)
      return jax.grad(loss)(w)
    sharded = jax.device_put(
        x, jax.sharding.NamedSharding(mesh, spec(parallel.AXIS)))
    replicated = jax.device_put(w, jax.sharding.NamedSharding(mesh, spec()))
    return jax.jit(jax.shard_map(
        per_device, mesh=mesh, in_specs=(spec(parallel.AXIS), spec()),
        out_specs=spec()))(sharded, replicated)

  want = grads(lax.conv_general_dilated)
  got = grads(conv_lib.conv_function('border'))
  assert got.shape == want.shape == w.shape
  np.testing.assert_allclose(got, want, rtol=0,
                             atol=1e-5 * np.abs(want).max())


def test_the_per_layer_bench_lists_resnet18s_convolutions():
  """bench/conv_layers.py weights each layer by how often ResNet-18 (CIFAR
  stem, 32 px) has it: its table must be the model's convolutions."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'bench'))
  import conv_layers  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  config = default.get_config().model
  config.depth, config.stem, config.width_multiplier = 18, 'cifar', 1
  config.base_width, config.sk_ratio = 64, 0.0
  model = models.create_model(config, num_classes=0)
  seen = collections.Counter()

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.Conv) and context.method_name == '__call__':
      x = args[0]
      (k, _), (s, _) = module.kernel_size, module.strides
      seen[(x.shape[1], x.shape[3], module.features, k, s)] += 1
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda: model.init(jax.random.key(0),
                                      jnp.zeros((2, 32, 32, 3)), train=False))
  listed = {v[:5]: v[5] for v in conv_layers.LAYERS.values()}
  assert dict(seen) == listed
