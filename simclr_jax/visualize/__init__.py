"""Figures of a SimCLR run: `python -m simclr_jax.visualize --workdir DIR`.

One module per job (the command line's help is `cli`'s docstring):

* `load`: a workdir's config, its encoder (checkpoint or random init) and
  the encoder's features `h`.
* `sample`: seeded, class-balanced samples of a split, and class names.
* `encoders`: `Encoders`, the features of the sampled images, once.
* `curves`, `tsne`, `neighbors`, `views`: one figure each.
* `cli`: `draw_workdir` (every figure of a workdir) and the command line.

A new figure is a module with a `draw_NAME(enc or config, path, ...)`
function, called from `cli.draw_workdir` and named in `cli.FIGURES`.
"""

from simclr_jax.visualize.cli import FIGURES
from simclr_jax.visualize.cli import draw_workdir
from simclr_jax.visualize.cli import main
from simclr_jax.visualize.cli import run
from simclr_jax.visualize.curves import curves_figure
from simclr_jax.visualize.encoders import Encoders
from simclr_jax.visualize.load import VisualizeError
from simclr_jax.visualize.load import encoder_source
from simclr_jax.visualize.load import features
from simclr_jax.visualize.load import load_config_file
from simclr_jax.visualize.load import load_encoder
from simclr_jax.visualize.load import load_run_config
from simclr_jax.visualize.load import random_init_encoder
from simclr_jax.visualize.neighbors import MISMATCH_RGB
from simclr_jax.visualize.neighbors import NeighborLayout
from simclr_jax.visualize.neighbors import draw_neighbors
from simclr_jax.visualize.neighbors import nearest_neighbors
from simclr_jax.visualize.neighbors import neighbor_grid
from simclr_jax.visualize.neighbors import neighbor_mismatch
from simclr_jax.visualize.sample import balanced_positions
from simclr_jax.visualize.sample import class_names
from simclr_jax.visualize.sample import pick_queries
from simclr_jax.visualize.sample import sample_split
from simclr_jax.visualize.tsne import draw_tsne
from simclr_jax.visualize.tsne import tsne_embedding
from simclr_jax.visualize.tsne import tsne_figure
from simclr_jax.visualize.views import draw_views
from simclr_jax.visualize.views import eval_images
from simclr_jax.visualize.views import views_grid

__all__ = [
    'Encoders', 'FIGURES', 'MISMATCH_RGB', 'NeighborLayout', 'VisualizeError',
    'balanced_positions', 'class_names', 'curves_figure', 'draw_neighbors',
    'draw_tsne', 'draw_views', 'draw_workdir', 'encoder_source',
    'eval_images', 'features', 'load_config_file', 'load_encoder',
    'load_run_config', 'main', 'nearest_neighbors', 'neighbor_grid',
    'neighbor_mismatch', 'pick_queries', 'random_init_encoder', 'run',
    'sample_split', 'tsne_embedding', 'tsne_figure', 'views_grid',
]
