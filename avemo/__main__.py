"""`python -m avemo ...` (and `torchrun -m avemo train ...`): the `avemo` command."""
import sys

from avemo.cli import main

if __name__ == "__main__":
    sys.exit(main())
