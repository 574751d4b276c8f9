"""A plugin that loads in the process that asked for it and fails in any process that
process starts (a worker): e.g. a library found only through the parent's working folder."""

import multiprocessing

from plugin_faults import EXAMPLE

if multiprocessing.parent_process() is not None:
    raise RuntimeError("libfancy.so: cannot open shared object file")


def moeperf_implementations():
    import dataclasses

    return [dataclasses.replace(EXAMPLE, name="moe-parent-only")]
