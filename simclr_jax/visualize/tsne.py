"""tsne.png: a t-SNE (scikit-learn) of the encoder's `h`, coloured by class,
one panel per encoder, the classes named in the legend."""

from __future__ import annotations

import textwrap
from typing import Any, Sequence

import numpy as np

from simclr_jax.visualize import load
from simclr_jax.visualize import sample

# Titles wrap at this many characters per inch of figure width (12 pt).
_CHARS_PER_INCH = 10


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
    raise load.VisualizeError(f't-SNE needs at least 5 images, got {n}')
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


def _wrap(text: str, inches: float) -> str:
  width = max(20, int(inches * _CHARS_PER_INCH))
  return '\n'.join(textwrap.fill(line, width) for line in text.split('\n'))


def tsne_figure(panels: Sequence[tuple[str, np.ndarray, np.ndarray]],
                title: str = '', class_names: Sequence[str] = ()) -> Any:
  """A matplotlib Figure: one scatter per (title, xy (n, 2), labels (n,)).

  Args:
    panels: per panel its title, float xy (n, 2) and int labels (n,).
    title: the figure's title (wrapped to the figure's width).
    class_names: the legend's name of each label (the label itself where
      missing; -1 is 'unlabelled').
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  classes = sorted({int(y) for _, _, labels in panels for y in labels})
  names = {c: ('unlabelled' if c < 0 else class_names[c]
               if c < len(class_names) else str(c)) for c in classes}
  legend = len(classes) <= 20
  # Room on the right for the legend: its longest name at about 0.09 in
  # per character, beside the markers.
  extra = (0.6 + 0.09 * max(map(len, names.values()), default=0)
           if legend else 0.0)
  width = 5.0 * len(panels) + extra
  fig = Figure(figsize=(width, 5.4), layout='constrained')
  axes = fig.subplots(1, len(panels), squeeze=False)[0]
  colors = dict(zip(classes, _class_colors(len(classes))))
  for ax, (name, xy, labels) in zip(axes, panels):
    for c in classes:
      sel = np.asarray(labels) == c
      ax.scatter(xy[sel, 0], xy[sel, 1], s=7, color=colors[c],
                 label=names[c], linewidths=0)
    ax.set_title(_wrap(name, 5.0 * 0.8))
    ax.set_xticks([])
    ax.set_yticks([])
  if legend:
    axes[-1].legend(title='class', loc='center left', bbox_to_anchor=(1, 0.5),
                    markerscale=2.5, frameon=False)
  if title:
    fig.suptitle(_wrap(title, width * 0.9))
  return fig


def tsne_panels_figure(enc: Any, seed: int = 0, title: str = '') -> Any:
  """The t-SNE Figure of every encoder of an `Encoders`, side by side."""
  labels = enc.queries['label']
  panels = [(name, tsne_embedding(enc.query_h[name], seed), labels)
            for name in enc.names]
  heading = f't-SNE of h: {sample.describe(labels)}'
  return tsne_figure(panels, heading + (f'\n{title}' if title else ''),
                     enc.class_names)


def draw_tsne(enc: Any, path: str, seed: int = 0, title: str = '') -> str:
  """Writes the t-SNE of every encoder of `enc` side by side."""
  tsne_panels_figure(enc, seed, title).savefig(path, dpi=110, format='png')
  return path
