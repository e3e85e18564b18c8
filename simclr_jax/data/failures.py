"""Image files that fail to decode: recorded, named once, counted.

NumPy and the standard library only. A `DecodeFailures` belongs to one
source and holds which of its files (indices into its path list) are known
not to decode, so that each is named in one warning line, once per process,
and not decoded again. `DataError` is the one-line error of data that cannot
be used at all (every image fails): a `config_lib.ConfigError`, so main.py
prints it as one line and exits with status 2.
"""

from __future__ import annotations

import threading
from typing import Sequence

import numpy as np
from absl import logging

from simclr_jax import config_lib

# Decode failures in a row, with no image decoded yet, after which a source
# is declared unreadable (rather than trying every file of a folder of junk).
GIVE_UP_AFTER = 16
# File names a summary line shows.
NAMES_SHOWN = 3


class DataError(config_lib.ConfigError):
  """The data cannot be used, e.g. none of its images decodes (one line)."""


def examples(names: Sequence[str], total: int) -> str:
  """'a, b, c' or 'a, b, c and 7 more' of `total` named things."""
  shown = ', '.join(str(n) for n in names[:NAMES_SHOWN])
  more = total - min(len(names), NAMES_SHOWN)
  return shown + (f' and {more} more' if more > 0 else '')


def nothing_decodes(total: int, what: str, names: Sequence[str]) -> DataError:
  """The one-line error of `total` images of `what` of which none decodes.

  `names`: the files that were tried (some are shown).
  """
  return DataError(f'none of the {total} images of {what} can be decoded '
                   f'({examples(names, len(names))})')


class DecodeFailures:
  """The files of a source that do not decode, by index into its paths.

  `record` is called from the thread that assembles batches (or evaluates);
  `is_bad` may be read from tf.data's generator threads at the same time.
  """

  def __init__(self, names: np.ndarray):
    """`names`: (N,) object array, the file of each index (for messages)."""
    self.names = names
    self.bad = np.zeros(len(names), bool)
    self._lock = threading.Lock()

  @property
  def count(self) -> int:
    return int(self.bad.sum())

  def bad_names(self) -> list[str]:
    return [str(self.names[i]) for i in np.flatnonzero(self.bad)]

  def record(self, indices: Sequence[int], action: str) -> None:
    """Marks files bad; names each new one in a warning line with the count.

    Args:
      indices: file indices that failed to decode.
      action: what happens to them ('replaced in its batch', ...).
    """
    with self._lock:
      new = [int(i) for i in indices if not self.bad[i]]
      for i in new:
        self.bad[i] = True
        logging.warning('cannot decode %s: %s (%d undecodable file(s) so far)',
                        self.names[i], action, int(self.bad.sum()))
