"""Which config changes a resume refuses (workdir.changed_fields)."""

import json

from configs import default
from simclr_jax import workdir


def _recorded(config):
  return json.loads(config.to_json_best_effort())


def test_a_change_of_what_pretraining_computes_is_named():
  old = default.get_config()
  new = default.get_config()
  new.train.global_batch_size *= 2
  new.loss.temperature = 0.2
  assert workdir.changed_fields(_recorded(old), new) == [
      'loss.temperature', 'train.global_batch_size']


def test_other_modes_sections_and_execution_fields_are_free():
  old = default.get_config()
  new = default.get_config()
  new.finetune.epochs = 1.0  # Pretraining does not read these.
  new.distill.temperature = 0.5
  new.linear_eval.epochs = 3.0
  new.train.log_every_steps = 7
  new.eval.knn_k = 3
  assert workdir.changed_fields(_recorded(old), new) == []
  # A distillation run reads distill.* and fine-tuning's labelled subset.
  old.mode = new.mode = 'distill'
  new.finetune.label_fraction = 0.5
  assert workdir.changed_fields(_recorded(old), new) == [
      'distill.temperature', 'finetune.epochs', 'finetune.label_fraction']


def test_a_field_added_since_the_run_was_recorded_is_not_a_change():
  config = default.get_config()
  config.mode = 'distill'
  old = _recorded(config)
  del old['distill']  # A workdir of a version without these fields.
  del old['augment']['crop_scale']
  assert workdir.changed_fields(old, config) == []
