# `make test-spawn` starts the chapters' kernels with IPYTHONDIR pointing here, so that this runs first in each:
# DataLoader workers then start as on macOS and Windows (and as Python 3.14 on Linux starts them with forkserver),
# in a fresh interpreter that must import everything a worker needs.
import multiprocessing

multiprocessing.set_start_method("spawn", force=True)
