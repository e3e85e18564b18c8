r"""Pictures of what a SimCLR run learned, as PNG files.

    python -m simclr_jax.visualize --workdir DIR [--out DIR] [--random_init]
    python -m simclr_jax.visualize --views --config configs/demo.py [--out DIR]
    python -m simclr_jax.visualize --views --images PHOTOS [--out DIR]

For a pretraining or evaluation workdir (it reads `DIR/config.json`,
`DIR/metrics.jsonl` and the encoder's checkpoint) it writes, in `--out`
(default `DIR/figures`):

* `curves.png`: every logged metric of `metrics.jsonl` against the step
  (loss, contrastive accuracy, learning rate, online probe and kNN monitor
  accuracy, ...), with the final scores as horizontal lines.
* `tsne.png`: a t-SNE (scikit-learn) of the encoder's `h` for up to
  `--num_points` evaluation images (topped up with training images when the
  evaluation split is smaller), coloured by class.
* `neighbors.png`: evaluation images (one per class first) beside their `--k`
  nearest training images by cosine similarity of `h`, in a red frame where
  the neighbour's class differs from the query's.
* `views.png`: evaluation images beside pairs of their SimCLR views
  (`augment.two_views` with the run's `augment` settings).

With `--random_init` the t-SNE and the neighbours are drawn again for the
same encoder at its random initialisation (`model.init` with the run's seed,
as at step 0 of pretraining), side by side with the trained one.

The encoder is the workdir's own checkpoint for pretraining and fine-tuning
runs, and the one the run evaluated (`config.init_from`, `config.init_step`)
for linear evaluation and export runs. A workdir without what a figure needs
(no metrics.jsonl, no checkpoint) is one line on stderr and exit status 2;
`--figures` picks the figures to draw.

`--views` alone draws `views.png` from a config file's augmentation settings
(`--config`, default configs/default.py) on that config's data, on the
photos of a folder (`--images DIR`) or on scikit-image's sample photos
(`--images samples`, the default without `--config`).

Headless (matplotlib's Agg backend), no network for the digits.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

FIGURES = ('curves', 'views', 'tsne', 'neighbors')
# Colour of the frame around a neighbour of another class.
MISMATCH_RGB = (220, 20, 20)
_PROG = 'python -m simclr_jax.visualize'


class VisualizeError(ValueError):
  """A workdir, config or option that cannot give the figures (one line)."""


# ------------------------------------------------------------------ inputs


def _tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_run_config(workdir: str) -> Any:
  """The `ml_collections.ConfigDict` a run recorded in `workdir/config.json`.

  JSON lists become tuples again (as in the config files).

  Raises:
    VisualizeError: no such directory or no readable config.json in it.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(workdir):
    raise VisualizeError(f'--workdir {workdir!r} is not a directory')
  path = os.path.join(workdir, 'config.json')
  if not os.path.isfile(path):
    raise VisualizeError(
        f'no config.json in {workdir!r}: not the workdir of a simclr_jax run '
        '(main.py writes it when a run starts)')
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(_tuples(json.load(f)))
  except (OSError, ValueError) as e:
    raise VisualizeError(f'{path} cannot be read: {e}') from e


def load_config_file(path: str) -> Any:
  """`get_config()` of a Python config file (as main.py's --config)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise VisualizeError(f'--config {path!r} is not a file')
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.insert(0, root)  # So configs can `from configs import default`.
  spec = importlib.util.spec_from_file_location('_visualize_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'get_config'):
    raise VisualizeError(f'config file {path!r} defines no get_config()')
  return module.get_config()


def encoder_source(config: Any, workdir: str) -> tuple[str, int | None]:
  """(workdir holding the encoder's checkpoint, its step or None = latest).

  Pretraining and fine-tuning runs hold their own encoder; linear evaluation
  and export runs evaluate the one of `config.init_from`.
  """
  mode = config.get('mode', 'pretrain')
  if mode in ('linear_eval', 'export') and config.get('init_from', ''):
    step = int(config.get('init_step', -1))
    return str(config.init_from), (None if step < 0 else step)
  return workdir, None


def load_encoder(config: Any, workdir: str, mesh: Any
                 ) -> tuple[Any, dict, int]:
  """The run's encoder: (model without probe, variables, checkpoint step).

  Only the encoder's variables are read (`h` needs nothing else), so the
  checkpoint of any mode that holds `params['encoder']` works.

  Raises:
    VisualizeError: no checkpoint, a damaged one, or one of another model.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from simclr_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from simclr_jax import models  # pylint: disable=g-import-not-at-top
  source, step = encoder_source(config, workdir)
  try:
    variables, step = checkpoint.restore_variables(source, mesh, step)
  except FileNotFoundError as e:
    raise VisualizeError(f'{e} (run it longer, or draw only --figures '
                         'curves)') from e
  except checkpoint.DamagedCheckpoint as e:
    raise VisualizeError(f'the checkpoint of {source!r} cannot be read: '
                         f'{str(e).splitlines()[0][:200]}') from e
  model = models.create_model(config.model, num_classes=0)
  size = int(config.image_size)
  wanted = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False))
  kept = {}
  for collection in ('params', 'batch_stats'):
    want = wanted.get(collection, {}).get('encoder')
    if want is None:
      continue
    have = variables.get(collection, {}).get('encoder') or {}
    shapes = [{jax.tree_util.keystr(p): tuple(x.shape) for p, x in
               jax.tree_util.tree_flatten_with_path(t)[0]}
              for t in (have, want)]
    differ = sorted(n for n in shapes[0].keys() | shapes[1].keys()
                    if shapes[0].get(n) != shapes[1].get(n))
    if differ:
      raise VisualizeError(
          f'the checkpoint of {source!r} is not an encoder of config.model '
          f'({len(differ)} {collection} arrays differ, e.g. encoder'
          f'{differ[0]}: {shapes[0].get(differ[0])} in the checkpoint, '
          f'{shapes[1].get(differ[0])} for config.model)')
    kept[collection] = {'encoder': have}
  return model, kept, step


def random_init_encoder(config: Any, mesh: Any) -> tuple[Any, dict]:
  """The encoder at initialisation, as pretraining starts it (same seed).

  `train.build` draws the initial parameters with the first half of
  `jax.random.split(jax.random.key(config.seed))`; Flax derives every
  submodule's key from its name, so the encoder equals step 0 of the run.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from simclr_jax import models  # pylint: disable=g-import-not-at-top
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  model = models.create_model(config.model, num_classes=0)
  init_key, _ = jax.random.split(jax.random.key(int(config.seed)))
  size = int(config.image_size)

  def init():
    variables = model.init(init_key, jnp.zeros((2, size, size, 3)),
                           train=False)
    return {c: {'encoder': variables[c]['encoder']}
            for c in ('params', 'batch_stats') if c in variables}

  return model, jax.jit(init, out_shardings=parallel.replicated(mesh))()


def _eval_batch(config: Any, mesh: Any) -> int:
  n = mesh.size
  return -(-int(config.eval.batch_size) // n) * n


def collect(source: Any, split: str, batch: int, limit: int
            ) -> dict[str, np.ndarray]:
  """Up to `limit` images and labels of a split, in order (padding dropped).

  Returns:
    {'image': uint8 (n, S, S, 3), 'label': int32 (n,)}.
  """
  images, labels, count = [], [], 0
  for b in source.eval_iterator(split, batch, 0, 1):
    mask = np.asarray(b['mask'], bool)
    images.append(np.asarray(b['image'])[mask])
    labels.append(np.asarray(b['label'], np.int32)[mask])
    count += int(mask.sum())
    if count >= limit:
      break
  if not images:
    return {'image': np.zeros((0, 1, 1, 3), np.uint8),
            'label': np.zeros((0,), np.int32)}
  return {'image': np.concatenate(images)[:limit],
          'label': np.concatenate(labels)[:limit]}


def features(feature_fn: Any, variables: Any, images: np.ndarray, mesh: Any,
             batch: int) -> np.ndarray:
  """float32 `h` (n, C) of uint8 images (n, S, S, 3), `batch` at a time.

  Args:
    feature_fn: `evaluate.features.make_feature_fn(model, mesh)` (made once:
      every new one compiles again).
    variables: the encoder's variables, replicated.
    images: uint8 (n, S, S, 3).
    mesh: the mesh.
    batch: rows per call, a multiple of the mesh size.
  """
  from simclr_jax.evaluate import features as features_lib  # pylint: disable=g-import-not-at-top
  out = []
  for start in range(0, len(images), batch):
    chunk = images[start:start + batch]
    mask = np.zeros(batch, bool)
    mask[:len(chunk)] = True
    padded = np.zeros((batch,) + images.shape[1:], np.uint8)
    padded[:len(chunk)] = chunk
    got = features_lib.local_rows(
        feature_fn, variables, {'image': padded, 'label': np.zeros(
            batch, np.int32), 'mask': mask}, mesh)
    out.append(got['h'])
  return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


# -------------------------------------------------------------- neighbours


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

  sims = unit(queries) @ unit(bank).T
  # Stable sort of -sim: equal similarities keep the lower index first.
  idx = np.argsort(-sims, axis=1, kind='stable')[:, :k]
  return idx.astype(np.int64), np.take_along_axis(sims, idx, 1).astype(
      np.float32)


def neighbor_mismatch(query_labels: np.ndarray, bank_labels: np.ndarray,
                      idx: np.ndarray) -> np.ndarray:
  """bool (q, k): True where neighbour idx[i, j] is of another class than
  query i. Unlabelled examples (label < 0) never mismatch."""
  q = np.asarray(query_labels)[:, None]
  b = np.asarray(bank_labels)[idx]
  return (q != b) & (q >= 0) & (b >= 0)


def pick_queries(labels: np.ndarray, n: int) -> np.ndarray:
  """`n` row indices, one per class in turn (classes in order of first
  appearance, each class's rows in order), so every class shows."""
  labels = np.asarray(labels)
  by_class = {}
  for i, y in enumerate(labels):
    by_class.setdefault(int(y), []).append(i)
  queues = list(by_class.values())
  out = []
  depth = 0
  while len(out) < min(n, len(labels)):
    for rows in queues:
      if depth < len(rows) and len(out) < n:
        out.append(rows[depth])
    depth += 1
  return np.asarray(out, np.int64)


class NeighborLayout:
  """Pixel geometry of the neighbour grid (`neighbor_grid`).

  Each panel is a column of queries, then `k` neighbours; panels sit side
  by side. A tile of `cell` px sits `frame` px inside its slot; the frame
  ring around it is red when the neighbour is of another class.
  """

  def __init__(self, k: int, num_rows: int, num_panels: int, cell: int):
    self.k, self.rows, self.panels, self.cell = k, num_rows, num_panels, cell
    self.frame = max(2, cell // 12)
    self.slot = cell + 2 * self.frame
    self.gap = 4
    self.query_gap = 10
    self.panel_gap = 28
    self.margin = 10
    self.header = 34
    self.panel_width = (self.slot + self.query_gap + k * self.slot
                        + (k - 1) * self.gap)

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
  layout = NeighborLayout(k, len(query_images), len(panels), cell)
  grid = Image.new('RGB', layout.size, 'white')
  draw = ImageDraw.Draw(grid)
  for p, (title, idx, mismatch) in enumerate(panels):
    x0, _, _, _ = layout.slot_box(p, 0, -1)
    draw.text((x0, 4), title, fill='black')
    nx, _, _, _ = layout.slot_box(p, 0, 0)
    draw.text((x0, 18), 'query', fill='black')
    draw.text((nx, 18), f'{k} nearest training images (cosine of h); red: '
              'another class', fill='black')
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


# ------------------------------------------------------------------ t-SNE


def tsne_embedding(h: np.ndarray, seed: int = 0,
                   max_iter: int = 500) -> np.ndarray:
  """float32 (n, 2) t-SNE of L2-normalised rows of `h` (scikit-learn).

  500 iterations (scikit-learn's default is 1000) already separate the
  classes of a trained encoder and take half the time.
  """
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  x = np.asarray(h, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  n = len(x)
  if n < 5:
    raise VisualizeError(f't-SNE needs at least 5 images, got {n}')
  perplexity = float(min(30.0, (n - 1) / 3))
  tsne = TSNE(n_components=2, perplexity=perplexity, init='pca',
              random_state=seed, max_iter=max_iter)
  return tsne.fit_transform(x).astype(np.float32)


def _class_colors(num: int) -> Any:
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top
  name = 'tab10' if num <= 10 else ('tab20' if num <= 20 else 'turbo')
  cmap = colormaps[name]
  if name == 'turbo':
    return [cmap(i / max(num - 1, 1)) for i in range(num)]
  return [cmap(i) for i in range(num)]


def tsne_figure(panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
                title: str = '') -> Any:
  """A matplotlib Figure: one scatter per (title, xy (n, 2), labels (n,))."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(5.2 * len(panels), 5.0), layout='constrained')
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  classes = sorted({int(y) for _, _, labels in panels for y in labels})
  colors = dict(zip(classes, _class_colors(len(classes))))
  for ax, (name, xy, labels) in zip(axes, panels):
    for c in classes:
      sel = np.asarray(labels) == c
      ax.scatter(xy[sel, 0], xy[sel, 1], s=7, color=colors[c],
                 label='unlabelled' if c < 0 else str(c), linewidths=0)
    ax.set_title(name)
    ax.set_xticks([])
    ax.set_yticks([])
  if len(classes) <= 20:
    axes[-1].legend(title='class', loc='center left', bbox_to_anchor=(1, 0.5),
                    markerscale=2.5, frameon=False)
  if title:
    fig.suptitle(title)
  return fig


# ----------------------------------------------------------------- curves

# (key, panel title) of the metrics with a panel of their own, in order.
_CURVES = (
    ('loss', 'loss'),
    ('contrastive_accuracy', 'contrastive accuracy (positive ranked first)'),
    ('learning_rate', 'learning rate'),
    ('contrastive_entropy', 'contrastive entropy'),
    ('probe_loss', 'online probe loss'),
    ('grad_norm', 'gradient norm'),
)
# Classification accuracies, drawn together in one panel.
_ACCURACIES = (
    ('probe_accuracy', 'online probe (train batches)'),
    ('knn_accuracy', 'kNN monitor (eval split)'),
    ('accuracy', 'head (train batches)'),
)
# 'nt_xent' is half of the pretraining 'loss' (its own panel would repeat it).
_SKIPPED = ('step', 'images_per_sec', 'final', 'preempted', 'train_seconds',
            'seconds', 'eval_examples', 'init_step', 'nt_xent')


def _final_scores(records: Sequence[dict]) -> dict[str, float]:
  out = {}
  for r in records:
    if r.get('final'):
      out.update({k: float(v) for k, v in r.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)
                  and (k.endswith('accuracy') or 'top1' in k
                       or 'accuracy_' in k)})
  return out


def curves_figure(records: Sequence[dict], title: str = '',
                  mode: str = 'pretrain') -> Any | None:
  """A Figure of every logged metric against the step; None when nothing
  was logged. Final scores (final records) are dashed lines in the
  accuracy panel."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  steps = [r for r in records if 'step' in r and not r.get('final')
           and not r.get('preempted')]
  keys = []
  for r in steps:
    for k, v in r.items():
      if (k not in keys and k not in _SKIPPED and isinstance(v, (int, float))
          and not isinstance(v, bool)):
        keys.append(k)
  finals = _final_scores(records)
  acc_keys = [k for k, _ in _ACCURACIES if k in keys]
  own = [k for k, _ in _CURVES if k in keys]
  own += [k for k in keys if k not in own and k not in acc_keys]
  titles = dict(_CURVES)
  if mode == 'pretrain':
    titles['loss'] = "contrastive loss (google's: 2 x NT-Xent)"
  elif mode in ('linear_eval', 'finetune'):
    titles['loss'] = 'cross-entropy loss (train batches)'
  panels = own[:3] + (['accuracy'] if acc_keys or finals else []) + own[3:]
  if not panels or not steps:
    return None
  ncols = min(3, len(panels))
  nrows = math.ceil(len(panels) / ncols)
  fig = Figure(figsize=(4.6 * ncols, 3.2 * nrows), layout='constrained')
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax, name in zip(axes, panels):
    if name == 'accuracy':
      for k, label in _ACCURACIES:
        if k in acc_keys:
          xs = [r['step'] for r in steps if k in r]
          ax.plot(xs, [r[k] for r in steps if k in r],
                  marker='o' if len(xs) < 12 else None, ms=3, label=label)
      for i, (k, v) in enumerate(sorted(finals.items())):
        ax.axhline(v, ls='--' if 'random_init' not in k else ':', lw=1,
                   color=f'C{3 + i % 7}', label=f'{k} = {v:.3f}')
      ax.set_title('classification accuracy')
      ax.set_ylim(0, 1.02)
      ax.legend(fontsize=7, loc='lower right')
    else:
      xs = [r['step'] for r in steps if name in r]
      ax.plot(xs, [r[name] for r in steps if name in r])
      ax.set_title(titles.get(name, name.replace('_', ' ')))
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  for ax in axes[len(panels):]:
    ax.set_axis_off()
  if title:
    fig.suptitle(title)
  return fig


# ------------------------------------------------------------------ views


def views_grid(photos: Sequence[np.ndarray], augment_config: Any,
               num_pairs: int = 3, seed: int = 0) -> Image.Image:
  """Rows of [photo | pairs of SimCLR views] (see `show_views`)."""
  import jax  # pylint: disable=g-import-not-at-top
  from simclr_jax import augment  # pylint: disable=g-import-not-at-top
  from simclr_jax import show_views  # pylint: disable=g-import-not-at-top
  spec = augment.AugmentSpec.from_config(augment_config)
  key = jax.random.key(seed)
  pairs = [show_views.make_views(jax.random.fold_in(key, i), photo, spec,
                                 num_pairs)
           for i, photo in enumerate(photos)]
  return show_views.render_grid(photos, pairs, spec.output_size,
                                min_cell=64)


# ------------------------------------------------------------------- draw


def _save_figure(fig: Any, path: str) -> str:
  fig.savefig(path, dpi=110, format='png')
  return path


def _summary(records: Sequence[dict]) -> str:
  finals = _final_scores(records)
  parts = []
  for name, key in (('kNN', 'final_knn_accuracy'),
                    ('probe', 'final_probe_accuracy')):
    if key in finals:
      text = f'{name} {finals[key]:.3f}'
      if key + '_random_init' in finals:
        text += f' (random init {finals[key + "_random_init"]:.3f})'
      parts.append(text)
  for key in ('linear_eval_top1', 'finetune_top1'):
    if key in finals:
      parts.append(f'{key} {finals[key]:.3f}')
  return ('final: ' + ', '.join(parts)) if parts else ''


class Encoders:
  """Features of a run's encoder(s) on its data, computed once.

  Attributes:
    names: panel titles, the trained encoder first ('random init' second
      when asked for).
    queries: {'image', 'label'} of up to `num_points` evaluation images
      (topped up with training images when the eval split is smaller).
    bank: {'image', 'label'} of up to `bank_size` training images.
    query_h, bank_h: per name, float32 h of the queries and the bank.
  """

  def __init__(self, config: Any, workdir: str, *, random_init: bool,
               num_points: int, bank_size: int, mesh: Any | None = None,
               log: Any = print):
    from simclr_jax import data  # pylint: disable=g-import-not-at-top
    from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
    from simclr_jax.evaluate import features as features_lib  # pylint: disable=g-import-not-at-top
    if mesh is None:
      mesh = parallel.make_mesh(0)
    model, variables, step = load_encoder(config, workdir, mesh)
    encoders = [(f'trained (step {step})', variables)]
    if random_init:
      encoders.append(('random init', random_init_encoder(config, mesh)[1]))
    try:
      source = data.make_source(config)
    except ValueError as e:
      raise VisualizeError(str(e).splitlines()[0]) from e
    batch = _eval_batch(config, mesh)
    evals = collect(source, 'eval', batch, num_points)
    self.num_eval = len(evals['label'])
    self.bank = collect(source, 'train', batch, bank_size)
    if self.num_eval < num_points and len(self.bank['label']):
      extra = num_points - self.num_eval
      evals = {k: np.concatenate([evals[k], self.bank[k][:extra]])
               for k in evals}
    self.queries = evals
    self.names = [name for name, _ in encoders]
    self.query_h, self.bank_h = {}, {}
    # Both encoders are the same module: one compiled function.
    fn = features_lib.make_feature_fn(model, mesh)
    for name, v in encoders:
      log(f'visualize: features of {len(self.queries["label"])} + '
          f'{len(self.bank["label"])} images, encoder {name}')
      self.query_h[name] = features(fn, v, self.queries['image'], mesh, batch)
      self.bank_h[name] = features(fn, v, self.bank['image'], mesh, batch)


def draw_tsne(enc: Encoders, path: str, seed: int = 0, title: str = '') -> str:
  """Writes the t-SNE of every encoder of `enc` side by side."""
  labels = enc.queries['label']
  panels = [(f'{name}: t-SNE of h, {len(labels)} images', tsne_embedding(
      enc.query_h[name], seed), labels) for name in enc.names]
  return _save_figure(tsne_figure(panels, title), path)


def draw_neighbors(enc: Encoders, path: str, num_queries: int = 10,
                   k: int = 8) -> tuple[str, dict[str, float]]:
  """Writes the neighbour grid of every encoder; returns (path, per
  encoder the fraction of neighbours of the query's class)."""
  if len(enc.bank['label']) < k:
    raise VisualizeError(f'--k {k} but only {len(enc.bank["label"])} '
                         'training images')
  rows = pick_queries(enc.queries['label'][:enc.num_eval or None],
                      num_queries)
  panels, same = [], {}
  for name in enc.names:
    idx, _ = nearest_neighbors(enc.query_h[name][rows], enc.bank_h[name], k)
    mismatch = neighbor_mismatch(enc.queries['label'][rows],
                                 enc.bank['label'], idx)
    same[name] = float(1 - mismatch.mean())
    panels.append((f'{name}: {same[name]:.0%} of neighbours of the same '
                   'class', idx, mismatch))
  neighbor_grid(enc.queries['image'][rows], enc.bank['image'],
                panels).save(path, format='PNG')
  return path, same


def eval_images(config: Any, num: int) -> list[np.ndarray]:
  """`num` evaluation images of a config's data, of different classes."""
  from simclr_jax import data  # pylint: disable=g-import-not-at-top
  try:
    source = data.make_source(config)
    got = collect(source, 'eval', max(num * 16, 64), max(num * 16, 64))
  except ValueError as e:
    raise VisualizeError(str(e).splitlines()[0]) from e
  if not len(got['label']):
    raise VisualizeError('the evaluation split has no images')
  return list(got['image'][pick_queries(got['label'], num)])


def draw_views(config: Any, path: str, *, images: str | None,
               num_images: int = 4, num_pairs: int = 3, seed: int = 0) -> str:
  """Writes views.png: `images` 'data' (the config's eval images), 'samples'
  (scikit-image photos) or a folder."""
  from simclr_jax import show_views  # pylint: disable=g-import-not-at-top
  if images == 'data':
    photos = eval_images(config, num_images)
  else:
    try:
      photos = show_views.load_photos(None if images == 'samples' else images,
                                      num_images)
    except ValueError as e:
      raise VisualizeError(str(e)) from e
  views_grid(photos, config.augment, num_pairs, seed).save(path, format='PNG')
  return path


def draw_workdir(workdir: str, out: str | None = None, *,
                 figures: Sequence[str] = FIGURES, random_init: bool = False,
                 num_points: int = 2000, bank_size: int = 10000,
                 num_queries: int = 10, k: int = 8, seed: int = 0,
                 images: str = 'data', num_images: int = 4,
                 num_pairs: int = 3, log: Any = print) -> dict[str, str]:
  """Writes the figures of a run's workdir; returns {figure: path}.

  Raises:
    VisualizeError: the workdir lacks what a figure needs (one line).
  """
  config = load_run_config(workdir)
  from simclr_jax import reporting  # pylint: disable=g-import-not-at-top
  records = reporting.read_metrics(workdir)
  if 'curves' in figures and not os.path.isfile(
      os.path.join(workdir, 'metrics.jsonl')):
    raise VisualizeError(
        f'no metrics.jsonl in {workdir!r}: the run logged nothing yet (draw '
        'other figures with --figures tsne,neighbors,views)')
  out = out or os.path.join(workdir, 'figures')
  os.makedirs(out, exist_ok=True)
  name = os.path.basename(os.path.normpath(workdir))
  summary = _summary(records)
  written = {}
  enc = None
  if 'tsne' in figures or 'neighbors' in figures:
    enc = Encoders(config, workdir, random_init=random_init,
                   num_points=num_points, bank_size=bank_size, log=log)
  if 'curves' in figures:
    fig = curves_figure(records, f'{name}: {summary}' if summary else name,
                        mode=config.get('mode', 'pretrain'))
    if fig is None:
      log(f'visualize: no logged steps in {workdir}/metrics.jsonl: no '
          'curves.png')
    else:
      written['curves'] = _save_figure(fig, os.path.join(out, 'curves.png'))
  if 'views' in figures:
    written['views'] = draw_views(
        config, os.path.join(out, 'views.png'), images=images,
        num_images=num_images, num_pairs=num_pairs, seed=seed)
  if enc is not None:
    if 'tsne' in figures:
      written['tsne'] = draw_tsne(enc, os.path.join(out, 'tsne.png'), seed,
                                  title=summary)
    if 'neighbors' in figures:
      written['neighbors'], same = draw_neighbors(
          enc, os.path.join(out, 'neighbors.png'), num_queries, k)
      log('visualize: neighbours of the same class: ' + ', '.join(
          f'{n} {v:.0%}' for n, v in same.items()))
  return written


# ------------------------------------------------------------ command line


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=_PROG, description=__doc__.split('\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=__doc__.split('\n', 5)[-1])
  parser.add_argument('--workdir', help='a pretraining or evaluation workdir')
  parser.add_argument('--out', help='folder for the PNGs (default: '
                      'WORKDIR/figures, or ./figures with --views alone)')
  parser.add_argument('--figures', default=','.join(FIGURES),
                      help=f'comma-separated, of {", ".join(FIGURES)}')
  parser.add_argument('--random_init', action='store_true',
                      help='also draw t-SNE and neighbours of the encoder at '
                      'random initialisation, side by side')
  parser.add_argument('--views', action='store_true',
                      help='only the views, from --config (no workdir)')
  parser.add_argument('--config', help='config file for --views (default: '
                      'configs/default.py)')
  parser.add_argument('--images', default=None,
                      help="photos of the views: 'data' (the run's or "
                      "config's evaluation images), 'samples' (scikit-image "
                      "photos) or a folder")
  parser.add_argument('--num_points', type=int, default=2000,
                      help='images in the t-SNE')
  parser.add_argument('--bank_size', type=int, default=10000,
                      help='training images searched for neighbours')
  parser.add_argument('--num_queries', type=int, default=10)
  parser.add_argument('--k', type=int, default=8, help='neighbours per query')
  parser.add_argument('--num_images', type=int, default=4,
                      help='photos in the views grid')
  parser.add_argument('--num_pairs', type=int, default=3,
                      help='pairs of views per photo')
  parser.add_argument('--seed', type=int, default=0)
  return parser


def _default_config_path() -> str:
  return os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), 'configs', 'default.py')


def run(argv: Sequence[str] | None = None) -> dict[str, str]:
  """The command line; raises VisualizeError on bad input."""
  args = _parser().parse_args(argv)
  figures = tuple(f.strip() for f in args.figures.split(',') if f.strip())
  bad = [f for f in figures if f not in FIGURES]
  if bad or not figures:
    raise VisualizeError(f'--figures: {", ".join(bad) or "none"} not among '
                         f'{", ".join(FIGURES)}')
  for name in ('num_points', 'bank_size', 'num_queries', 'k', 'num_images',
               'num_pairs'):
    if getattr(args, name) < 1:
      raise VisualizeError(f'--{name} must be at least 1')
  if args.views or not args.workdir:
    if not args.views:
      raise VisualizeError('give --workdir DIR (a run), or --views')
    if args.workdir:
      config = load_run_config(args.workdir)
      images = args.images or 'data'
    else:
      path = args.config or _default_config_path()
      config = (load_config_file(path) if os.path.exists(path) or args.config
                else None)
      if config is None:
        raise VisualizeError('give --config FILE for the views')
      images = args.images or ('data' if args.config else 'samples')
    _setup_devices(config)
    out = args.out or (os.path.join(args.workdir, 'figures') if args.workdir
                       else 'figures')
    os.makedirs(out, exist_ok=True)
    path = draw_views(config, os.path.join(out, 'views.png'), images=images,
                      num_images=args.num_images, num_pairs=args.num_pairs,
                      seed=args.seed)
    return {'views': path}
  config = load_run_config(args.workdir)
  _setup_devices(config)
  return draw_workdir(
      args.workdir, args.out, figures=figures, random_init=args.random_init,
      num_points=args.num_points, bank_size=args.bank_size,
      num_queries=args.num_queries, k=args.k, seed=args.seed,
      images=args.images or 'data', num_images=args.num_images,
      num_pairs=args.num_pairs)


def _setup_devices(config: Any) -> None:
  from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
  parallel.setup_cpu_devices(
      int(config.train.get('cpu_devices', 0)),
      bool(config.train.get('cpu_ynnpack_convs', False)))


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; a bad input is one line on stderr, exit 2."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  try:
    written = run(argv)
  except VisualizeError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for name, path in written.items():
    print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
