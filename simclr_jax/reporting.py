"""What a run tells its user: console progress, metrics.jsonl and TensorBoard.

Only process 0 writes files and prints. On a terminal the progress is one
line redrawn in place (step, loss, images/s, time left); when the output is
not a terminal (logs, notebooks, CI) it becomes one line per logging period.
"""

from __future__ import annotations

import collections
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
  """Step progress on a stream: in place on a terminal, periodic lines otherwise.

  On a terminal the line is redrawn at most every `line_every_seconds`; off a
  terminal (logs, notebooks, CI) a line is printed at every forced update
  (the logging steps) and at least every `offline_every_seconds`, so short
  runs with long steps are never silent. Speed and time left come from the
  last `window` updates (not from the start), so one slow step (compilation,
  a checkpoint) does not skew them for long. With `total_steps` None it
  counts without a bar or time left (e.g. batches of an evaluation pass).
  """

  def __init__(self, total_steps: int | None, start_step: int = 0, *,
               stream: TextIO | None = None, enabled: bool = True,
               line_every_seconds: float = 0.5,
               offline_every_seconds: float = 30.0,
               images_per_step: int | None = None, window: int = 20,
               label: str = 'step'):
    self.total = total_steps
    self.start_step = start_step
    self.stream = stream if stream is not None else sys.stderr
    self.enabled = enabled
    self.tty = enabled and hasattr(self.stream, 'isatty') and self.stream.isatty()
    self.line_every_seconds = line_every_seconds
    self.offline_every_seconds = offline_every_seconds
    self.images_per_step = images_per_step
    self.label = label
    self._times = collections.deque(maxlen=window + 1)
    self._times.append((time.perf_counter(), start_step))
    self._last_draw = time.perf_counter()
    self._drawn = False

  def restart_clock(self, step: int) -> None:
    """Measures speed and time left from now and `step` on (e.g. after compiling)."""
    self.start_step = step
    self._times.clear()
    self._times.append((time.perf_counter(), step))

  def _rate(self) -> float | None:
    """Steps per second over the recent window, None before two points."""
    if len(self._times) < 2:
      return None
    (t0, s0), (t1, s1) = self._times[0], self._times[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None

  def update(self, step: int, metrics: Mapping[str, float] | None = None,
             images_per_sec: float | None = None, *, force: bool = False) -> None:
    """Reports that `step` steps are done; `metrics` are the latest values."""
    if not self.enabled:
      return
    now = time.perf_counter()
    if step > self._times[-1][1]:
      self._times.append((now, step))
    every = self.line_every_seconds if self.tty else self.offline_every_seconds
    if not force and now - self._last_draw < every:
      return
    self._last_draw = now
    rate = self._rate()
    known = self.total is not None
    left = (self.total - step) / rate if rate and known else float('nan')
    if images_per_sec is None and rate and self.images_per_step:
      images_per_sec = rate * self.images_per_step
    width = 20
    frac = step / max(self.total, 1) if known else 0.0
    parts = [f'{self.label} {step}/{self.total}' if known
             else f'{self.label} {step}']
    if self.tty and known:
      filled = int(width * frac)
      parts.insert(0, '[' + '#' * filled + '.' * (width - filled) + ']')
    if metrics and 'loss' in metrics:
      parts.append(f'loss {metrics["loss"]:.4f}')
    if metrics and 'knn_accuracy' in metrics:
      parts.append(f'kNN {metrics["knn_accuracy"]:.4f}')
    if images_per_sec:
      parts.append(f'{images_per_sec:,.0f} img/s')
    if known and step < self.total:
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
      _end_cut_line(self.path)
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


def _end_cut_line(path: str) -> None:
  """Ends a last line cut short (a full disk) so the next record starts anew."""
  try:
    with open(path, 'rb+') as f:
      f.seek(0, os.SEEK_END)
      if f.tell() == 0:
        return
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b'\n':
        f.write(b'\n')
  except FileNotFoundError:
    pass


def read_metrics(workdir: str) -> list[dict]:
  """All records of `workdir/metrics.jsonl`, oldest first.

  A line cut short (the disk filled up while it was written) is skipped.
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict):
        records.append(record)
  return records


def earlier_train_seconds(workdir: str) -> float:
  """Seconds of training that earlier invocations of the run in `workdir` recorded.

  Each invocation that ends by a signal or finishes writes the run's total
  so far as `train_seconds`; this is the last such value (0.0 if none). An
  invocation killed by SIGKILL wrote none: its time is not counted.
  """
  for record in reversed(read_metrics(workdir)):
    if 'train_seconds' in record:
      return float(record['train_seconds'])
  return 0.0
