"""Image files for the tests that feed damaged data."""

import io

import numpy as np
from PIL import Image


def damaged_jpeg(seed: int, size: int = 8) -> bytes:
  """A real JPEG whose entropy-coded data is junk (SOI..SOS and EOI kept).

  It passes the folder scan's header and end-marker check; decoding it
  fails (libjpeg: 'Corrupt JPEG data', 'Unsupported marker type 0x6b').
  """
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(
      buf, 'JPEG', quality=90)
  good = buf.getvalue()
  sos = good.rfind(b'\xff\xda')
  start = sos + 2 + int.from_bytes(good[sos + 2:sos + 4], 'big')
  end = good.rfind(b'\xff\xd9')
  junk = rng.integers(0, 255, end - start - 2, dtype=np.uint8).tobytes()
  return good[:start] + b'\xff\x6b' + junk + good[end:]
