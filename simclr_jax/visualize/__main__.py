"""`python -m simclr_jax.visualize`: the command line of `cli`."""

import sys

from simclr_jax.visualize import cli

if __name__ == '__main__':
  sys.exit(cli.main())
