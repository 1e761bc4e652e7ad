"""`python -m dlrm` (and `torchrun -m dlrm`) run the command-line interface.

A rank started by torchrun ends with ``os._exit`` once its output is flushed. By then its
work is done: files written and closed, the process group destroyed by
``distributed_session``. Skipping the interpreter's teardown avoids a rare abort there. In
one two-rank test job of ~150 a rank printed "done", then died with ``terminate called
without an active exception`` (exit status -6): a C++ thread still joinable when static
destructors ran. torchrun reports that as a failed job.
"""

import logging
import os
import sys

from dlrm.cli import main
from dlrm.distributed.launch import in_torchrun

if __name__ == "__main__":
    code = main()
    if in_torchrun():
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)
