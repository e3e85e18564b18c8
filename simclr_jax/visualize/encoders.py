"""The features of a run's encoder(s) on sampled images, for t-SNE and
neighbours (`Encoders`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from simclr_jax.visualize import load
from simclr_jax.visualize import sample


class Encoders:
  """Features of a run's encoder(s) on class-balanced samples of its data.

  Attributes:
    names: panel titles, the trained encoder first ('random init' second
      when asked for).
    queries: {'image' uint8 (q, S, S, 3), 'label' int32 (q,)}: a
      class-balanced sample of up to `num_points` evaluation images (topped
      up with a class-balanced part of the bank when the eval split is
      smaller); the first `num_eval` rows are evaluation images.
    num_eval: how many of the queries are evaluation images.
    bank: {'image', 'label'}: a class-balanced sample of up to `bank_size`
      training images.
    class_names: the data's class names by label; () when it has none.
    query_h, bank_h: per name, float32 h (q, C) of the queries and (n, C) of
      the bank.
  """

  def __init__(self, config: Any, workdir: str, *, random_init: bool,
               num_points: int, bank_size: int, mesh: Any | None = None,
               seed: int = 0, log: Any = print):
    from simclr_jax import parallel  # pylint: disable=g-import-not-at-top
    from simclr_jax.evaluate import features as features_lib  # pylint: disable=g-import-not-at-top
    if mesh is None:
      mesh = parallel.make_mesh(0)
    model, variables, step = load.load_encoder(config, workdir, mesh)
    encoders = [(f'trained (step {step})', variables)]
    if random_init:
      encoders.append(('random init',
                       load.random_init_encoder(config, mesh)[1]))
    source = load.make_source(config)
    self.class_names = sample.class_names(source)
    batch = load.eval_batch(config, mesh)
    evals = sample.sample_split(source, 'eval', batch, num_points, (seed, 0))
    self.num_eval = len(evals['label'])
    self.bank = sample.sample_split(source, 'train', batch, bank_size,
                                    (seed, 1))
    if self.num_eval < num_points and len(self.bank['label']):
      extra = sample.balanced_positions(self.bank['label'],
                                        num_points - self.num_eval, (seed, 2))
      evals = {k: np.concatenate([evals[k], self.bank[k][extra]])
               for k in evals}
    self.queries = evals
    topped = len(evals['label']) - self.num_eval
    evaluated = sample.describe(evals['label'][:self.num_eval],
                                'evaluation images')
    bank = sample.describe(self.bank['label'], 'training images')
    log(f'visualize: sampled (seed {seed}) {evaluated}'
        + (f' (+ {topped} training images for the t-SNE)' if topped else '')
        + f'; a bank of {bank}')
    self.names = [name for name, _ in encoders]
    self.query_h, self.bank_h = {}, {}
    # Both encoders are the same module: one compiled function.
    fn = features_lib.make_feature_fn(model, mesh)
    for name, v in encoders:
      log(f'visualize: features of {len(self.queries["label"])} + '
          f'{len(self.bank["label"])} images, encoder {name}')
      self.query_h[name] = load.features(fn, v, self.queries['image'], mesh,
                                         batch)
      self.bank_h[name] = load.features(fn, v, self.bank['image'], mesh,
                                        batch)

  def class_name(self, label: int) -> str:
    """The name of a label ('unlabelled' for -1; the label without names)."""
    if label < 0:
      return 'unlabelled'
    if label < len(self.class_names):
      return self.class_names[label]
    return str(label)
