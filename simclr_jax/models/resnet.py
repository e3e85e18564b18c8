"""ResNet v1 encoders as used by SimCLR (v1 and v2), in Flax linen.

The architecture follows google-research/simclr's `resnet.py`:

* depths 18 and 34 use basic blocks (two 3x3 convs), 50, 101, 152 and 200 use
  bottleneck blocks (1x1, 3x3, 1x1 with 4x expansion); the stride of a
  down-sampling bottleneck is on its 3x3 conv ("v1.5");
* the width multiplier multiplies every channel count, the stem's included,
  so the number of parameters grows about as width**2;
* convolutions have no bias; strided convolutions pad symmetrically
  ((k - 1) // 2 before, the rest after), as google's `Conv2dFixedPadding`;
  kernels are initialised with variance scaling (scale 1, fan-in, truncated
  normal), the default of `tf.keras.initializers.VarianceScaling`;
* the 'imagenet' stem is a 7x7/2 conv, BatchNorm, ReLU and a 3x3/2 max-pool
  ('SAME' padding); the 'cifar' stem is a 3x3/1 conv, BatchNorm and ReLU;
* the first block of every stage has a projection shortcut, 1x1 conv +
  BatchNorm, as in google's code: also the first block of ResNet-18/34,
  whose shape does not change (so google's checkpoints load; it adds
  64 * 64 + 2 * 64 parameters at 1x);
* the representation `h` is the global average of the last feature map.

Selective kernels (SimCLRv2, `sk_ratio > 0`) follow google's implementation:
the 3x3 conv of every bottleneck becomes an `SKConv` (two 3x3 streams mixed by
a softmax attention computed from their global average), the 'imagenet' stem
becomes three 3x3 convs (ResNet-D) and projection shortcuts average-pool
before a stride-1 1x1 conv (ResNet-D). Basic blocks keep plain 3x3 convs.

BatchNorm takes `axis_name`: inside `jax.shard_map` (or `pmap`) over that
axis its batch statistics are averaged over every device (global BN, as the
paper requires). With `axis_name` set, `train=True` must therefore run inside
such a mapped function; `train=False` runs anywhere.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.models import batchnorm
from simclr_jax.models import conv as conv_lib

DEPTHS = (18, 34, 50, 101, 152, 200)
STEMS = ('imagenet', 'cifar')

# Blocks per stage for each depth, and whether the depth uses bottlenecks.
STAGE_SIZES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
BOTTLENECK_EXPANSION = 4
SK_MIN_DIM = 32  # Minimum width of the selective-kernel attention layer.

ModuleDef = Any


def uses_bottleneck(depth: int) -> bool:
  """True for depths built from bottleneck blocks (50 and deeper)."""
  return depth >= 50


def feature_dim(depth: int, width_multiplier: int, base_width: int = 64) -> int:
  """Size C of the representation `h` of a ResNet.

  512 * width for ResNet-18/34, 2048 * width for ResNet-50 and deeper (with
  `base_width` 64; in general 8 or 32 times `base_width * width_multiplier`).
  """
  channels = 8 * base_width * width_multiplier
  return channels * BOTTLENECK_EXPANSION if uses_bottleneck(depth) else channels


def conv_kernel_init() -> jax.nn.initializers.Initializer:
  """google's conv initialiser: VarianceScaling(1, fan_in, truncated normal)."""
  return nn.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal')


def batch_norm(train: bool, momentum: float, epsilon: float, dtype: Any,
               axis_name: str | None) -> Callable[..., nn.Module]:
  """The BatchNorm constructor every layer of the model uses.

  Keras' (and Flax's) convention: running averages decay by `momentum`
  (new = momentum * old + (1 - momentum) * batch), the batch variance is the
  biased one. The variance is computed in two passes, the mean of squared
  deviations (as Keras' BatchNormalization), not Flax's default
  E[x^2] - E[x]^2: that one loses float32 precision on features whose mean
  is large against their spread (post-ReLU maps), enough to make a global-BN
  step differ between 1 and 8 devices by ten times float32 rounding. Two
  passes cost one more reduction (and, with `axis_name`, one more all-reduce
  of C floats) per layer.

  Args:
    train: use and update batch statistics (else the running averages).
    momentum: running-average decay.
    epsilon: added to the variance.
    dtype: compute dtype; scale, bias and statistics are float32.
    axis_name: mapped axis to average the statistics over (global BN).

  The layer is `batchnorm.BatchNorm`: `nn.BatchNorm`'s variables and
  statistics, with one fused VJP for its gradient (fewer passes over the
  activations than autodiff through the two-pass variance).

  Returns:
    A partial of `batchnorm.BatchNorm`; call it with `name=` (and
    `scale_init=`, `use_bias=` ...).
  """
  return functools.partial(
      batchnorm.BatchNorm, use_running_average=not train, momentum=momentum,
      epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32,
      axis_name=axis_name)


def _conv(features: int, kernel_size: int, strides: int, dtype: Any,
          name: str, gradients: str = 'xla') -> nn.Module:
  """Bias-free k x k conv with google's fixed symmetric padding.

  Pads (k - 1) // 2 before and the rest after, so a stride-s conv maps
  (N, H, W, Cin) to (N, ceil(H / s), ceil(W / s), features) and stride 1 is
  'SAME'. Computes in `dtype`; the kernel is float32. `gradients`: one of
  `conv.GRADIENTS`, the gradient forms (same forward pass).
  """
  k = kernel_size
  before = (k - 1) // 2
  pad = ((before, k - 1 - before), (before, k - 1 - before))
  return nn.Conv(features, (k, k), strides=(strides, strides), padding=pad,
                 use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=conv_kernel_init(), name=name,
                 conv_general_dilated=conv_lib.conv_function(gradients))


class SKConv(nn.Module):
  """Selective-kernel 3x3 convolution of SimCLRv2 (arXiv:1903.06586).

  A 3x3 conv gives two streams of `features` channels (BatchNorm + ReLU);
  their sum is globally averaged, squeezed to max(features * sk_ratio, 32)
  channels (1x1 conv, BatchNorm, ReLU) and expanded to 2 x `features`
  logits; a softmax over the two streams weights their sum.

  Attributes:
    features: output channels.
    strides: stride of the 3x3 conv.
    sk_ratio: width of the attention layer relative to `features`.
    norm: BatchNorm constructor (partial of `nn.BatchNorm`).
    dtype: compute dtype.
    conv_gradients: see `ResNet`.
  """
  features: int
  strides: int
  sk_ratio: float
  norm: ModuleDef
  dtype: Any = jnp.float32
  conv_gradients: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, Cin) -> (N, H / s, W / s, features) in the compute dtype."""
    f = self.features
    m = self.conv_gradients
    y = _conv(2 * f, 3, self.strides, self.dtype, 'conv', m)(x)
    y = nn.relu(self.norm(name='bn')(y))
    streams = jnp.stack(jnp.split(y, 2, axis=-1))  # (2, N, H, W, f)
    pooled = jnp.mean(jnp.sum(streams, axis=0), axis=(1, 2), keepdims=True)
    mid = max(int(f * self.sk_ratio), SK_MIN_DIM)
    a = _conv(mid, 1, 1, self.dtype, 'attention_conv1', m)(pooled)
    a = nn.relu(self.norm(name='attention_bn')(a))
    a = _conv(2 * f, 1, 1, self.dtype, 'attention_conv2', m)(a)
    weights = jax.nn.softmax(
        jnp.stack(jnp.split(a, 2, axis=-1)).astype(jnp.float32), axis=0)
    return jnp.sum(streams * weights.astype(streams.dtype), axis=0)


class Shortcut(nn.Module):
  """Projection shortcut: 1x1 conv (stride s) + BatchNorm, no ReLU.

  With `resnet_d` (selective-kernel networks) the stride is taken by a 2x2
  average pool first ('SAME' at stride 1, as google), then a 1x1/1 conv.
  """
  features: int
  strides: int
  norm: ModuleDef
  resnet_d: bool = False
  dtype: Any = jnp.float32
  conv_gradients: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, Cin) -> (N, H / s, W / s, features)."""
    if self.resnet_d:
      if self.strides > 1:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        x = nn.avg_pool(x, (2, 2), strides=(self.strides, self.strides),
                        padding='VALID')
      else:
        x = nn.avg_pool(x, (2, 2), strides=(1, 1), padding='SAME',
                        count_include_pad=False)
      x = _conv(self.features, 1, 1, self.dtype, 'conv',
                self.conv_gradients)(x)
    else:
      x = _conv(self.features, 1, self.strides, self.dtype, 'conv',
                self.conv_gradients)(x)
    return self.norm(name='bn')(x)


def _residual_parts(block: nn.Module, x: jax.Array, features: int):
  """The shortcut of `x` and the init of the block's last BN scale.

  Called inside a block's compact `__call__`: a projection shortcut (a child
  named 'shortcut') when `block.projection` is set or the stride or the width
  changes; the last BatchNorm scale starts at zero when `zero_init_residual`
  is set.
  """
  shortcut = x
  if block.projection or block.strides != 1 or x.shape[-1] != features:
    shortcut = Shortcut(features, block.strides, block.norm,
                        resnet_d=block.sk_ratio > 0, dtype=block.dtype,
                        conv_gradients=block.conv_gradients,
                        name='shortcut')(x)
  last_init = (nn.initializers.zeros if block.zero_init_residual
               else nn.initializers.ones)
  return shortcut, last_init


class BasicBlock(nn.Module):
  """ResNet-18/34 block: 3x3 conv, BN, ReLU, 3x3 conv, BN, + shortcut, ReLU.

  Attributes:
    filters: output channels.
    strides: stride of the first conv (2 at the start of stages 2-4).
    norm: BatchNorm constructor.
    zero_init_residual: initialise the last BatchNorm's scale to zero.
    sk_ratio: > 0 selects ResNet-D projection shortcuts (google's choice).
    dtype: compute dtype.
    projection: always use a projection shortcut (the first block of a
      stage); one is used anyway when the stride or the width changes.
    conv_gradients: see `ResNet`.
  """
  filters: int
  strides: int
  norm: ModuleDef
  zero_init_residual: bool = False
  sk_ratio: float = 0.0
  dtype: Any = jnp.float32
  projection: bool = False
  conv_gradients: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, Cin) -> (N, H / s, W / s, filters)."""
    shortcut, last_init = _residual_parts(self, x, self.filters)
    m = self.conv_gradients
    y = _conv(self.filters, 3, self.strides, self.dtype, 'conv1', m)(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = _conv(self.filters, 3, 1, self.dtype, 'conv2', m)(y)
    y = self.norm(name='bn2', scale_init=last_init)(y)
    return nn.relu(y + shortcut)


class BottleneckBlock(nn.Module):
  """ResNet-50+ block: 1x1, BN, ReLU, 3x3/s, BN, ReLU, 1x1 (x4), BN, + shortcut.

  With `sk_ratio > 0` the 3x3 conv (and its BN + ReLU) is an `SKConv`.
  Attributes as `BasicBlock`'s.
  """
  filters: int
  strides: int
  norm: ModuleDef
  zero_init_residual: bool = False
  sk_ratio: float = 0.0
  dtype: Any = jnp.float32
  projection: bool = False
  conv_gradients: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(N, H, W, Cin) -> (N, H / s, W / s, 4 * filters)."""
    out = BOTTLENECK_EXPANSION * self.filters
    shortcut, last_init = _residual_parts(self, x, out)
    m = self.conv_gradients
    y = _conv(self.filters, 1, 1, self.dtype, 'conv1', m)(x)
    y = nn.relu(self.norm(name='bn1')(y))
    if self.sk_ratio > 0:
      y = SKConv(self.filters, self.strides, self.sk_ratio, self.norm,
                 dtype=self.dtype, conv_gradients=m,
                 name='sk_conv')(y)
    else:
      y = _conv(self.filters, 3, self.strides, self.dtype, 'conv2', m)(y)
      y = nn.relu(self.norm(name='bn2')(y))
    y = _conv(out, 1, 1, self.dtype, 'conv3', m)(y)
    y = self.norm(name='bn3', scale_init=last_init)(y)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """ResNet v1 encoder; returns the globally pooled representation `h`.

  Attributes:
    depth: 18, 34, 50, 101, 152 or 200.
    width_multiplier: multiplies every channel count (1, 2, 4; 3 for v2's
      r152_3x).
    base_width: channels of the stem and of the first stage's 3x3 convs
      (64 in the paper).
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max-pool, /4) or 'cifar' (3x3/1).
    sk_ratio: selective kernels (SimCLRv2 uses 0.0625); 0 disables.
    zero_init_residual: zero-initialise the last BatchNorm scale per block.
    bn_momentum: running-average decay of BatchNorm statistics.
    bn_epsilon: BatchNorm epsilon.
    dtype: compute dtype (jnp.float32 or jnp.bfloat16); parameters and
      BatchNorm statistics are float32.
    axis_name: mapped axis over which BatchNorm averages its statistics.
    remat: rematerialise every residual block (`nn.remat`): the backward
      pass recomputes a block's activations instead of keeping them, so
      training needs less memory for about one more forward pass of compute.
      Same parameters, outputs and gradients.
    conv_gradients: one of `conv.GRADIENTS`. 'stored': every weight gradient
      reads a stored copy of the conv's input instead of recomputing it
      inside XLA CPU's transposing copy (same values); 'strided': that, and
      strided convs' input gradients skip dilation zeros (equal to float
      rounding); 'border': those, and 3x3 convs of 8 px and less skip their
      padding in the forward pass and both gradients (equal to float
      rounding): faster on CPU, extra copies elsewhere. 'xla': lax's own.
      The train step chooses by platform (`parallel.conv_gradients`).
  """
  depth: int = 50
  width_multiplier: int = 1
  base_width: int = 64
  stem: str = 'imagenet'
  sk_ratio: float = 0.0
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32
  axis_name: str | None = None
  remat: bool = False
  conv_gradients: str = 'xla'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Encodes images.

    Args:
      x: float (N, H, W, C) images (SimCLR feeds [0, 1] RGB, C = 3).
      train: BatchNorm uses (and updates) batch statistics when True, the
        running averages when False.

    Returns:
      h: float32 (N, feature_dim(depth, width_multiplier, base_width)).
    """
    if self.depth not in STAGE_SIZES:
      raise ValueError(
          f'ResNet depth must be one of {DEPTHS}, got {self.depth}')
    if self.stem not in STEMS:
      raise ValueError(f'ResNet stem must be one of {STEMS}, got {self.stem!r}')
    if x.ndim != 4:
      raise ValueError(
          f'ResNet expects (N, H, W, C) images, got shape {x.shape}')
    norm = batch_norm(train, self.bn_momentum, self.bn_epsilon, self.dtype,
                      self.axis_name)
    width = self.base_width * self.width_multiplier
    dtype = self.dtype
    m = self.conv_gradients

    if self.stem == 'cifar':
      x = _conv(width, 3, 1, dtype, 'stem_conv', m)(x)
      x = nn.relu(norm(name='stem_bn')(x))
    else:
      if self.sk_ratio > 0:  # ResNet-D stem: three 3x3 convs.
        x = _conv(width // 2, 3, 2, dtype, 'stem_conv1', m)(x)
        x = nn.relu(norm(name='stem_bn1')(x))
        x = _conv(width // 2, 3, 1, dtype, 'stem_conv2', m)(x)
        x = nn.relu(norm(name='stem_bn2')(x))
        x = _conv(width, 3, 1, dtype, 'stem_conv3', m)(x)
        x = nn.relu(norm(name='stem_bn3')(x))
      else:
        x = _conv(width, 7, 2, dtype, 'stem_conv', m)(x)
        x = nn.relu(norm(name='stem_bn')(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')

    block_cls = BottleneckBlock if uses_bottleneck(self.depth) else BasicBlock
    if self.remat:  # Same variable names: a lifted transform of each block.
      block_cls = nn.remat(block_cls)
    for stage, num_blocks in enumerate(STAGE_SIZES[self.depth]):
      for b in range(num_blocks):
        x = block_cls(
            filters=width * 2**stage,
            strides=2 if (stage > 0 and b == 0) else 1,
            norm=norm, zero_init_residual=self.zero_init_residual,
            sk_ratio=self.sk_ratio, dtype=dtype, projection=b == 0,
            conv_gradients=m, name=f'stage{stage + 1}_block{b}')(x)
    h = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
    chex.assert_shape(
        h, (x.shape[0], feature_dim(self.depth, self.width_multiplier,
                                    self.base_width)))
    return h
