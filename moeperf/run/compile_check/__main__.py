"""Entry of the compile-check process (run by `moeperf kernels --check-compile`)."""

import os
import sys

# Before moeperf (and triton) are imported: the compiler needs JIT functions, not the
# interpreter's, and moeperf.kernels.runtime keeps a value that is already set.
os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

from moeperf.run.compile_check.run import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
