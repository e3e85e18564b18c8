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
  evaluation split is smaller), coloured by class, the classes named in the
  legend (a folder's subfolder names).
* `neighbors.png`: `--num_queries` evaluation images (one per class in turn)
  beside their `--k` nearest of `--bank_size` training images by cosine
  similarity of `h`, in a red frame where the neighbour's class differs
  from the query's; the share of neighbours of the same class is over all
  the sampled evaluation images.
* `views.png`: `--num_images` evaluation images of different classes beside
  pairs of their SimCLR views (`augment.two_views` with the run's `augment`
  settings).

Every figure's images are a seeded (`--seed`), class-balanced sample of
their split, not its first images (a class-folder data set is sorted by
class); the printed lines say how many images and classes each covers.

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
import os
import sys
from typing import Any, Sequence

from simclr_jax.visualize import curves
from simclr_jax.visualize import encoders
from simclr_jax.visualize import load
from simclr_jax.visualize import neighbors
from simclr_jax.visualize import sample
from simclr_jax.visualize import tsne
from simclr_jax.visualize import views

FIGURES = ('curves', 'views', 'tsne', 'neighbors')
_PROG = 'python -m simclr_jax.visualize'
VisualizeError = load.VisualizeError


def quiet_tensorflow() -> None:
  """Hides TensorFlow's and oneDNN's start-up notices, as main.py does (only
  before TensorFlow is imported; a value already set is kept)."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')


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
  config = load.load_run_config(workdir)
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
  summary = curves.summary(records)
  written = {}
  enc = None
  if 'tsne' in figures or 'neighbors' in figures:
    enc = encoders.Encoders(config, workdir, random_init=random_init,
                            num_points=num_points, bank_size=bank_size,
                            seed=seed, log=log)
  if 'curves' in figures:
    fig = curves.curves_figure(
        records, f'{name}: {summary}' if summary else name,
        mode=config.get('mode', 'pretrain'))
    if fig is None:
      log(f'visualize: no logged steps in {workdir}/metrics.jsonl: no '
          'curves.png')
    else:
      path = os.path.join(out, 'curves.png')
      fig.savefig(path, dpi=110, format='png')
      written['curves'] = path
  if 'views' in figures:
    written['views'] = views.draw_views(
        config, os.path.join(out, 'views.png'), images=images,
        num_images=num_images, num_pairs=num_pairs, seed=seed, log=log)
  if enc is not None:
    if 'tsne' in figures:
      written['tsne'] = tsne.draw_tsne(enc, os.path.join(out, 'tsne.png'),
                                       seed, title=summary)
      log(f'visualize: t-SNE of {sample.describe(enc.queries["label"])}')
    if 'neighbors' in figures:
      written['neighbors'], same = neighbors.draw_neighbors(
          enc, os.path.join(out, 'neighbors.png'), num_queries, k)
      scored = sample.describe(neighbors.scored_labels(enc), 'queries')
      bank = sample.describe(enc.bank['label'], 'training images')
      log('visualize: neighbours of the same class: ' + ', '.join(
          f'{n} {v:.0%}' for n, v in same.items())
          + f' ({scored}; k={k} of a bank of {bank})')
  return written


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
                      help='evaluation images in the t-SNE and scored for '
                      'neighbours (a class-balanced sample)')
  parser.add_argument('--bank_size', type=int, default=10000,
                      help='training images searched for neighbours (a '
                      'class-balanced sample)')
  parser.add_argument('--num_queries', type=int, default=10)
  parser.add_argument('--k', type=int, default=8, help='neighbours per query')
  parser.add_argument('--num_images', type=int, default=4,
                      help='photos in the views grid')
  parser.add_argument('--num_pairs', type=int, default=3,
                      help='pairs of views per photo')
  parser.add_argument('--seed', type=int, default=0,
                      help='seed of the samples, the t-SNE and the views')
  return parser


def _default_config_path() -> str:
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  return os.path.join(root, 'configs', 'default.py')


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
      config = load.load_run_config(args.workdir)
      images = args.images or 'data'
    else:
      path = args.config or _default_config_path()
      config = (load.load_config_file(path)
                if os.path.exists(path) or args.config else None)
      if config is None:
        raise VisualizeError('give --config FILE for the views')
      images = args.images or ('data' if args.config else 'samples')
    _setup_devices(config)
    out = args.out or (os.path.join(args.workdir, 'figures') if args.workdir
                       else 'figures')
    os.makedirs(out, exist_ok=True)
    path = views.draw_views(config, os.path.join(out, 'views.png'),
                            images=images, num_images=args.num_images,
                            num_pairs=args.num_pairs, seed=args.seed)
    return {'views': path}
  config = load.load_run_config(args.workdir)
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
  quiet_tensorflow()
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
