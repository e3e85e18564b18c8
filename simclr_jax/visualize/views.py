"""views.png: photos beside pairs of their SimCLR views.

One row per photo: the photo (letterboxed to the view size), then
`num_pairs` pairs of views made by `augment.two_views` with a config's
`augment` settings. Photos come from a run's evaluation images (one per
class, `eval_images`), a folder (`IMAGE_EXTENSIONS` of `simclr_jax.data`)
or scikit-image's sample photos (astronaut, coffee, chelsea, rocket)::

  photos = load_photos(None, 4)
  pairs = [make_views(jax.random.key(i), p, spec, 3)
           for i, p in enumerate(photos)]
  render_grid(photos, pairs, spec.output_size).save('views.png')
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from simclr_jax.data.scan import IMAGE_EXTENSIONS
from simclr_jax.visualize import load
from simclr_jax.visualize import sample

SAMPLE_PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket')


@functools.cache
def _two_views() -> Any:
  import jax  # pylint: disable=g-import-not-at-top
  from simclr_jax import augment  # pylint: disable=g-import-not-at-top
  return jax.jit(augment.two_views, static_argnums=2)


def load_photos(folder: str | None, num_images: int,
                max_side: int = 1024) -> list[np.ndarray]:
  """Up to `num_images` RGB photos as uint8 (H, W, 3) arrays.

  Photos with a side longer than `max_side` are downscaled (aspect kept).
  """
  images = []
  if folder:
    if not os.path.isdir(folder):
      raise ValueError(f'--images {folder!r} is not a directory')
    names = sorted(n for n in os.listdir(folder)
                   if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
      raise ValueError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {folder!r}')
    for name in names[:num_images]:
      with Image.open(os.path.join(folder, name)) as image:
        images.append(image.convert('RGB'))
  else:
    try:
      from skimage import data  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ValueError('scikit-image is not installed: pass --images DIR') from e
    for name in SAMPLE_PHOTOS[:num_images]:
      images.append(Image.fromarray(getattr(data, name)()).convert('RGB'))
  out = []
  for image in images:
    scale = max_side / max(image.size)
    if scale < 1:
      image = image.resize((max(1, round(image.width * scale)),
                            max(1, round(image.height * scale))), Image.BICUBIC)
    out.append(np.asarray(image, np.uint8))
  return out


def make_views(key: Any, photo: np.ndarray, spec: Any,
               num_pairs: int) -> tuple[np.ndarray, np.ndarray]:
  """`num_pairs` pairs of views of one uint8 (H, W, 3) photo.

  Args:
    key: a `jax.random.key`.
    photo: uint8 (H, W, 3).
    spec: an `augment.AugmentSpec`.
    num_pairs: pairs of views.

  Returns:
    Two uint8 (num_pairs, S, S, 3) arrays.
  """
  batch = np.broadcast_to(photo, (num_pairs,) + photo.shape)
  view_a, view_b = _two_views()(key, batch, spec)
  to_uint8 = lambda v: np.asarray(np.round(np.asarray(v) * 255), np.uint8)
  return to_uint8(view_a), to_uint8(view_b)


def letterbox(photo: np.ndarray, size: int) -> Image.Image:
  """The photo scaled to fit in size x size, centred on white."""
  image = Image.fromarray(photo)
  scale = size / max(image.size)
  image = image.resize((max(1, round(image.width * scale)),
                        max(1, round(image.height * scale))), Image.BICUBIC)
  canvas = Image.new('RGB', (size, size), 'white')
  canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
  return canvas


def render_grid(photos: Sequence[np.ndarray], pairs: Sequence[Any],
                size: int, min_cell: int = 32) -> Image.Image:
  """Rows of [photo | a1 b1 | a2 b2 | ...] with a header line.

  Args:
    photos: uint8 (H, W, 3) arrays.
    pairs: per photo, the (view_a, view_b) uint8 (P, S, S, 3) arrays.
    size: S.
    min_cell: views smaller than this are scaled up (nearest neighbour) to
      it, so that small images (digits, CIFAR) stay visible.
  """
  num_pairs = pairs[0][0].shape[0]
  cell = max(size, min_cell)
  inner, outer, header = 4, 16, 18
  width = outer + cell + num_pairs * (outer + 2 * cell + inner) + outer
  height = header + len(photos) * (cell + outer) + outer
  grid = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(grid)
  x = outer
  draw.text((x, 3), 'original', fill='black')
  x += cell + outer
  for p in range(num_pairs):
    draw.text((x, 3), f'pair {p + 1}: view a, view b', fill='black')
    x += 2 * cell + inner + outer
  for row, (photo, (view_a, view_b)) in enumerate(zip(photos, pairs)):
    y = header + row * (cell + outer)
    grid.paste(letterbox(photo, cell), (outer, y))
    x = outer + cell + outer
    for p in range(num_pairs):
      for view in (view_a[p], view_b[p]):
        tile = Image.fromarray(view)
        if size != cell:
          tile = tile.resize((cell, cell), Image.NEAREST)
        grid.paste(tile, (x, y))
        x += cell + inner
      x += outer - inner
  return grid


def views_grid(photos: Sequence[np.ndarray], augment_config: Any,
               num_pairs: int = 3, seed: int = 0) -> Image.Image:
  """Rows of [photo | pairs of SimCLR views] of a config's `augment`."""
  import jax  # pylint: disable=g-import-not-at-top
  from simclr_jax import augment  # pylint: disable=g-import-not-at-top
  spec = augment.AugmentSpec.from_config(augment_config)
  key = jax.random.key(seed)
  pairs = [make_views(jax.random.fold_in(key, i), photo, spec, num_pairs)
           for i, photo in enumerate(photos)]
  return render_grid(photos, pairs, spec.output_size, min_cell=64)


def eval_samples(config: Any, num: int, seed: int = 0) -> sample.Sample:
  """`num` evaluation images of a config's data, of `num` classes (chosen
  at random, seeded) where it has that many, one per class in turn.

  Returns:
    {'image': uint8 (n, S, S, 3), 'label': int32 (n,)}, n <= num.
  """
  source = load.make_source(config)
  got = sample.sample_split(source, 'eval', max(num, 64), num, (seed, 3))
  if not len(got['label']):
    raise load.VisualizeError('the evaluation split has no images')
  rows = sample.pick_queries(got['label'], num)
  return {k: v[rows] for k, v in got.items()}


def eval_images(config: Any, num: int, seed: int = 0) -> list[np.ndarray]:
  """The uint8 (S, S, 3) images of `eval_samples`."""
  return list(eval_samples(config, num, seed)['image'])


def draw_views(config: Any, path: str, *, images: str | None,
               num_images: int = 4, num_pairs: int = 3, seed: int = 0,
               log: Any = print) -> str:
  """Writes views.png: `images` 'data' (the config's eval images), 'samples'
  (scikit-image photos) or a folder."""
  if images == 'data':
    got = eval_samples(config, num_images, seed)
    photos = list(got['image'])
    log('visualize: views of '
        f'{sample.describe(got["label"], "evaluation images")}')
  else:
    try:
      photos = load_photos(None if images == 'samples' else images,
                           num_images)
    except ValueError as e:
      raise load.VisualizeError(str(e)) from e
  views_grid(photos, config.augment, num_pairs, seed).save(path, format='PNG')
  return path
