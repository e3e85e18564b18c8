"""SimCLR data augmentation as pure JAX functions of a PRNG key and an image.

Every function here is jittable and vmappable: shapes are static, crop boxes
and random decisions are traced values, and nothing branches in Python on a
traced value. This package does not import TensorFlow, so it runs on GPU/TPU
hosts without it; the colour ops reproduce `tf.image` to float rounding.

Per view, in the order of google-research/simclr (v2 `preprocess_for_train`
followed by `batch_random_blur`):

  1. random resized crop with the distribution of
     `tf.image.sample_distorted_bounding_box` (area in `crop_scale`, aspect
     ratio uniform in `crop_ratio`, integer height uniform, at least 10% of
     the image, 100 attempts; see `sample_crop`), bicubic resize to
     `output_size`;
  2. horizontal flip with probability `flip_prob`;
  3. colour jitter with probability `color_jitter_prob`: brightness,
     contrast, saturation (0.8 s) and hue (0.2 s) in a random order, clipping
     to [0, 1] after each;
  4. grayscale with probability `grayscale_prob`; clip to [0, 1];
  5. Gaussian blur with probability `blur_prob` (if `blur`); clip to [0, 1].

The randomness of a view is drawn once by `sample_view_params` into a
`ViewParams` pytree and applied by `apply_view_params`, so tests (and users)
can inspect the draws; `augment_view` is the two together and `two_views` the
batched entry point used in the train step.

Cost. Under `vmap` a random decision becomes a select, so every op is
computed for every view (as google's `batch_random_blur` does for blur) and
the random-order jitter computes its four ops at each of its four steps.
`two_views` therefore has two strategies: 'vmap' (data-parallel selects, for
GPU/TPU where the extra element-wise work is small next to the encoder) and
'map' (a sequential `lax.map` over views whose `lax.cond`/`lax.switch` really
branch, so a view pays only for the ops it draws: 5-10x faster on CPU);
'auto' picks 'map' on CPU. The ops themselves are cheap, fusible passes: the
exact HSV hue shift and the saturation change are branch-free element-wise
formulas (no HSV round trip), the blur is a static sum of shifted copies, the
crop a 4-tap gather per axis with the flip folded into its taps. See
`bench/augment_bench.py` for measurements.

Modules, each importing only those above it:

  crop.py    `sample_crop` (the box, as tf.image.sample_distorted_bounding_box)
             and `crop_and_resize` (bicubic, as tf.image.resize).
  color.py   the colour ops, equal to tf.image: brightness, contrast,
             saturation, hue, grayscale, `clip_unit`.
  jitter.py  the random colour jitter: `sample_jitter`, `apply_jitter`.
  blur.py    `gaussian_blur` (google's separable blur).
  spec.py    `AugmentSpec`, the validated form of `config.augment`.
  views.py   one view (`sample_view_params`, `apply_view_params`,
             `augment_view`) and the batch (`two_views`, `resolve_strategy`).

Every public name is importable from here (`from simclr_jax import augment;
augment.two_views(...)`). A new op goes in the module of its kind, its
probability or setting in `AugmentSpec` (and configs/default.py), its draw in
`ViewParams`/`sample_view_params` and its application in `apply_view_params`.
"""

from simclr_jax.augment.blur import blur_radius
from simclr_jax.augment.blur import gaussian_blur
from simclr_jax.augment.blur import gaussian_kernel
from simclr_jax.augment.color import GRAY_WEIGHTS
from simclr_jax.augment.color import adjust_brightness
from simclr_jax.augment.color import adjust_contrast
from simclr_jax.augment.color import adjust_hue
from simclr_jax.augment.color import adjust_saturation
from simclr_jax.augment.color import clip_unit
from simclr_jax.augment.color import scale_brightness
from simclr_jax.augment.color import to_grayscale
from simclr_jax.augment.crop import CROP_ATTEMPTS
from simclr_jax.augment.crop import CROP_MIN_COVERED
from simclr_jax.augment.crop import CropDraw
from simclr_jax.augment.crop import crop_and_resize
from simclr_jax.augment.crop import sample_crop
from simclr_jax.augment.jitter import BRIGHTNESS
from simclr_jax.augment.jitter import CONTRAST
from simclr_jax.augment.jitter import HUE
from simclr_jax.augment.jitter import SATURATION
from simclr_jax.augment.jitter import JitterParams
from simclr_jax.augment.jitter import apply_jitter
from simclr_jax.augment.jitter import sample_jitter
from simclr_jax.augment.spec import STRATEGIES
from simclr_jax.augment.spec import AugmentSpec
from simclr_jax.augment.views import ViewParams
from simclr_jax.augment.views import apply_view_params
from simclr_jax.augment.views import augment_view
from simclr_jax.augment.views import example_keys
from simclr_jax.augment.views import resolve_strategy
from simclr_jax.augment.views import sample_view_params
from simclr_jax.augment.views import two_views

__all__ = [
    'AugmentSpec', 'BRIGHTNESS', 'CONTRAST', 'CROP_ATTEMPTS',
    'CROP_MIN_COVERED', 'CropDraw', 'GRAY_WEIGHTS', 'HUE', 'JitterParams',
    'SATURATION', 'STRATEGIES', 'ViewParams', 'adjust_brightness',
    'adjust_contrast', 'adjust_hue', 'adjust_saturation', 'apply_jitter',
    'apply_view_params', 'augment_view', 'blur_radius', 'clip_unit',
    'crop_and_resize', 'example_keys', 'gaussian_blur', 'gaussian_kernel',
    'resolve_strategy', 'sample_crop', 'sample_jitter', 'sample_view_params',
    'scale_brightness', 'to_grayscale', 'two_views',
]
