"""Evaluating a representation, as the paper and its users do.

* `features`: the encoder's `h` (or projection-head outputs) of every image,
  batch by batch, sharded over the mesh.
* `knn`: weighted kNN on `h` (k=200, T=0.1, votes exp(sim / T)) with a
  feature bank sharded over the devices and chunked similarities, so memory
  stays bounded (the kNN monitor during pretraining and the final score).
* `probe`: the quick final linear probe on features computed once.
* `subsets`: class-balanced, seeded, nested label subsets for fine-tuning.
"""

from simclr_jax.evaluate.features import extract_features
from simclr_jax.evaluate.features import make_feature_fn
from simclr_jax.evaluate.knn import knn_accuracy
from simclr_jax.evaluate.probe import linear_probe_accuracy

__all__ = ['extract_features', 'knn_accuracy', 'linear_probe_accuracy',
           'make_feature_fn']
