"""A convolution whose weight gradient reads a materialised input (XLA CPU).

XLA's CPU backend computes the weight gradient of a convolution as another
convolution whose "batch" is the input channels, so it transposes the layer's
input from (N, H, W, C) to (C, H, W, N) and the output gradient from
(N, H, W, F) to (H, W, N, F). In a ResNet both are elementwise functions of
other tensors (BatchNorm's affine map and a ReLU plus the residual sum; the
BatchNorm backward), and XLA fuses those functions into the transposing
copies: the fused loop then walks its sources with a stride of H * W * C and
runs several times slower than a plain transpose of a stored array (XLA
tiles plain transposes). On 2 CPU cores these fused transposes were the
largest item of the ResNet-18 train step's profile.

`conv_general_dilated` is `lax.conv_general_dilated` with a custom VJP that
hands the weight-gradient convolution copies of its two operands made by a
`lax.cond`: XLA cannot fuse across a conditional, so the transposes read
stored arrays. The forward pass, the input gradient and every value are those
of `lax.conv_general_dilated` (bit-identical in float32: the same
convolutions run on the same numbers); only where the transposed operand
comes from changes. Pass it to `flax.linen.Conv(conv_general_dilated=...)`.

The copies cost a read and a write of the layer's input and output
gradient per step; on accelerators (whose convolutions take any layout) that
would be pure cost, so the model uses it on CPU only
(`train.cpu_materialize_conv_inputs`; pretraining and fine-tuning).
"""

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax


def materialize(x: jax.Array) -> jax.Array:
  """`x`, stored by a conditional so that no consumer can fuse its producer.

  The branch is chosen at run time from x's first element (the compiler
  cannot fold it): `x` itself, or NaNs when that element is NaN, so a NaN
  still poisons whatever reads the result (nothing is silently zeroed).
  """
  first = x.reshape(-1)[0]
  return lax.cond(jnp.isnan(first), lambda: jnp.full_like(x, jnp.nan),
                  lambda: x)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array,
                         window_strides: Sequence[int],
                         padding: Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None,
                         feature_group_count: int = 1,
                         batch_group_count: int = 1,
                         precision: Any = None,
                         preferred_element_type: Any = None) -> jax.Array:
  """`lax.conv_general_dilated`, with the weight gradient described above.

  Same arguments and result as `lax.conv_general_dilated` (lhs (N, H, W, C)
  and rhs (kh, kw, C, F) under flax's dimension numbers). Grouped or
  batch-grouped convolutions are not supported.
  """
  if feature_group_count != 1 or batch_group_count != 1:
    raise ValueError('grouped convolutions are not supported here')
  if not isinstance(padding, str):
    padding = tuple(tuple(p) for p in padding)
  static = (tuple(window_strides), padding,
            None if lhs_dilation is None else tuple(lhs_dilation),
            None if rhs_dilation is None else tuple(rhs_dilation),
            dimension_numbers, precision, preferred_element_type)
  return _conv(static, lhs, rhs)


def _plain(static: tuple, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
  strides, padding, lhs_dil, rhs_dil, dn, precision, out_type = static
  return lax.conv_general_dilated(
      lhs, rhs, strides, padding, lhs_dilation=lhs_dil, rhs_dilation=rhs_dil,
      dimension_numbers=dn, precision=precision,
      preferred_element_type=out_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv(static: tuple, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
  return _plain(static, lhs, rhs)


def _conv_fwd(static, lhs, rhs):
  return _plain(static, lhs, rhs), (lhs, rhs)


def _conv_bwd(static, residuals, g):
  lhs, rhs = residuals
  _, input_vjp = jax.vjp(lambda x: _plain(static, x, rhs), lhs)
  stored = materialize(lhs)
  _, weight_vjp = jax.vjp(lambda w: _plain(static, stored, w), rhs)
  return input_vjp(g)[0], weight_vjp(materialize(g))[0]


_conv.defvjp(_conv_fwd, _conv_bwd)
