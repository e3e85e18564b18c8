"""BatchNorm with a fused backward pass, a drop-in for the model's `nn.BatchNorm`.

`BatchNorm` has `nn.BatchNorm`'s variables (params 'scale' and 'bias',
batch_stats 'mean' and 'var'), its momentum convention and the statistics
`resnet.batch_norm` configures (two-pass biased variance in float32, averaged
over `axis_name` for global BN): checkpoints move between the two and the
forward pass is the same computation. In training, its gradient is one
custom VJP: the two per-channel sums the backward pass needs (of g and of
g * x_hat, with g the output's cotangent) and then one elementwise pass for
the input's gradient. Differentiating flax's version instead goes back
through the two-pass variance and the mean step by step: more reductions
and more passes over the activations, which is what a memory-bound CPU step
pays for. On 2 CPU cores one BatchNorm + ReLU, forward and backward,
takes 85 ms instead of 117 at ResNet-18's 32 px stage and 10 instead of 27
at its 8 px stage (batch 256; `python bench/bn_layers.py --rounds=3`).

The gradient is the textbook one for batch statistics:
dx = scale / sigma * (g - mean(g) - x_hat * mean(g * x_hat)), the means
over the batch (and over `axis_name`'s devices); d scale = sum(g * x_hat),
d bias = sum(g). Equal to autodiff's to float rounding
(tests/test_batchnorm.py).
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

Initializer = Callable[..., jax.Array]


def _sum_over(axis_name: str | None, *xs: jax.Array) -> tuple:
  """Each (C,) array summed over `axis_name`'s devices (one all-reduce)."""
  if axis_name is None:
    return xs
  summed = lax.psum(jnp.stack(xs), axis_name)
  return tuple(summed[i] for i in range(len(xs)))


def _count(x: jax.Array, axis_name: str | None) -> Any:
  """How many values each channel's statistics average: over all devices."""
  local = x.size // x.shape[-1]
  return local if axis_name is None else local * lax.psum(1, axis_name)


def _statistics(x: jax.Array, axis_name: str | None):
  """Float32 batch mean and biased variance (two passes), per channel."""
  axes = tuple(range(x.ndim - 1))
  n = _count(x, axis_name)
  mean = _sum_over(axis_name, jnp.sum(x, axes))[0] / n
  var = _sum_over(axis_name, jnp.sum(jnp.square(x - mean), axes))[0] / n
  return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float, axis_name: str | None,
                     dtype: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Batch-normalizes x with its own statistics.

  Args:
    x: (..., C) activations, any float dtype.
    scale: (C,) float32.
    bias: (C,) float32.
    epsilon: added to the variance.
    axis_name: mapped axis the statistics average over (global BN), or None.
    dtype: the result's dtype.

  Returns:
    (y, mean, var): y (..., C) of `dtype`, (x - mean) / sqrt(var + epsilon)
    * scale + bias; mean and var (C,) float32, the batch statistics (for the
    running averages).
  """
  return _forward(x, scale, bias, epsilon, axis_name, dtype)[0]


def _forward(x, scale, bias, epsilon, axis_name, dtype):
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean, var = _statistics(xf, axis_name)
  inv = lax.rsqrt(var + epsilon)
  y = ((xf - mean) * (inv * scale) + bias).astype(dtype)
  return (y, mean, var), (x, scale, bias, mean, inv)


def _backward(epsilon, axis_name, dtype, residuals, cotangents):
  del epsilon, dtype
  x, scale, bias, mean, inv = residuals
  g, g_mean, g_var = cotangents
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  g = g.astype(xf.dtype)
  axes = tuple(range(x.ndim - 1))
  n = _count(x, axis_name)
  x_hat = (xf - mean) * inv
  local_g, local_gx = jnp.sum(g, axes), jnp.sum(g * x_hat, axes)
  sum_g, sum_gx = _sum_over(axis_name, local_g, local_gx)
  dx = (scale * inv) * (g - sum_g / n - x_hat * (sum_gx / n))
  # The statistics' own cotangents (zero when they only feed the running
  # averages): d mean / dx = 1 / n, d var / dx = 2 (x - mean) / n.
  dx = dx + g_mean / n + (xf - mean) * (2 * g_var / n)
  # The parameters' cotangents as autodiff gives them: under shard_map a
  # replicated scale or bias gets its gradient summed over the devices its
  # data varies over (the VJP of the product inserts that sum).
  _, param_vjp = jax.vjp(lambda s, b: s * (local_gx * 0 + 1) + b, scale, bias)
  d_scale = param_vjp(local_gx)[0]
  d_bias = param_vjp(local_g)[1]
  return dx.astype(x.dtype), d_scale, d_bias


batch_norm_train.defvjp(_forward, _backward)


class BatchNorm(nn.Module):
  """`nn.BatchNorm` over the last axis, two-pass variance, fused gradient.

  Attributes:
    use_running_average: normalize with the running averages (evaluation)
      instead of batch statistics (training; the running averages update).
    momentum: running-average decay (new = momentum * old + (1 - momentum)
      * batch).
    epsilon: added to the variance.
    dtype: the result's dtype (None: x's promoted with float32, as
      `nn.BatchNorm` infers it from x and its float32 statistics).
    param_dtype: dtype of scale and bias.
    axis_name: mapped axis to average the statistics over, or None.
    use_bias, use_scale, bias_init, scale_init: as `nn.BatchNorm`.
  """
  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None
  use_bias: bool = True
  use_scale: bool = True
  bias_init: Initializer = nn.initializers.zeros
  scale_init: Initializer = nn.initializers.ones

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (..., C) -> normalized (..., C) of `dtype`."""
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean',
                            lambda s: jnp.zeros(s, jnp.float32), features)
    ra_var = self.variable('batch_stats', 'var',
                           lambda s: jnp.ones(s, jnp.float32), features)
    scale = (self.param('scale', self.scale_init, features, self.param_dtype)
             if self.use_scale else jnp.ones(features, jnp.float32))
    bias = (self.param('bias', self.bias_init, features, self.param_dtype)
            if self.use_bias else jnp.zeros(features, jnp.float32))
    dtype = (jnp.promote_types(x.dtype, jnp.float32) if self.dtype is None
             else self.dtype)
    if self.use_running_average:
      xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      mul = lax.rsqrt(ra_var.value + self.epsilon) * scale
      return ((xf - ra_mean.value) * mul + bias).astype(dtype)
    initializing = self.is_initializing()
    y, mean, var = batch_norm_train(
        x, scale.astype(jnp.float32), bias.astype(jnp.float32), self.epsilon,
        None if initializing else self.axis_name, dtype)
    if not initializing:
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y
