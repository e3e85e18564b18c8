"""neighbors.png: evaluation images beside their nearest training images.

Neighbours are by cosine similarity of the encoder's `h`; a neighbour of
another class than its query sits in a red frame. The printed and drawn
share of neighbours of the query's class is over every sampled evaluation
image, not only the drawn queries (one per class, `sample.pick_queries`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from simclr_jax.visualize import load
from simclr_jax.visualize import sample

# Colour of the frame around a neighbour of another class.
MISMATCH_RGB = (220, 20, 20)
# Query rows per similarity block (bounds the memory of nearest_neighbors).
_QUERY_BLOCK = 512


def nearest_neighbors(queries: np.ndarray, bank: np.ndarray, k: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """The `k` bank rows most cosine-similar to each query, best first.

  Args:
    queries: float (q, C).
    bank: float (n, C), n >= k.
    k: neighbours per query.

  Returns:
    (indices int64 (q, k) into `bank`, cosine similarities float32 (q, k)),
    ties broken by the lower index.
  """
  if k > len(bank):
    raise ValueError(f'k={k} neighbours but the bank has {len(bank)} rows')

  def unit(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

  bank = unit(bank)
  queries = unit(queries)
  idx = np.zeros((len(queries), k), np.int64)
  sims = np.zeros((len(queries), k), np.float32)
  for start in range(0, len(queries), _QUERY_BLOCK):
    block = queries[start:start + _QUERY_BLOCK] @ bank.T
    # Stable sort of -sim: equal similarities keep the lower index first.
    top = np.argsort(-block, axis=1, kind='stable')[:, :k]
    idx[start:start + len(block)] = top
    sims[start:start + len(block)] = np.take_along_axis(block, top, 1)
  return idx, sims


def neighbor_mismatch(query_labels: np.ndarray, bank_labels: np.ndarray,
                      idx: np.ndarray) -> np.ndarray:
  """bool (q, k): True where neighbour idx[i, j] is of another class than
  query i. Unlabelled examples (label < 0) never mismatch."""
  q = np.asarray(query_labels)[:, None]
  b = np.asarray(bank_labels)[idx]
  return (q != b) & (q >= 0) & (b >= 0)


class NeighborLayout:
  """Pixel geometry of the neighbour grid (`neighbor_grid`).

  Each panel is a column of queries, then `k` neighbours; panels sit side
  by side. A tile of `cell` px sits `frame` px inside its slot; the frame
  ring around it is red when the neighbour is of another class. A panel is
  at least `min_panel_width` px wide (room for its header lines).
  """

  def __init__(self, k: int, num_rows: int, num_panels: int, cell: int,
               min_panel_width: int = 0):
    self.k, self.rows, self.panels, self.cell = k, num_rows, num_panels, cell
    self.frame = max(2, cell // 12)
    self.slot = cell + 2 * self.frame
    self.gap = 4
    self.query_gap = 10
    self.panel_gap = 28
    self.margin = 10
    self.header = 34
    self.panel_width = max(int(min_panel_width), self.slot + self.query_gap
                           + k * self.slot + (k - 1) * self.gap)

  @property
  def size(self) -> tuple[int, int]:
    width = (2 * self.margin + self.panels * self.panel_width
             + (self.panels - 1) * self.panel_gap)
    height = self.header + self.rows * (self.slot + self.gap) + self.margin
    return width, height

  def slot_box(self, panel: int, row: int, col: int) -> tuple[int, int, int,
                                                               int]:
    """(x0, y0, x1, y1) of a slot, frame included; col -1 is the query."""
    x = self.margin + panel * (self.panel_width + self.panel_gap)
    if col >= 0:
      x += self.slot + self.query_gap + col * (self.slot + self.gap)
    y = self.header + row * (self.slot + self.gap)
    return x, y, x + self.slot, y + self.slot


def _tile(image: np.ndarray, cell: int) -> Image.Image:
  tile = Image.fromarray(np.asarray(image, np.uint8))
  if tile.size != (cell, cell):
    small = max(tile.size) <= cell // 2
    tile = tile.resize((cell, cell), Image.NEAREST if small else Image.BICUBIC)
  return tile


def neighbor_grid(query_images: np.ndarray, bank_images: np.ndarray,
                  panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
                  cell: int | None = None) -> Image.Image:
  """Queries beside their nearest neighbours, one panel per encoder.

  Args:
    query_images: uint8 (q, S, S, 3).
    bank_images: uint8 (n, S, S, 3).
    panels: (title, idx int (q, k) into the bank, mismatch bool (q, k)).
    cell: side of a tile in px (default: S scaled up to at least 48).

  Returns:
    An RGB image laid out by `NeighborLayout`.
  """
  size = int(query_images.shape[1])
  if cell is None:
    cell = size * max(1, math.ceil(48 / size)) if size < 48 else size
  k = int(panels[0][1].shape[1])
  heading = f'{k} nearest training images (cosine of h); red: another class'
  measure = ImageDraw.Draw(Image.new('RGB', (1, 1))).textlength
  probe = NeighborLayout(k, 1, 1, cell)
  needed = max([measure(t) for t, _, _ in panels]
               + [probe.slot + probe.query_gap + measure(heading)])
  layout = NeighborLayout(k, len(query_images), len(panels), cell,
                          math.ceil(needed) + 2)
  grid = Image.new('RGB', layout.size, 'white')
  draw = ImageDraw.Draw(grid)
  for p, (title, idx, mismatch) in enumerate(panels):
    x0, _, _, _ = layout.slot_box(p, 0, -1)
    draw.text((x0, 4), title, fill='black')
    nx, _, _, _ = layout.slot_box(p, 0, 0)
    draw.text((x0, 18), 'query', fill='black')
    draw.text((nx, 18), heading, fill='black')
    for row in range(len(query_images)):
      for col in range(-1, k):
        box = layout.slot_box(p, row, col)
        image = (query_images[row] if col < 0 else bank_images[idx[row, col]])
        if col >= 0 and mismatch[row, col]:
          draw.rectangle(box[:2] + (box[2] - 1, box[3] - 1),
                         fill=MISMATCH_RGB)
        grid.paste(_tile(image, cell),
                   (box[0] + layout.frame, box[1] + layout.frame))
  return grid


def scored_labels(enc: Any) -> np.ndarray:
  """int32 labels of the queries whose neighbours are scored: the
  evaluation images (all queries when the eval split is empty)."""
  return enc.queries['label'][:enc.num_eval or None]


def draw_neighbors(enc: Any, path: str, num_queries: int = 10,
                   k: int = 8) -> tuple[str, dict[str, float]]:
  """Writes the neighbour grid of every encoder of an `Encoders`.

  The grid shows `num_queries` evaluation images, one per class in turn.

  Returns:
    (path, per encoder name the fraction of the `k` neighbours of every
    sampled evaluation image that are of its class).
  """
  if len(enc.bank['label']) < k:
    raise load.VisualizeError(f'--k {k} but only {len(enc.bank["label"])} '
                              'training images')
  labels = scored_labels(enc)
  rows = sample.pick_queries(labels, num_queries)
  panels, same = [], {}
  for name in enc.names:
    idx, _ = nearest_neighbors(enc.query_h[name][:len(labels)],
                               enc.bank_h[name], k)
    mismatch = neighbor_mismatch(labels, enc.bank['label'], idx)
    same[name] = float(1 - mismatch.mean())
    panels.append((f'{name}: {same[name]:.0%} of neighbours of the same '
                   f'class ({len(labels)} queries)', idx[rows],
                   mismatch[rows]))
  neighbor_grid(enc.queries['image'][rows], enc.bank['image'],
                panels).save(path, format='PNG')
  return path, same
