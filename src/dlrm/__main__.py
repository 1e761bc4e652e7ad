"""`python -m dlrm` (and `torchrun -m dlrm`) run the command-line interface."""

from dlrm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
