"""The SimCLR network: ResNet encoder f, projection head g, online linear probe.

    x (N, H, W, 3) in [0, 1] --encoder--> h (N, C) --projection_head--> z
                                           |
                                 stop_gradient --probe--> probe_logits

Images are fed as they are, without mean/std normalisation (as google's
SimCLR). Submodules are named 'encoder', 'projection_head' and 'probe', so
optimisers can select parameters by the top-level key of the params tree.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax.models import heads
from simclr_jax.models import resnet


class SimCLRModel(nn.Module):
  """ResNet encoder + projection head (+ linear probe when num_classes > 0).

  Attributes:
    depth, width_multiplier, base_width, stem, sk_ratio, zero_init_residual:
      the encoder (see `resnet.ResNet`).
    num_proj_layers: layers of the projection head (2 for v1, 3 for v2).
    proj_out_dim: dimension of z.
    num_classes: classes of the online linear probe; 0 means no probe.
    bn_momentum, bn_epsilon: every BatchNorm's decay and epsilon.
    dtype: compute dtype of the encoder and the projection head's hidden
      layers; the head's output layer and the probe compute in float32, and
      parameters, BatchNorm statistics and the outputs are float32.
    axis_name: mapped axis (e.g. 'batch' under `jax.shard_map`) over which
      every BatchNorm averages its statistics when train=True (global BN).
    remat: rematerialise the encoder's residual blocks (see `resnet.ResNet`).
    conv_gradients: the encoder's gradient forms (see `resnet.ResNet`;
      CPU speed, same values).
  """
  depth: int = 50
  width_multiplier: int = 1
  base_width: int = 64
  stem: str = 'imagenet'
  sk_ratio: float = 0.0
  zero_init_residual: bool = False
  num_proj_layers: int = 2
  proj_out_dim: int = 128
  num_classes: int = 0
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32
  axis_name: str | None = None
  remat: bool = False
  conv_gradients: str = 'xla'

  def setup(self):
    self.encoder = resnet.ResNet(
        depth=self.depth, width_multiplier=self.width_multiplier,
        base_width=self.base_width, stem=self.stem, sk_ratio=self.sk_ratio,
        zero_init_residual=self.zero_init_residual,
        bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
        dtype=self.dtype, axis_name=self.axis_name, remat=self.remat,
        conv_gradients=self.conv_gradients)
    self.projection_head = heads.ProjectionHead(
        num_layers=self.num_proj_layers, out_dim=self.proj_out_dim,
        bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
        dtype=self.dtype, axis_name=self.axis_name)
    if self.num_classes > 0:
      # float32 whatever the compute dtype, as the projection's output layer.
      self.probe = nn.Dense(
          self.num_classes, use_bias=True, dtype=jnp.float32,
          param_dtype=jnp.float32, kernel_init=heads.dense_kernel_init())

  def _check_images(self, x: jax.Array) -> None:
    if x.ndim != 4:
      raise ValueError(
          f'SimCLRModel expects images (N, H, W, C), got shape {x.shape}')
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(
          f'SimCLRModel expects float images in [0, 1], got {x.dtype} '
          '(convert uint8 images with x / 255)')

  def encode(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Only the representation: (N, H, W, C) -> h float32 (N, feature_dim).

    Use with `model.apply(variables, x, method=SimCLRModel.encode)` for
    feature extraction; it skips the projection head and the probe.
    """
    self._check_images(x)
    return self.encoder(x, train=train)

  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    """Runs encoder, projection head and probe.

    Args:
      x: float32 (N, H, W, 3) images in [0, 1] (not normalised).
      train: BatchNorm uses and updates batch statistics (global over
        `axis_name` when set) when True; running averages when False.

    Returns:
      {'h': float32 (N, feature_dim) representation after global pooling,
       'z': float32 (N, proj_out_dim) projection,
       'probe_logits': float32 (N, num_classes), only when num_classes > 0,
         computed on stop_gradient(h) so the probe never trains the encoder}.
    """
    self._check_images(x)
    h = self.encoder(x, train=train)
    z = self.projection_head(h, train=train)
    out = {'h': h, 'z': z}
    if self.num_classes > 0:
      logits = self.probe(jax.lax.stop_gradient(h))
      out['probe_logits'] = logits.astype(jnp.float32)
    chex.assert_type([h, z], jnp.float32)
    return out
