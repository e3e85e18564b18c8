"""SimCLR views: one view of one image, and two views of every image of a batch.

One view (in the order given in the package docstring): `sample_view_params`
draws all of its randomness into a `ViewParams` pytree, `apply_view_params`
makes the view from it (crop and flip, colour jitter, grayscale, blur, each
applied with its probability), `augment_view` is the two together.
`two_views` is the batched entry point of the train step: it checks the
batch, gives every example its key and runs the views with a strategy
('vmap': selects, every op computed for every view; 'map': a `lax.map` with
real branches; 'auto': 'map' on CPU, 'vmap' elsewhere, see
`resolve_strategy`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
from jax import lax
import jax.numpy as jnp

from simclr_jax.augment.blur import blur_radius
from simclr_jax.augment.blur import gaussian_blur
from simclr_jax.augment.color import clip_unit
from simclr_jax.augment.color import to_grayscale
from simclr_jax.augment.crop import CropDraw
from simclr_jax.augment.crop import _crop_from_uniforms
from simclr_jax.augment.crop import _num_crop_uniforms
from simclr_jax.augment.crop import crop_and_resize
from simclr_jax.augment.jitter import JitterParams
from simclr_jax.augment.jitter import _NUM_JITTER_UNIFORMS
from simclr_jax.augment.jitter import _check_branch
from simclr_jax.augment.jitter import _jitter_from_uniforms
from simclr_jax.augment.jitter import apply_jitter
from simclr_jax.augment.spec import STRATEGIES
from simclr_jax.augment.spec import AugmentSpec

def _check_image(image: jax.Array) -> None:
  chex.assert_rank(image, 3)
  chex.assert_axis_dimension(image, -1, 3)
  chex.assert_type(image, float)


# --------------------------------------------------------------------------
# One view.


class ViewParams(NamedTuple):
  """Every random draw of one augmented view (a pytree of arrays).

  Attributes:
    crop: `CropDraw` (box [0, 0, H, W] when the crop is skipped).
    flip: bool, mirror left-right.
    jitter: bool, apply the colour jitter.
    jitter_params: `JitterParams`.
    gray: bool, convert to grayscale.
    blur: bool, apply the Gaussian blur (always False when config.blur is
      off).
    sigma: float32, blur sigma.
  """
  crop: CropDraw
  flip: jax.Array
  jitter: jax.Array
  jitter_params: JitterParams
  gray: jax.Array
  blur: jax.Array
  sigma: jax.Array


def sample_view_params(key: jax.Array, image_shape: tuple[int, ...],
                       config: Any, crop: bool = True) -> ViewParams:
  """Draws all the randomness of one view.

  Args:
    key: PRNG key.
    image_shape: static (H, W, ...) of the image the view is made from.
    config: `config.augment` or `AugmentSpec`.
    crop: whether the view is cropped here (False for host-cropped views).
  Returns:
    `ViewParams` of scalars (and the (4,) box and order).
  """
  spec = AugmentSpec.from_config(config)
  height, width = int(image_shape[0]), int(image_shape[1])
  # One threefry call for every draw of the view (fast to compile and run).
  n_crop = _num_crop_uniforms(spec.crop_attempts)
  u = jax.random.uniform(key, (n_crop + _NUM_JITTER_UNIFORMS + 5,),
                         jnp.float32)
  u_crop, u_jitter, u = (u[:n_crop], u[n_crop:n_crop + _NUM_JITTER_UNIFORMS],
                         u[n_crop + _NUM_JITTER_UNIFORMS:])
  if crop:
    crop_draw = _crop_from_uniforms(u_crop, height, width, spec.crop_scale,
                                    spec.crop_ratio, spec.crop_attempts)
  else:
    crop_draw = CropDraw(box=jnp.array([0, 0, height, width], jnp.int32),
                         area=jnp.float32(1.0),
                         ratio=jnp.float32(width / height),
                         found=jnp.bool_(True))
  sigma_lo, sigma_hi = spec.blur_sigma
  # google's random_apply: apply when uniform < p.
  return ViewParams(
      crop=crop_draw,
      flip=u[0] < spec.flip_prob,
      jitter=u[1] < spec.color_jitter_prob,
      jitter_params=_jitter_from_uniforms(u_jitter, spec.color_jitter_strength,
                                          spec.brightness_mode),
      gray=u[2] < spec.grayscale_prob,
      blur=(u[3] < spec.blur_prob) & spec.blur,
      sigma=sigma_lo + (sigma_hi - sigma_lo) * u[4])


def _maybe(apply: jax.Array, prob: float, fn, x: jax.Array,
           branch: str) -> jax.Array:
  """fn(x) where `apply`, else x, by a select or a lax.cond.

  An op of probability 0 (1) is never (always) computed, with no branch.
  """
  if prob <= 0:
    return x
  if prob >= 1:
    return fn(x)
  if branch == 'cond':
    return lax.cond(apply, fn, lambda y: y, x)
  return jnp.where(apply, fn(x), x)


def apply_view_params(image: jax.Array, params: ViewParams, config: Any,
                      crop: bool = True, branch: str = 'select') -> jax.Array:
  """Makes the view described by `params` (see the package docstring's order).

  Args:
    image: float32 (H, W, 3) in [0, 1]; (S, S, 3) when crop is False.
    params: `ViewParams` from `sample_view_params`.
    config: `config.augment` or `AugmentSpec`.
    crop: crop and resize here (else the image must already be S x S).
    branch: how random decisions are made. 'select' (`jnp.where`) computes
      each op and selects its result or its input: what vmap makes of a
      `lax.cond` anyway, and the form that works batched inside
      `jax.shard_map`. 'cond' (`lax.cond`/`lax.switch`) computes only the ops
      a view uses: for unbatched use (a single image, or inside `lax.map`).
      An op whose probability is 0 in the config is never computed.
  Returns:
    float32 (S, S, 3) in [0, 1], S = config.output_size.
  """
  spec = AugmentSpec.from_config(config)
  _check_image(image)
  _check_branch(branch)
  size = spec.output_size
  do_flip = params.flip if spec.flip_prob > 0 else False
  if crop:
    # The flip is folded into the resampling taps.
    x = crop_and_resize(image, params.crop.box, size, flip=do_flip)
  else:
    if image.shape[:2] != (size, size):
      raise ValueError(f'an uncropped view must be {size}x{size} '
                       f'(output_size), got {image.shape[0]}x{image.shape[1]}')
    x = _maybe(params.flip, spec.flip_prob, lambda y: y[:, ::-1], image,
               branch)
  x = _maybe(params.jitter, spec.color_jitter_prob,
             lambda y: apply_jitter(y, params.jitter_params,
                                    spec.brightness_mode, branch), x, branch)
  x = _maybe(params.gray, spec.grayscale_prob, to_grayscale, x, branch)
  x = clip_unit(x)
  if spec.blur and blur_radius(spec.blur_kernel_size) > 0:
    x = _maybe(params.blur, spec.blur_prob,
               lambda y: gaussian_blur(y, params.sigma, spec.blur_kernel_size),
               x, branch)
    x = clip_unit(x)
  return x


def augment_view(key: jax.Array, image: jax.Array, config: Any,
                 crop: bool = True, branch: str = 'select') -> jax.Array:
  """One random SimCLR view of one image: sample then apply its params.

  Args:
    key: PRNG key.
    image: float32 (H, W, 3) in [0, 1] ((S, S, 3) when crop is False).
    config: `config.augment` or `AugmentSpec`.
    crop: do the random resized crop (False for host-cropped views).
    branch: 'select' or 'cond', see `apply_view_params`.
  Returns:
    float32 (S, S, 3) in [0, 1].
  """
  params = sample_view_params(key, image.shape, config, crop=crop)
  return apply_view_params(image, params, config, crop=crop, branch=branch)


# --------------------------------------------------------------------------
# Batched entry point.


def example_keys(key: jax.Array, num: int) -> jax.Array:
  """One typed key per example from one key or a (num,) batch of keys.

  Accepts new-style typed keys or raw uint32 key data ((2,) or (num, 2)).
  A single key is split into `num`, so `two_views(key, ...)` equals
  `two_views(jax.random.split(key, num), ...)`.
  """
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.dtype != jnp.uint32:
      raise ValueError(f'key must be a PRNG key, got dtype {key.dtype}')
    key = jax.random.wrap_key_data(key)
  if key.ndim == 0:
    return jax.random.split(key, num)
  if key.shape == (num,):
    return key
  raise ValueError('key must be one key or one key per example, shape '
                   f'({num},); got shape {key.shape}')


def resolve_strategy(strategy: str, platform: str | None = None) -> str:
  """'auto' -> 'map' on CPU, 'vmap' on GPU/TPU; others unchanged.

  Args:
    strategy: 'auto', 'vmap' or 'map'.
    platform: the platform the views are computed on ('cpu', 'gpu', 'tpu');
      None for `jax.default_backend()`. Steps on a mesh pass its devices'
      platform (`parallel.platform(mesh)`), so a step compiled ahead of time
      for a TPU on a CPU host gets the TPU's strategy.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f'strategy must be one of {STRATEGIES}, got {strategy!r}')
  if strategy == 'auto':
    if platform is None:
      platform = jax.default_backend()
    return 'map' if platform == 'cpu' else 'vmap'
  return strategy


def _to_float(image: jax.Array) -> jax.Array:
  if image.dtype == jnp.uint8:
    return image.astype(jnp.float32) * (1.0 / 255.0)  # tf convert_image_dtype
  return image.astype(jnp.float32)


def two_views(key: jax.Array, images: jax.Array, config: Any,
              strategy: str | None = None) -> tuple[jax.Array, jax.Array]:
  """Two independent SimCLR views of every image in a batch.

  Args:
    key: one PRNG key, or one per example (shape (N,)); inside shard_map
      the caller makes them differ per device (fold in the device or the
      example's global index). Example i uses key i (or split(key, N)[i]),
      split in two for its two views.
    images: uint8 (or float in [0, 1]), either
      (N, H, W, 3): the device does every step, crop included; or
      (N, 2, S, S, 3): two views cropped and resized on the host, S =
      config.output_size; the crop is skipped.
    config: `config.augment` (ConfigDict) or `AugmentSpec`.
    strategy: 'vmap' (all views at once; every random op computed for every
      view and selected: the data-parallel form for GPU/TPU), 'map' (a
      sequential lax.map over the 2N views with real branches, so a view
      pays only for the ops it draws: several times faster on CPU), 'auto'
      ('map' on CPU, 'vmap' elsewhere). None: config's `strategy` if it has
      one, else 'auto'. Both give the same views (to float rounding).
  Returns:
    (view_a, view_b), float32 (N, S, S, 3) each, in [0, 1].
  Raises:
    ValueError: for a bad config, shape, dtype or strategy.
  """
  spec = AugmentSpec.from_config(config)
  strategy = resolve_strategy(spec.strategy if strategy is None else strategy)
  if images.ndim not in (4, 5):
    raise ValueError('images must be (N, H, W, 3) or host-cropped '
                     f'(N, 2, S, S, 3), got shape {images.shape}')
  if images.shape[-1] != 3:
    raise ValueError(f'images must have 3 (RGB) channels, got shape '
                     f'{images.shape}')
  if images.dtype != jnp.uint8 and not jnp.issubdtype(images.dtype,
                                                      jnp.floating):
    raise ValueError(f'images must be uint8 (or float in [0, 1]), got '
                     f'{images.dtype}')
  if jnp.issubdtype(images.dtype, jnp.floating) and not isinstance(
      images, jax.core.Tracer):
    low, high = float(jnp.min(images)), float(jnp.max(images))
    if images.size and (low < -1e-6 or high > 1 + 1e-6):
      raise ValueError(
          'float images must be in [0, 1] (uint8 images in [0, 255] are '
          f'scaled by 1/255 here); got values in [{low:g}, {high:g}]')
  # A NumPy batch is indexed by traced indices under 'map': make it an array.
  images = jnp.asarray(images)
  num = images.shape[0]
  crop = images.ndim == 4
  if not crop:
    size = spec.output_size
    if images.shape[1] != 2 or images.shape[2:4] != (size, size):
      raise ValueError('host-cropped images must be (N, 2, S, S, 3) with S = '
                       f'output_size = {size}, got shape {images.shape}')
  # (N, 2) keys: one per view.
  keys = jax.vmap(lambda k: jax.random.split(k, 2))(example_keys(key, num))
  branch = 'cond' if strategy == 'map' else 'select'

  def view(k, image):
    return augment_view(k, _to_float(image), spec, crop=crop, branch=branch)

  if strategy == 'vmap':
    # Both views of an example vmapped inside the batch vmap: one traced copy
    # of the view code.
    views = jax.vmap(jax.vmap(view, in_axes=(0, None if crop else 0)))(
        keys, images)
  else:
    flat_keys = keys.reshape(2 * num)
    if crop:
      # View j is made from image j // 2 (no copy of the batch).
      views = lax.map(lambda a: view(a[0], images[a[1] // 2]),
                      (flat_keys, jnp.arange(2 * num)))
    else:
      views = lax.map(lambda a: view(*a),
                      (flat_keys, images.reshape((2 * num,) + images.shape[2:])))
    views = views.reshape((num, 2) + views.shape[1:])
  return views[:, 0], views[:, 1]
