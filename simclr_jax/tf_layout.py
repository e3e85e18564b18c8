"""google-research/simclr's TF2 variable layout, mapped onto our Flax model.

google's TF2 code (`tf2/resnet.py`, `tf2/model.py`) saves its Keras model with
`tf.train.Checkpoint(model=...)`. A variable's checkpoint key is its object
path, e.g.

    model/resnet_model/block_groups/0/layers/0/conv_relu_dropblock_layers/1/bn/gamma
    model/_projection_head/linear_layers/2/dense/kernel
    model/supervised_head/linear_layer/dense/bias

followed by `/.ATTRIBUTES/VARIABLE_VALUE` (dropped here). Lists index every
layer, also those without variables (identity, max-pool, dropout-like
blocks), so the position of a convolution in its list depends on the
architecture. This module lists, for an architecture, which google path holds
which of our variables (`variable_map`), infers the architecture from the
paths and shapes of a checkpoint (`infer_architecture`), and converts
between the two naming schemes (`to_flax`, `to_google`) without changing any
value: TF's conv kernels (kh, kw, in, out) and dense kernels (in, out) are
laid out as Flax's.

BatchNorm: google's gamma, beta, moving_mean, moving_variance are our
params scale, bias and batch_stats mean, var. The supervised head
(`supervised_head`, a dense layer with bias on h) is our linear probe
(`probe`).

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import numpy as np

from simclr_jax.models import resnet

FlaxPath = tuple[str, ...]  # ('params' | 'batch_stats', module, ..., leaf)

RESNET = 'model/resnet_model'
STEM = f'{RESNET}/initial_conv_relu_max_pool'
HEAD = 'model/_projection_head/linear_layers'
SUPERVISED = 'model/supervised_head/linear_layer/dense'
# google's default `sk_ratio` for selective kernels (all published SK models).
GOOGLE_SK_RATIO = 0.0625
GOOGLE_BASE_WIDTH = 64

# Every attribute name on a path from the checkpoint root to a model variable;
# lists contribute their indices. Used to find a variable's path among the
# aggregate edges (`variables/17`, `keras_api`, ...) of a SavedModel.
VOCABULARY = frozenset({
    'model', 'resnet_model', 'initial_conv_relu_max_pool', 'block_groups',
    'layers', 'projection_layers', 'shortcut_layers',
    'conv_relu_dropblock_layers', 'conv2d_bn_layers', 'conv2d', 'bn',
    'conv2d_fixed_padding', 'batch_norm_relu', 'batch_norm_relu_1',
    'conv2d_0', 'conv2d_1', '_projection_head', 'linear_layers', 'dense',
    'bn_relu', 'supervised_head', 'linear_layer', 'kernel', 'bias', 'gamma',
    'beta', 'moving_mean', 'moving_variance',
})


class UnrecognisedCheckpoint(ValueError):
  """The variables are not those of a model google's SimCLR code builds."""


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What determines google's variable layout (and our model's variables).

  Attributes:
    depth: ResNet depth (18, 34, 50, 101, 152, 200).
    base_width: channels of the stem and the first stage (ours:
      base_width * width_multiplier; google's: 64 * width_multiplier).
    width_multiplier: 1, 2, 3 or 4 (1 when base_width is not 64's multiple).
    stem: 'imagenet' or 'cifar'.
    sk_ratio: selective kernels; 0 disables.
    num_proj_layers: layers of the projection head (0: none).
    proj_out_dim: output width of the projection head's last layer.
    num_classes: classes of the supervised head (our probe); 0: none.
  """
  depth: int
  base_width: int
  width_multiplier: int
  stem: str
  sk_ratio: float
  num_proj_layers: int
  proj_out_dim: int
  num_classes: int

  def model_fields(self) -> dict[str, Any]:
    """The `config.model` fields (configs/default.py) this architecture sets."""
    return {'depth': self.depth, 'base_width': self.base_width,
            'width_multiplier': self.width_multiplier, 'stem': self.stem,
            'sk_ratio': self.sk_ratio, 'num_proj_layers': self.num_proj_layers,
            'proj_out_dim': self.proj_out_dim}

  @classmethod
  def from_model_config(cls, model_config: Any,
                        num_classes: int) -> Architecture:
    """From `config.model` and the probe's classes."""
    c = model_config
    return cls(depth=c.depth, base_width=c.base_width,
               width_multiplier=c.width_multiplier, stem=c.stem,
               sk_ratio=float(c.sk_ratio), num_proj_layers=c.num_proj_layers,
               proj_out_dim=c.proj_out_dim, num_classes=num_classes)


# ------------------------------------------------------------------ the map


def _conv(holder: str, ours: FlaxPath) -> dict[str, FlaxPath]:
  """A bias-free conv: `holder` is the Keras layer owning `kernel`."""
  return {f'{holder}/kernel': ('params', *ours, 'kernel')}


def _bn(layer: str, ours: FlaxPath, center: bool = True) -> dict[str, FlaxPath]:
  """google's `BatchNormRelu` at `layer` (its Keras BN is `layer/bn`)."""
  out = {f'{layer}/bn/gamma': ('params', *ours, 'scale'),
         f'{layer}/bn/moving_mean': ('batch_stats', *ours, 'mean'),
         f'{layer}/bn/moving_variance': ('batch_stats', *ours, 'var')}
  if center:
    out[f'{layer}/bn/beta'] = ('params', *ours, 'bias')
  return out


def _stem(arch: Architecture) -> dict[str, FlaxPath]:
  """The stem list: convs, BNs and variable-free layers, by position."""
  enc = ('encoder',)
  if arch.stem == 'cifar':  # conv, identity, BN, identity
    return {**_conv(f'{STEM}/0/conv2d', enc + ('stem_conv',)),
            **_bn(f'{STEM}/2', enc + ('stem_bn',))}
  if arch.sk_ratio > 0:  # 3 convs (BN between), identity, BN, max-pool, identity
    return {**_conv(f'{STEM}/0/conv2d', enc + ('stem_conv1',)),
            **_bn(f'{STEM}/1', enc + ('stem_bn1',)),
            **_conv(f'{STEM}/2/conv2d', enc + ('stem_conv2',)),
            **_bn(f'{STEM}/3', enc + ('stem_bn2',)),
            **_conv(f'{STEM}/4/conv2d', enc + ('stem_conv3',)),
            **_bn(f'{STEM}/6', enc + ('stem_bn3',))}
  # 7x7 conv, identity, BN, max-pool, identity
  return {**_conv(f'{STEM}/0/conv2d', enc + ('stem_conv',)),
          **_bn(f'{STEM}/2', enc + ('stem_bn',))}


def _shortcut(layers: str, ours: FlaxPath, stage: int,
              resnet_d: bool) -> dict[str, FlaxPath]:
  """The projection shortcut list of a stage's first block.

  ResNet-D (selective-kernel networks) puts an average pool before the conv,
  and in strided stages (all but the first) a padding layer before that.
  """
  i = (2 if stage > 0 else 1) if resnet_d else 0
  return {**_conv(f'{layers}/{i}/conv2d', ours + ('shortcut', 'conv')),
          **_bn(f'{layers}/{i + 1}', ours + ('shortcut', 'bn'))}


def _bottleneck(block: str, ours: FlaxPath, sk: bool) -> dict[str, FlaxPath]:
  """conv_relu_dropblock_layers: conv, BN, drop, 3x3 (or SK), drop, conv, BN, drop."""
  layers = f'{block}/conv_relu_dropblock_layers'
  out = {**_conv(f'{layers}/0/conv2d', ours + ('conv1',)),
         **_bn(f'{layers}/1', ours + ('bn1',))}
  if sk:  # One SK_Conv2D layer at 3 replaces the 3x3 conv and its BN.
    s, o = f'{layers}/3', ours + ('sk_conv',)
    out.update({
        **_conv(f'{s}/conv2d_fixed_padding/conv2d', o + ('conv',)),
        **_bn(f'{s}/batch_norm_relu', o + ('bn',)),
        **_conv(f'{s}/conv2d_0', o + ('attention_conv1',)),
        **_bn(f'{s}/batch_norm_relu_1', o + ('attention_bn',)),
        **_conv(f'{s}/conv2d_1', o + ('attention_conv2',))})
    last = 5
  else:
    out.update({**_conv(f'{layers}/3/conv2d', ours + ('conv2',)),
                **_bn(f'{layers}/4', ours + ('bn2',))})
    last = 6
  out.update({**_conv(f'{layers}/{last}/conv2d', ours + ('conv3',)),
              **_bn(f'{layers}/{last + 1}', ours + ('bn3',))})
  return out


def _basic(block: str, ours: FlaxPath) -> dict[str, FlaxPath]:
  """conv2d_bn_layers: conv, BN, conv, BN."""
  layers = f'{block}/conv2d_bn_layers'
  return {**_conv(f'{layers}/0/conv2d', ours + ('conv1',)),
          **_bn(f'{layers}/1', ours + ('bn1',)),
          **_conv(f'{layers}/2/conv2d', ours + ('conv2',)),
          **_bn(f'{layers}/3', ours + ('bn2',))}


def variable_map(arch: Architecture) -> dict[str, FlaxPath]:
  """google's variable paths (no `/.ATTRIBUTES/...` suffix) -> our paths.

  Args:
    arch: the architecture.

  Returns:
    {google path: ('params' | 'batch_stats', module, ..., leaf)}, one entry
    per variable of our `SimCLRModel` (probe included when num_classes > 0),
    so the map is a bijection between the two models' variables.
  """
  out = _stem(arch)
  bottleneck = resnet.uses_bottleneck(arch.depth)
  sk = arch.sk_ratio > 0
  for stage, blocks in enumerate(resnet.STAGE_SIZES[arch.depth]):
    for b in range(blocks):
      block = f'{RESNET}/block_groups/{stage}/layers/{b}'
      ours = ('encoder', f'stage{stage + 1}_block{b}')
      if b == 0:
        name = 'projection_layers' if bottleneck else 'shortcut_layers'
        out.update(_shortcut(f'{block}/{name}', ours, stage, sk))
      out.update(_bottleneck(block, ours, sk) if bottleneck
                 else _basic(block, ours))
  for j in range(arch.num_proj_layers):
    last = j == arch.num_proj_layers - 1
    out.update(_conv(f'{HEAD}/{j}/dense', ('projection_head', f'dense_{j}')))
    out.update(_bn(f'{HEAD}/{j}/bn_relu', ('projection_head', f'bn_{j}'),
                   center=not last))
  if arch.num_classes > 0:
    out[f'{SUPERVISED}/kernel'] = ('params', 'probe', 'kernel')
    out[f'{SUPERVISED}/bias'] = ('params', 'probe', 'bias')
  return out


# ---------------------------------------------------------------- inference


def _one(pattern: str, paths: Any) -> list[re.Match]:
  regex = re.compile(pattern)
  return [m for m in map(regex.fullmatch, sorted(paths)) if m]


def _width(channels: int) -> tuple[int, int]:
  """(base_width, width_multiplier) for a first stage of `channels`."""
  w, rest = divmod(channels, GOOGLE_BASE_WIDTH)
  if rest == 0 and w in (1, 2, 3, 4):
    return GOOGLE_BASE_WIDTH, w
  return channels, 1


def _sk_ratio(shapes: Mapping[str, tuple[int, ...]]) -> float:
  """The ratio that gives every SK attention layer its width.

  google's SK attention layer has max(int(filters * ratio), 32) channels;
  0.0625 (google's default) is tried first, then each measured ratio.
  """
  pairs = []  # (filters, attention width) per SK block
  for m in _one(r'(.*/conv_relu_dropblock_layers/3)/conv2d_0/kernel', shapes):
    _, _, filters, mid = shapes[m.group(0)]
    pairs.append((filters, mid))
  candidates = [GOOGLE_SK_RATIO] + [mid / f for f, mid in pairs
                                    if mid > resnet.SK_MIN_DIM]
  for r in candidates:
    if all(max(int(f * r), resnet.SK_MIN_DIM) == mid for f, mid in pairs):
      return r
  raise UnrecognisedCheckpoint(
      f'no sk_ratio gives the SK attention widths {sorted(set(pairs))}')


def infer_architecture(shapes: Mapping[str, tuple[int, ...]]) -> Architecture:
  """The architecture of google's model whose variables have these shapes.

  Args:
    shapes: {google path (no suffix): shape} of the model's variables (other
      variables, e.g. `global_step`, are ignored).

  Returns:
    The architecture; `variable_map(arch)` has exactly the model's paths.

  Raises:
    UnrecognisedCheckpoint: no SimCLR ResNet, or paths/shapes that google's
      code would not write for the inferred architecture.
  """
  model = {k: tuple(v) for k, v in shapes.items() if k.startswith('model/')}
  blocks = _one(r'model/resnet_model/block_groups/(\d+)/layers/(\d+)/'
                r'(conv_relu_dropblock_layers|conv2d_bn_layers)/0/conv2d/kernel',
                model)
  if not blocks:
    sample = ', '.join(sorted(shapes)[:3]) or 'no variables'
    raise UnrecognisedCheckpoint(
        'no ResNet of google-research/simclr found (expected variables under '
        f'{RESNET}/block_groups/; found {sample})')
  counts = [0, 0, 0, 0]
  kinds = set()
  for m in blocks:
    stage = int(m.group(1))
    if stage > 3:
      raise UnrecognisedCheckpoint(f'unexpected block group {stage}')
    counts[stage] = max(counts[stage], int(m.group(2)) + 1)
    kinds.add(m.group(3))
  if len(kinds) != 1:
    raise UnrecognisedCheckpoint('mixed basic and bottleneck blocks')
  bottleneck = kinds == {'conv_relu_dropblock_layers'}
  depths = [d for d, sizes in resnet.STAGE_SIZES.items()
            if tuple(counts) == sizes and resnet.uses_bottleneck(d) == bottleneck]
  if not depths:
    raise UnrecognisedCheckpoint(
        f'blocks per stage {tuple(counts)} '
        f'({"bottleneck" if bottleneck else "basic"}) are no ResNet depth')
  depth = depths[0]
  first = model[blocks[0].group(0)]  # (1 or 3, k, in, filters) of stage 1
  base_width, width_multiplier = _width(first[-1])

  stem_kernel = model.get(f'{STEM}/0/conv2d/kernel')
  if stem_kernel is None:
    raise UnrecognisedCheckpoint(f'no stem convolution {STEM}/0/conv2d/kernel')
  resnet_d_shortcut = f'{RESNET}/block_groups/0/layers/0/' + (
      'projection_layers' if bottleneck else 'shortcut_layers') + (
          '/1/conv2d/kernel')
  sk = resnet_d_shortcut in model
  if stem_kernel[0] == 7:
    stem = 'imagenet'
  elif f'{STEM}/4/conv2d/kernel' in model:
    stem, sk = 'imagenet', True
  else:
    stem = 'cifar'
  sk_ratio = (_sk_ratio(model) if bottleneck else GOOGLE_SK_RATIO) if sk else 0.0

  head = _one(rf'{HEAD}/(\d+)/dense/kernel', model)
  num_proj_layers = len(head)
  proj_out_dim = (model[f'{HEAD}/{num_proj_layers - 1}/dense/kernel'][-1]
                  if head else 128)
  supervised = model.get(f'{SUPERVISED}/kernel')
  arch = Architecture(
      depth=depth, base_width=base_width, width_multiplier=width_multiplier,
      stem=stem, sk_ratio=sk_ratio, num_proj_layers=num_proj_layers,
      proj_out_dim=proj_out_dim,
      num_classes=supervised[-1] if supervised else 0)
  expected = set(variable_map(arch))
  missing, extra = sorted(expected - set(model)), sorted(set(model) - expected)
  if missing or extra:
    what = (f'missing {missing[0]}' if missing else f'unexpected {extra[0]}')
    raise UnrecognisedCheckpoint(
        f'variables do not match google\'s ResNet-{depth} layout '
        f'({len(missing)} missing, {len(extra)} unexpected: {what})')
  return arch


# --------------------------------------------------------------- conversion


def _set(tree: dict, path: FlaxPath, value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _flatten(tree: Mapping[str, Any], prefix: FlaxPath = ()) -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def to_flax(arrays: Mapping[str, np.ndarray],
            arch: Architecture) -> dict[str, Any]:
  """google's variables -> our {'params': ..., 'batch_stats': ...}.

  Args:
    arrays: {google path: float32 array} (extra paths are ignored).
    arch: the architecture (e.g. from `infer_architecture`).

  Returns:
    Nested dicts of the same arrays (not copied), shaped like
    `SimCLRModel.init`'s variables.
  """
  out: dict[str, Any] = {'params': {}, 'batch_stats': {}}
  for google, ours in variable_map(arch).items():
    _set(out, ours, arrays[google])
  return out


def to_google(variables: Mapping[str, Any],
              arch: Architecture) -> dict[str, np.ndarray]:
  """Our {'params', 'batch_stats'} -> {google path: array}; the inverse of `to_flax`.

  Raises:
    ValueError: the variables are not exactly those of `arch`'s model.
  """
  flat = _flatten({k: variables[k] for k in ('params', 'batch_stats')
                   if k in variables})
  mapping = variable_map(arch)
  missing = sorted(set(mapping.values()) - set(flat))
  extra = sorted(set(flat) - set(mapping.values()))
  if missing or extra:
    raise ValueError(
        f'variables are not those of {arch} ('
        + (f'missing {"/".join(missing[0])}' if missing else
           f'unexpected {"/".join(extra[0])}') + ')')
  return {google: flat[ours] for google, ours in mapping.items()}
