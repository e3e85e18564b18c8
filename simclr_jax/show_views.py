"""Writes a PNG grid of photos and pairs of their SimCLR views.

    python -m simclr_jax.show_views --out views.png
    python -m simclr_jax.show_views --out views.png --images DIR \\
        --num_images 4 --num_pairs 3 --config configs/cifar10.py

One row per photo: the photo (letterboxed to the view size), then
`num_pairs` pairs of views made by `augment.two_views` with the config's
`augment` settings. Photos come from a folder (jpg/png/...) or, by default,
scikit-image's sample photos (astronaut, coffee, chelsea, rocket).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Any, Sequence

import jax
import numpy as np
from PIL import Image, ImageDraw

from simclr_jax import augment
from simclr_jax.data import IMAGE_EXTENSIONS

SAMPLE_PHOTOS = ('astronaut', 'coffee', 'chelsea', 'rocket')
_TWO_VIEWS = jax.jit(augment.two_views, static_argnums=2)
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'configs', 'default.py')


def load_augment_config(path: str | None) -> augment.AugmentSpec:
  """`AugmentSpec` from a config file's get_config().augment.

  Args:
    path: a Python config file defining get_config(); None uses
      configs/default.py when present, else the defaults at 224 px.
  """
  if path is None:
    if not os.path.exists(_DEFAULT_CONFIG):
      return augment.AugmentSpec(output_size=224)
    path = _DEFAULT_CONFIG
  if not os.path.isfile(path):
    raise ValueError(f'--config {path!r} is not a file')
  module_spec = importlib.util.spec_from_file_location('_show_views_config',
                                                       path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'config file {path!r} defines no get_config()')
  return augment.AugmentSpec.from_config(module.get_config().augment)


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


def make_views(key: jax.Array, photo: np.ndarray, spec: augment.AugmentSpec,
               num_pairs: int) -> tuple[np.ndarray, np.ndarray]:
  """`num_pairs` pairs of views of one uint8 (H, W, 3) photo.

  Returns:
    Two uint8 (num_pairs, S, S, 3) arrays.
  """
  batch = np.broadcast_to(photo, (num_pairs,) + photo.shape)
  view_a, view_b = _TWO_VIEWS(key, batch, spec)
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
                size: int) -> Image.Image:
  """Rows of [photo | a1 b1 | a2 b2 | ...] with a header line.

  Args:
    photos: uint8 (H, W, 3) arrays.
    pairs: per photo, the (view_a, view_b) uint8 (P, S, S, 3) arrays.
    size: S.
  """
  num_pairs = pairs[0][0].shape[0]
  cell = max(size, 32)
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


def main(argv: Sequence[str] | None = None) -> str:
  """Parses flags, writes the grid and returns its path."""
  parser = argparse.ArgumentParser(
      prog='python -m simclr_jax.show_views', description=__doc__.split('\n')[0])
  parser.add_argument('--out', required=True, help='PNG file to write')
  parser.add_argument('--images', default=None,
                      help='folder of images (default: scikit-image samples)')
  parser.add_argument('--num_images', type=int, default=4)
  parser.add_argument('--num_pairs', type=int, default=3)
  parser.add_argument('--config', default=None,
                      help='config file with get_config() (default: '
                      'configs/default.py)')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  if args.num_images < 1 or args.num_pairs < 1:
    parser.error('--num_images and --num_pairs must be at least 1')
  try:
    spec = load_augment_config(args.config)
    photos = load_photos(args.images, args.num_images)
  except ValueError as e:
    parser.error(str(e))
  key = jax.random.key(args.seed)
  pairs = [make_views(jax.random.fold_in(key, i), photo, spec, args.num_pairs)
           for i, photo in enumerate(photos)]
  grid = render_grid(photos, pairs, spec.output_size)
  out_dir = os.path.dirname(os.path.abspath(args.out))
  os.makedirs(out_dir, exist_ok=True)
  grid.save(args.out, format='PNG')
  print(f'wrote {args.out}: {len(photos)} photos x {args.num_pairs} pairs of '
        f'{spec.output_size}px views')
  return args.out


if __name__ == '__main__':
  main()
