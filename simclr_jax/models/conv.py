"""Convolution gradients in forms that XLA's CPU backend runs faster.

`conv_general_dilated` is `lax.conv_general_dilated` (same forward pass,
bit for bit, unless item 3 applies) with a custom VJP that changes how two
of its three convolutions are computed:

1. Weight gradients read stored operands. XLA's CPU backend computes the
   weight gradient of a convolution as another convolution whose "batch" is
   the input channels, so it transposes the layer's input from (N, H, W, C)
   to (C, H, W, N) and the output gradient from (N, H, W, F) to
   (H, W, N, F). In a ResNet both are elementwise functions of other tensors
   (BatchNorm's affine map and a ReLU plus the residual sum; the BatchNorm
   backward), and XLA fuses those functions into the transposing copies: the
   fused loop then walks its sources with a stride of H * W * C and runs
   several times slower than a plain transpose of a stored array (XLA tiles
   plain transposes). Here the weight-gradient convolution gets copies of
   its two operands made by a `lax.cond` (`materialize`): XLA cannot fuse
   across a conditional, so the transposes read stored arrays. Same
   convolution on the same numbers: bit-identical values.

2. Strided convolutions (stage transitions and projection shortcuts, with
   `strided_forms=True`): XLA computes the input gradient of a stride-s
   conv as one convolution over the output gradient dilated with s - 1 zeros
   between rows and columns, s * s as many multiply-adds as needed, most of
   them with zeros. `strided_input_gradient` computes each residue class of
   input positions (y % s, x % s) as a stride-1 conv with the kernel taps
   that reach it, and interleaves the classes (the "sub-pixel" form). The
   weight gradient of an unpadded 1x1 conv, strided or not, is one matmul of
   the (subsampled) input with the output gradient, which reads both in
   their (N, H, W, C) layout: no transposing copies (ResNet-18's first
   shortcut: 54 ms before, 31 ms after, bench/conv_layers.py on 2 cores).
   Same sums in another order: equal to XLA's to float rounding
   (tests/test_conv.py checks both against a float64 reference).

3. Border forms (`border_forms=True`): XLA's CPU kernels multiply the zeros
   of a convolution's padding like any other input. A 3x3 conv padded by
   one spends 31% of its multiply-adds on them at 4x4 pixels and 16% at 8x8
   (ResNet-18's last two stages at 32 px input); oneDNN's direct
   convolutions skip them, which was most of PyTorch's lead on those layers.
   `border_conv` computes such a conv (stride 1, at most BORDER_MAX_SIDE
   pixels a side) as five: the interior unpadded, the first and last rows
   and the interior's first and last columns with the two kernel rows or
   columns that reach the image. The forward pass, the input gradient (the
   same form with the kernel turned) and the weight gradient all take it:
   ResNet-18's 8 and 4 px convs 1.8 s -> 1.5 s per train step of batch 128
   (bench/conv_layers.py --layers=s3_conv,s4_conv, --gradients=strided
   against the default). Same sums in another order, forward pass included.

On 2 CPU cores (bench/cpu_speed.py) the copies made ResNet-18's train step
1.22x as fast, the strided forms about 1.06x more, the border forms about
1.06x more (bench/step_ab.py --b=no_border_forms: median of 16 paired
steps). On accelerators, whose convolutions take any layout, the copies
would be pure cost, so the model uses this module on CPU only
(`train.cpu_materialize_conv_inputs`, `train.cpu_strided_gradient_forms`,
`train.cpu_border_forms`; pretraining, fine-tuning and distillation; the
evaluation's features use lax's convolutions). The models take the choice
as `conv_gradients` (one of GRADIENTS) and pass `conv_function(conv_gradients)`
to `flax.linen.Conv(conv_general_dilated=...)`.
"""

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
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
                         preferred_element_type: Any = None, *,
                         strided_forms: bool = True,
                         border_forms: bool = False) -> jax.Array:
  """`lax.conv_general_dilated`, with the gradients described above.

  Same arguments and result as `lax.conv_general_dilated` (lhs (N, H, W, C)
  and rhs (kh, kw, C, F) under flax's dimension numbers). `strided_forms`:
  item 2 of the module docstring (False: XLA's own gradients for strided
  convs, stored operands still). `border_forms`: item 3 (small 3x3 convs
  without multiply-adds on padding; forward pass and both gradients).
  Grouped or batch-grouped convolutions are not supported.
  """
  if feature_group_count != 1 or batch_group_count != 1:
    raise ValueError('grouped convolutions are not supported here')
  if not isinstance(padding, str):
    padding = tuple(tuple(p) for p in padding)
  static = (tuple(window_strides), padding,
            None if lhs_dilation is None else tuple(lhs_dilation),
            None if rhs_dilation is None else tuple(rhs_dilation),
            dimension_numbers, precision, preferred_element_type,
            bool(strided_forms), bool(border_forms))
  if border_forms and _border_applies(static, lhs, rhs):
    return _border_conv(static, lhs, rhs)
  return _conv(static, lhs, rhs)


# How a model's convolutions take their gradients: 'xla' lax's own; 'stored'
# weight gradients read stored operands (item 1); 'strided' that and the
# strided forms (item 2); 'border' those and the border forms of small 3x3
# convs (item 3), the CPU default.
GRADIENTS = ('xla', 'stored', 'strided', 'border')


def conv_function(gradients: str) -> Callable[..., jax.Array] | None:
  """The `conv_general_dilated` for `flax.linen.Conv` of one of GRADIENTS.

  None (flax's default, lax's convolution) for 'xla'.
  """
  if gradients not in GRADIENTS:
    raise ValueError(f'conv gradients must be one of {GRADIENTS}, got '
                     f'{gradients!r}')
  if gradients == 'xla':
    return None
  return functools.partial(conv_general_dilated,
                           strided_forms=gradients in ('strided', 'border'),
                           border_forms=gradients == 'border')


def _plain(static: tuple, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
  strides, padding, lhs_dil, rhs_dil, dn, precision, out_type = static[:7]
  return lax.conv_general_dilated(
      lhs, rhs, strides, padding, lhs_dilation=lhs_dil, rhs_dilation=rhs_dil,
      dimension_numbers=dn, precision=precision,
      preferred_element_type=out_type)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _conv(static: tuple, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
  return _plain(static, lhs, rhs)


def _conv_fwd(static, lhs, rhs):
  return _plain(static, lhs, rhs), (lhs, rhs)

_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _simple(static: tuple, lhs: jax.Array, rhs: jax.Array) -> bool:
  """Explicit padding, no dilation, flax's NHWC/HWIO layout."""
  _, padding, lhs_dil, rhs_dil, dn = static[:5]
  if isinstance(padding, str) or lhs_dil not in (None, (1, 1)):
    return False
  if rhs_dil not in (None, (1, 1)) or lhs.ndim != 4:
    return False
  return (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dn) ==
          lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))


def _residue_taps(size: int, k: int, s: int, lo: int, r: int):
  """Kernel taps that reach input rows y = s * a + r, ordered by offset.

  Forward: y = s * o + i - lo for output row o and tap i. For y = s * a + r
  the taps are the i with (r + lo - i) % s == 0, each reading output row
  o = a + (r + lo - i) // s. Returns (taps, first offset, number of such y)
  or None when no tap reaches them (k < s).
  """
  taps = sorted((i for i in range(k) if (r + lo - i) % s == 0),
                key=lambda i: (r + lo - i) // s)
  if not taps:
    return None
  return taps, (r + lo - taps[0]) // s, len(range(r, size, s))


def strided_input_gradient(g: jax.Array, rhs: jax.Array,
                           input_shape: Sequence[int],
                           strides: Sequence[int],
                           padding: Sequence[tuple[int, int]]) -> jax.Array:
  """Input gradient of a strided conv as s*s stride-1 convs (sub-pixel form).

  For y = conv(x, rhs, strides, padding) (NHWC x of `input_shape`, HWIO rhs,
  explicit padding, no dilation), returns the gradient (N, H, W, C) of the
  loss for x given its gradient `g` (N, Ho, Wo, F) for y. XLA computes it
  as one convolution over g dilated by zeros (s*s as many multiply-adds as
  needed, most of them with zeros); here each residue class (y % sh, x % sw)
  of input positions is a stride-1 conv of g with the kernel taps that reach
  it, and the classes are interleaved. Same sums in another order: equal to
  XLA's to float rounding.
  """
  n, h, w, c = input_shape
  kh, kw = rhs.shape[:2]
  sh, sw = strides
  per_dim = [[_residue_taps(size, k, s, pad[0], r) for r in range(s)]
             for size, k, s, pad in ((h, kh, sh, padding[0]),
                                     (w, kw, sw, padding[1]))]
  rows, cols = -(-h // sh), -(-w // sw)
  blocks = []
  for th in per_dim[0]:
    row = []
    for tw in per_dim[1]:
      if th is None or tw is None:
        row.append(jnp.zeros((n, rows, cols, c), g.dtype))
        continue
      kernel = rhs[np.array(th[0])][:, np.array(tw[0])]  # (th, tw, C, F)
      kernel = jnp.swapaxes(kernel, 2, 3).astype(g.dtype)  # (th, tw, F, C)
      pads = [(0, 0, 0)]
      for (taps, first, count), out in ((th, g.shape[1]), (tw, g.shape[2])):
        # Row a of the result reads g rows a + first ... a + first + t - 1.
        pads.append((-first, count - out + first + len(taps) - 1, 0))
      pads.append((0, 0, 0))
      part = lax.conv_general_dilated(
          lax.pad(g, jnp.zeros((), g.dtype), pads), kernel, (1, 1),
          ((0, 0), (0, 0)), dimension_numbers=_NHWC)
      row.append(jnp.pad(part, ((0, 0), (0, rows - part.shape[1]),
                                (0, cols - part.shape[2]), (0, 0))))
    blocks.append(jnp.stack(row, axis=3))  # (N, rows, cols, sw, C)
  full = jnp.stack(blocks, axis=2)  # (N, rows, sh, cols, sw, C)
  return full.reshape(n, rows * sh, cols * sw, c)[:, :h, :w, :]


def _pointwise_weight_gradient(lhs: jax.Array, rhs: jax.Array, g: jax.Array,
                               strides: Sequence[int]) -> jax.Array:
  """Weight gradient (1, 1, C, F) of an unpadded 1x1 conv as one matmul.

  Taken as the VJP of the matmul, so that under `jax.shard_map` a weight
  that is the same on every device gets its gradient summed over the
  devices, exactly as `lax.conv_general_dilated`'s own VJP gives it.
  """
  sh, sw = strides
  x = lhs[:, ::sh, ::sw, :][:, :g.shape[1], :g.shape[2], :]
  x = x.reshape(-1, x.shape[-1]).astype(rhs.dtype)
  _, vjp = jax.vjp(lambda w: x @ w.reshape(w.shape[2:]), rhs)
  return vjp(g.reshape(-1, g.shape[-1]).astype(rhs.dtype))[0]


def _conv_bwd(static, residuals, g):
  lhs, rhs = residuals
  strides, padding = static[0], static[1]
  forms = static[7] and _simple(static, lhs, rhs)  # Item 2 applies.
  if forms and max(strides) > 1:
    dx = strided_input_gradient(g, rhs, lhs.shape, strides, padding)
  else:
    _, input_vjp = jax.vjp(lambda x: _plain(static, x, rhs), lhs)
    dx = input_vjp(g)[0]
  if (forms and rhs.shape[:2] == (1, 1) and
      tuple(padding) == ((0, 0), (0, 0))):
    dw = _pointwise_weight_gradient(lhs, rhs, g, strides)
  else:
    stored = materialize(lhs)
    _, weight_vjp = jax.vjp(lambda w: _plain(static, stored, w), rhs)
    dw = weight_vjp(materialize(g))[0]
  return dx.astype(lhs.dtype), dw


_conv.defvjp(_conv_fwd, _conv_bwd)


# Item 3 (border forms) applies to 3x3 stride-1 convs padded by one on each
# side whose sides are at most this many pixels: at 8 px a padded 3x3 conv
# spends 16% of its multiply-adds on the padding, at 4 px 31%; at 16 px
# (8%) the five smaller convolutions were no faster (bench/conv_layers.py).
BORDER_MAX_SIDE = 8


def _border_applies(static: tuple, lhs: jax.Array, rhs: jax.Array) -> bool:
  side = lhs.shape[1:3] if lhs.ndim == 4 else ()
  return (_simple(static, lhs, rhs) and tuple(static[0]) == (1, 1) and
          tuple(rhs.shape[:2]) == (3, 3) and
          tuple(static[1]) == ((1, 1), (1, 1)) and
          3 <= min(side) and max(side) <= BORDER_MAX_SIDE)


def border_conv(static: tuple, x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A 3x3 stride-1 conv padded by one, without multiply-adds on padding.

  Args:
    static: `_conv`'s static arguments of the padded conv (stride 1,
      padding ((1, 1), (1, 1))); each of the five parts replaces the
      padding and keeps the rest (layout, precision, result type).
    x: (N, H, W, C), H and W at least 3.
    kernel: (3, 3, C, F), HWIO.

  Returns:
    (N, H, W, F): the same sums as the padded convolution, each in another
    order (equal to float rounding). XLA's CPU kernels multiply the padding's
    zeros too; here the interior (H - 2, W - 2) is an unpadded conv, the
    first and last rows convs with the two kernel rows that reach the image
    (cropping the input by negative padding, so no copy), and the first and
    last columns of the interior likewise with two kernel columns. Only the
    four corners still multiply padding (2 of their 6 taps).
  """
  h, w = x.shape[1:3]

  def part(padding, taps):
    return _plain(static[:1] + (padding,) + static[2:], x, taps)

  inner = part(((0, 0), (0, 0)), kernel)
  top = part(((0, 2 - h), (1, 1)), kernel[1:])
  bottom = part(((2 - h, 0), (1, 1)), kernel[:2])
  left = part(((0, 0), (0, 2 - w)), kernel[:, 1:])
  right = part(((0, 0), (2 - w, 0)), kernel[:, :2])
  middle = jnp.concatenate([left, inner, right], axis=2)
  return jnp.concatenate([top, middle, bottom], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _border_conv(static: tuple, lhs: jax.Array, rhs: jax.Array) -> jax.Array:
  return border_conv(static, lhs, rhs)


def _border_fwd(static, lhs, rhs):
  return border_conv(static, lhs, rhs), (lhs, rhs)


def _border_bwd(static, residuals, g):
  """Both gradients in border form.

  The input gradient of a 3x3 stride-1 conv padded by one is the same
  conv of g with the kernel turned 180 degrees and its channels swapped;
  the weight gradient is the VJP of `border_conv` (five weight-gradient
  convs with almost no padding to multiply) on stored operands (item 1).
  """
  lhs, rhs = residuals
  # Stored once: fused into each of the five convs' kernel operands, the
  # turn and swap cost 4 px layers a tenth of their time.
  flipped = materialize(jnp.swapaxes(rhs[::-1, ::-1], 2, 3).astype(g.dtype))
  dx = border_conv(static[:6] + (None,) + static[7:], g, flipped)
  stored = materialize(lhs)
  _, weight_vjp = jax.vjp(lambda w: border_conv(static, stored, w), rhs)
  dw = weight_vjp(materialize(g))[0]
  return dx.astype(lhs.dtype), dw


_border_conv.defvjp(_border_fwd, _border_bwd)
