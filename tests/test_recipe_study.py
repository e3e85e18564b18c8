"""bench/cpu_recipe_study.py: its named runs override real config fields, and its plans add up."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))
import cpu_recipe_study as study  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import cifar10_cpu  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize('name', sorted(study.RUNS))
def test_every_named_run_overrides_fields_the_config_has(name):
  assert study.unknown_fields(cifar10_cpu.get_config(), study.RUNS[name]) == []


def test_a_misspelt_field_is_refused_before_any_run(capsys):
  study.RUNS['_typo'] = {'aug.crop_scale': (0.2, 1.0)}
  try:
    with pytest.raises(SystemExit):
      study.main(['--runs=_typo', '--workroot=/nonexistent/never_written'])
  finally:
    del study.RUNS['_typo']
  assert "'aug.crop_scale'" in capsys.readouterr().err


def test_flags_and_cost_groups():
  assert study.flag('augment.crop_scale', (0.2, 1.0)) == '--config.augment.crop_scale=(0.2,1.0)'
  assert study.flag('eval.linear_probe', False) == '--config.eval.linear_probe=false'
  # Loss, optimiser and augmentation strengths do not change a step's cost;
  # width and batch do.
  prev = study.cost_key(study.RUNS['prev'])
  assert study.cost_key(study.RUNS['prev_lr015']) == prev
  assert study.cost_key(study.RUNS['prev_crop02']) == prev
  assert study.cost_key(study.RUNS['prev_w24']) != prev
  assert study.cost_key(study.RUNS['prev_b64']) != prev
  assert study.cost_key({}) != prev  # cpu_devices and width are not pinned.


def test_plan_fills_the_budget_in_whole_rounds():
  assert study.plan_steps(360.0, 1.74, 10) == 620
  assert study.plan_steps(1.0, 1.74, 10) == 10  # Never zero steps.


def test_readme_study_table_matches_the_recorded_runs():
  """Each README row named after a run shows that run's recorded kNN and probe."""
  import json  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  recorded = {}
  with open(os.path.join(ROOT, 'bench', 'results', 'cpu_recipe_study_zen4.jsonl')) as f:
    for line in f:
      run = json.loads(line)
      recorded[run.get('named_now', run['run'])] = run
  with open(os.path.join(ROOT, 'README.md')) as f:
    rows = [l for l in f if re.match(r'\| `\w+` \|', l)]
  shown = {}
  for row in rows:
    name = re.match(r'\| `(\w+)` \|', row).group(1)
    if name in recorded:
      shown[name] = [float(x) for x in re.findall(r'(\d+\.\d)%', row)][-2:]
  assert set(shown) == set(recorded), 'README lacks a recorded run or shows another'
  for name, (knn, probe) in shown.items():
    assert knn == round(100 * recorded[name]['final_knn_accuracy'], 1), name
    assert probe == round(100 * recorded[name]['final_probe_accuracy'], 1), name
