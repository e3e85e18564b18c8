"""What a run tells its user: console progress, metrics.jsonl and TensorBoard.

Only process 0 writes files and prints. On a terminal the progress is one
line redrawn in place (step, loss, images/s, time left); when the output is
not a terminal (logs, notebooks, CI) it becomes one line per logging period.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping, TextIO

import jax
import numpy as np
from absl import logging


def _format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else (f'{m}m{s:02d}s' if m else f'{s}s')


class Progress:
  """Step progress on a stream, in place on a terminal, periodic lines otherwise."""

  def __init__(self, total_steps: int, start_step: int = 0, *,
               stream: TextIO | None = None, enabled: bool = True,
               line_every_seconds: float = 0.5):
    self.total = total_steps
    self.start_step = start_step
    self.stream = stream if stream is not None else sys.stderr
    self.enabled = enabled
    self.tty = enabled and hasattr(self.stream, 'isatty') and self.stream.isatty()
    self.line_every_seconds = line_every_seconds
    self._t0 = time.perf_counter()
    self._last_draw = 0.0
    self._drawn = False

  def restart_clock(self, step: int) -> None:
    """Measures time left from now and `step` on (e.g. after compilation)."""
    self.start_step = step
    self._t0 = time.perf_counter()

  def update(self, step: int, metrics: Mapping[str, float] | None = None,
             images_per_sec: float | None = None, *, force: bool = False) -> None:
    """Reports that `step` steps are done; `metrics` are the latest values."""
    if not self.enabled:
      return
    now = time.perf_counter()
    if not force and (not self.tty or
                      now - self._last_draw < self.line_every_seconds):
      return  # Off a terminal, only the logging steps (force=True) print.
    self._last_draw = now
    done = step - self.start_step
    elapsed = now - self._t0
    left = (self.total - step) * elapsed / done if done > 0 else float('nan')
    width = 20
    frac = step / max(self.total, 1)
    parts = [f'step {step}/{self.total}']
    if self.tty:
      filled = int(width * frac)
      parts.insert(0, '[' + '#' * filled + '.' * (width - filled) + ']')
    if metrics and 'loss' in metrics:
      parts.append(f'loss {metrics["loss"]:.4f}')
    if images_per_sec:
      parts.append(f'{images_per_sec:,.0f} img/s')
    parts.append(f'{_format_duration(left)} left')
    line = ' | '.join(parts)
    if self.tty:
      self.stream.write('\r' + line + '\x1b[K')
      self._drawn = True
    else:
      self.stream.write(line + '\n')
    self.stream.flush()

  def close(self) -> None:
    if self.tty and self._drawn:
      self.stream.write('\n')
      self.stream.flush()
      self._drawn = False


def _to_python(value: Any) -> Any:
  if isinstance(value, (jax.Array, np.ndarray, np.generic)):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  return value


class MetricsWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard (process 0 only)."""

  def __init__(self, workdir: str, *, enabled: bool | None = None,
               tensorboard: bool = True):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      if tensorboard:
        try:
          import tensorflow as tf  # pylint: disable=g-import-not-at-top
          self._tf = tf
          self._tb = tf.summary.create_file_writer(
              os.path.join(workdir, 'tensorboard'))
        except ImportError:
          logging.warning('TensorFlow is not installed: no TensorBoard events.')

  def write(self, step: int, scalars: Mapping[str, Any], **extra: Any) -> dict:
    """Appends one JSON line {'step': step, **scalars, **extra}; returns it."""
    record = {'step': int(step)}
    record.update({k: _to_python(v) for k, v in scalars.items()})
    record.update({k: _to_python(v) for k, v in extra.items()})
    if not self.enabled:
      return record
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    if self._tb is not None:
      with self._tb.as_default(step=int(step)):
        for k, v in record.items():
          if k != 'step' and isinstance(v, (int, float)) and not isinstance(v, bool):
            self._tf.summary.scalar(k, v)
      self._tb.flush()
    return record

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str) -> list[dict]:
  """All records of `workdir/metrics.jsonl`, oldest first."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
