"""The views grid, now `simclr_jax.visualize.views` (kept for old imports;
the command line is `python -m simclr_jax.visualize --views`)."""

from simclr_jax.visualize.views import IMAGE_EXTENSIONS
from simclr_jax.visualize.views import SAMPLE_PHOTOS
from simclr_jax.visualize.views import letterbox
from simclr_jax.visualize.views import load_photos
from simclr_jax.visualize.views import make_views
from simclr_jax.visualize.views import render_grid

__all__ = ['IMAGE_EXTENSIONS', 'SAMPLE_PHOTOS', 'letterbox', 'load_photos',
           'make_views', 'render_grid']
