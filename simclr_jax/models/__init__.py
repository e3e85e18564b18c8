"""SimCLR's networks: ResNet v1 encoders, projection heads, the SimCLR module.

    model = create_model(config.model, num_classes=10, axis_name='batch')
    variables = model.init(key, jnp.zeros((2, 32, 32, 3)), train=False)
    out, updates = model.apply(variables, x, train=True,
                               mutable=['batch_stats'])  # inside shard_map
    out['h'], out['z'], out['probe_logits']
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from simclr_jax.models.heads import ProjectionHead
from simclr_jax.models.resnet import DEPTHS
from simclr_jax.models.resnet import ResNet
from simclr_jax.models.resnet import STAGE_SIZES
from simclr_jax.models.resnet import STEMS
from simclr_jax.models.resnet import feature_dim
from simclr_jax.models.simclr import SimCLRModel

__all__ = [
    'DEPTHS', 'DTYPES', 'STAGE_SIZES', 'STEMS', 'WIDTHS', 'ProjectionHead',
    'ResNet', 'SimCLRModel', 'count_params', 'create_model', 'feature_dim',
    'validate_model_config',
]

# 1, 2, 4 are SimCLR v1's widths; 3 is SimCLRv2's largest model (r152_3x_sk1).
WIDTHS = (1, 2, 3, 4)
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _is_int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def validate_model_config(model_config: Any, num_classes: int = 0) -> None:
  """Raises ValueError naming the first bad field of `config.model`."""
  c = model_config
  if not _is_int(c.depth) or c.depth not in DEPTHS:
    raise ValueError(f'model.depth must be one of {DEPTHS}, got {c.depth!r}')
  if not _is_int(c.width_multiplier) or c.width_multiplier not in WIDTHS:
    raise ValueError(f'model.width_multiplier must be one of {WIDTHS}, '
                     f'got {c.width_multiplier!r}')
  if not _is_int(c.base_width) or c.base_width <= 0:
    raise ValueError(
        f'model.base_width must be a positive int, got {c.base_width!r}')
  if c.stem not in STEMS:
    raise ValueError(f'model.stem must be one of {STEMS}, got {c.stem!r}')
  if c.dtype not in DTYPES:
    raise ValueError(
        f'model.dtype must be one of {tuple(DTYPES)}, got {c.dtype!r}')
  if (isinstance(c.sk_ratio, bool) or not isinstance(c.sk_ratio, (int, float))
      or not 0 <= c.sk_ratio < math.inf):
    raise ValueError(
        f'model.sk_ratio must be a number >= 0 (0 disables selective kernels; '
        f'SimCLRv2 uses 0.0625), got {c.sk_ratio!r}')
  if (c.sk_ratio > 0 and c.stem == 'imagenet' and
      c.base_width * c.width_multiplier < 2):
    raise ValueError('model.sk_ratio > 0 with the imagenet stem needs '
                     'base_width * width_multiplier >= 2')
  if not _is_int(c.num_proj_layers) or c.num_proj_layers < 0:
    raise ValueError(f'model.num_proj_layers must be an int >= 0, '
                     f'got {c.num_proj_layers!r}')
  if not _is_int(c.proj_out_dim) or c.proj_out_dim <= 0:
    raise ValueError(
        f'model.proj_out_dim must be a positive int, got {c.proj_out_dim!r}')
  if not 0 <= c.bn_momentum < 1:
    raise ValueError(
        f'model.bn_momentum must be in [0, 1), got {c.bn_momentum!r}')
  if not c.bn_epsilon > 0:
    raise ValueError(f'model.bn_epsilon must be > 0, got {c.bn_epsilon!r}')
  if not isinstance(getattr(c, 'remat', False), bool):
    raise ValueError(f'model.remat must be true or false, got {c.remat!r}')
  if not _is_int(num_classes) or num_classes < 0:
    raise ValueError(f'num_classes must be an int >= 0, got {num_classes!r}')


def create_model(model_config: Any, *, num_classes: int = 0,
                 axis_name: str | None = None,
                 conv_gradients: str = 'xla') -> SimCLRModel:
  """Builds the SimCLR network from `config.model` (configs/default.py).

  Args:
    model_config: the `model` ConfigDict (depth, width_multiplier, base_width,
      stem, sk_ratio, zero_init_residual, num_proj_layers, proj_out_dim,
      bn_momentum, bn_epsilon, dtype, remat).
    num_classes: classes of the online linear probe; 0 for none.
    axis_name: mapped axis for global BatchNorm (e.g. 'batch' when the model
      runs inside `jax.shard_map` over a mesh axis 'batch'); None for local BN.
    conv_gradients: the convolutions' gradient forms, one of
      `conv.GRADIENTS` (`resnet.ResNet`; faster on XLA CPU, same values).

  Returns:
    An unbound `SimCLRModel`; `model.init(key, x, train=False)` gives
    {'params', 'batch_stats'}.

  Raises:
    ValueError: for an unknown depth, width, stem or dtype, or another bad
      field.
  """
  validate_model_config(model_config, num_classes)
  c = model_config
  return SimCLRModel(
      depth=c.depth, width_multiplier=c.width_multiplier,
      base_width=c.base_width, stem=c.stem, sk_ratio=float(c.sk_ratio),
      zero_init_residual=bool(c.zero_init_residual),
      num_proj_layers=c.num_proj_layers, proj_out_dim=c.proj_out_dim,
      num_classes=num_classes, bn_momentum=float(c.bn_momentum),
      bn_epsilon=float(c.bn_epsilon), dtype=DTYPES[c.dtype],
      axis_name=axis_name, remat=bool(getattr(c, 'remat', False)),
      conv_gradients=conv_gradients)


def count_params(module: Any, image_size: int = 32, **kwargs: Any) -> int:
  """Trainable parameters of a module called as (x, train), via eval_shape.

  Nothing is allocated or computed: the parameter shapes come from tracing
  `module.init` on a (1, image_size, image_size, 3) input. `kwargs` go to
  `init` after `train=False`.
  """
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  shapes = jax.eval_shape(
      lambda x: module.init(jax.random.key(0), x, train=False, **kwargs), x)
  return sum(math.prod(p.shape) for p in jax.tree.leaves(shapes['params']))
