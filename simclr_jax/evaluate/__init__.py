"""Evaluating a representation, as the paper and its users do.

* `features`: the encoder's `h` (and `z`) of every image, batch by batch,
  sharded over the mesh.
* `knn`: weighted kNN on `h` (k=200, T=0.1, votes exp(sim / T)) with a
  feature bank sharded over the devices and chunked similarities, so memory
  stays bounded (the kNN monitor during pretraining and the final score).
* `linear`: the linear classifier on a frozen encoder (the reference linear
  evaluation protocol, and the fast variant on features computed once).
* `modes`: `main.py`'s modes linear_eval, finetune and export;
  `finetune` and `distill` (SimCLRv2's second and third steps).
"""

from simclr_jax.evaluate.features import local_rows
from simclr_jax.evaluate.features import make_feature_fn
from simclr_jax.evaluate.knn import knn_accuracy

__all__ = ['knn_accuracy', 'local_rows', 'make_feature_fn']
