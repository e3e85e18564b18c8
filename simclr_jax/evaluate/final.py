"""The quick score at the end of pretraining: weighted kNN and a linear probe.

`final_evaluation` scores the encoder's `h` (and, with
eval.compare_random_init, the same encoder at random initialisation) on the
eval split; `knn_monitor` is the kNN score every eval.every_steps during
training. Both bounded in memory (see `knn` and `probe`).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import ml_collections

from simclr_jax import reporting
from simclr_jax.evaluate import features as features_lib
from simclr_jax.evaluate import knn
from simclr_jax.evaluate import probe
from simclr_jax.evaluate import runs as runs_lib


def knn_score(config: Any, model: Any, variables: Any,
              mesh: jax.sharding.Mesh, source: Any,
              label: str = 'kNN') -> float:
  """Weighted kNN accuracy of `h`: bank = labelled train split, queries =
  the eval split (centre crops); memory bounded (see evaluate.knn)."""
  local = runs_lib.eval_local_batch(config, mesh)
  feature_fn = features_lib.make_feature_fn(model, mesh)

  def counted(split):
    rows = max(source.counts(split, jax.process_count()))
    progress = reporting.Progress(
        -(-rows // local), enabled=jax.process_index() == 0,
        label=f'{label}: {split} split, batch')
    for i, batch in enumerate(source.eval_iterator(split, local)):
      yield batch
      progress.update(i + 1)
    progress.close()

  bank = knn.build_bank(feature_fn, variables, counted('train'), mesh)
  predict = knn.make_predict_fn(
      mesh, k=config.eval.knn_k, temperature=config.eval.knn_temperature,
      num_classes=source.num_classes)
  return knn.bank_accuracy(predict, bank, feature_fn, variables,
                           counted('eval'), mesh)


def knn_monitor(config: Any, model: Any, mesh: jax.sharding.Mesh,
                 source: Any) -> Callable[[Any], float]:
  """state -> kNN accuracy of its encoder (every eval.every_steps)."""
  def monitor(state: Any) -> float:
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    return knn_score(config, model, variables, mesh, source,
                     label='kNN monitor')
  return monitor


def final_evaluation(config: Any, workdir: str, model: Any, variables: Any,
                     init_variables: Any | None, mesh: jax.sharding.Mesh,
                     source: Any, info: Any) -> dict[str, float]:
  """The quick final score of the encoder's `h`: kNN and a fast linear probe.

  `final_knn_accuracy`: weighted kNN (eval.knn_k, eval.knn_temperature) of the
  eval split against the labelled train split. `final_probe_accuracy`: a
  linear head trained for eval.probe_epochs on centre-crop features computed
  once (kept on disk in workdir/final_probe/features, read batch by batch)
  and scored top-1 on the eval split. Both bounded in memory. Not the
  paper's linear evaluation (that is --config.mode=linear_eval).
  `init_variables`, when given, are scored the same way, with the suffix
  `_random_init`.
  """
  if info.num_classes == 0:
    return {}
  results = {}
  candidates = [('', variables)]
  if init_variables is not None:
    candidates.append(('_random_init', init_variables))
  for suffix, vs in candidates:
    if config.eval.knn_k > 0:
      results['final_knn_accuracy' + suffix] = knn_score(
          config, model, vs, mesh, source,
          label='final kNN' + suffix.replace('_', ' '))
    if config.eval.linear_probe:
      folder = os.path.join(workdir, 'final_probe' + suffix)
      run = runs_lib.Run.attach(config, folder, mesh, source, info)
      section = ml_collections.ConfigDict({
          'epochs': float(config.eval.probe_epochs),
          'batch_size': int(config.eval.batch_size),
          'base_learning_rate': float(config.eval.probe_learning_rate),
          'momentum': 0.9, 'weight_decay': float(config.eval.probe_l2),
          'augment': False, 'checkpoint_every_steps': 10**9})
      got = probe.train_linear_head(
          run, model, vs, section=section, workdir=folder,
          features_folder=os.path.join(folder, 'features'),
          label='final probe' + suffix.replace('_', ' '))
      if got.get('preempted'):
        return {**results, 'preempted': True}
      results['final_probe_accuracy' + suffix] = got['top1']
  return results
