"""Faulty measure functions for the isolation tests (importable by spawned worker processes).

Each keys its behaviour on the point's token count, so a sweep over `tokens` mixes faults
with real measurements. Also the `one_thread` fixture for in-process measuring tests.
"""

import os
import signal
import time

import pytest
import torch

from moeperf.run import runner

OOM_TOKENS, HANG_TOKENS, CRASH_TOKENS = 16, 24, 32


def faulty(task, device, timing, seed):
    torch.set_num_threads(1)  # tiny real measurements stay quick on a busy machine
    tokens = task.shape.tokens
    if tokens == OOM_TOKENS:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB "
                                          "(simulated)")
    if tokens == HANG_TOKENS:
        time.sleep(3600)
    if tokens == CRASH_TOKENS:
        os.kill(os.getpid(), signal.SIGSEGV)
    records = runner.measure_task(task, device, timing, seed)
    for record in records:
        record["worker_pid"] = os.getpid()
    return records


@pytest.fixture
def one_thread():
    """Tiny shapes on a shared 2-core machine: one thread avoids OpenMP contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
