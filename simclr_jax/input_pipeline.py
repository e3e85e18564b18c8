"""Moved to `simclr_jax.data`; this shim goes once train.py imports that."""

from simclr_jax.data import create_eval_iterator  # noqa: F401
from simclr_jax.data import create_train_iterator  # noqa: F401
from simclr_jax.data import get_info  # noqa: F401
