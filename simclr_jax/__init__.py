"""simclr_jax: SimCLR contrastive self-supervised learning in JAX/Flax.

Importing the package does not import TensorFlow; only the input pipeline and
the training loop need it.
"""

__version__ = '0.1.0'

_LAZY = {
    'nt_xent': 'simclr_jax.losses',
    'nt_xent_with_metrics': 'simclr_jax.losses',
    'two_views': 'simclr_jax.augment',
    'create_model': 'simclr_jax.models',
    'SimCLRModel': 'simclr_jax.models',
}

__all__ = sorted(_LAZY)


def __getattr__(name):
  if name in _LAZY:
    import importlib
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
