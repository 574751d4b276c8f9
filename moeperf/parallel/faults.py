"""A rank that dies or hangs mid-run ends the run in bounded time, with the rank named.

Every expert-parallel collective runs in a process group with its own short timeout
(dist.new_group(timeout=...); the control group keeps a long one, since idle ranks wait
there while a smaller group measures). On gloo a collective with a dead peer raises at
once ("Connection closed by peer", naming an address, not a rank), one with a peer alive
but stuck raises after the timeout; NCCL's watchdog does the same on GPUs. Neither names
the rank, and torch's monitored_barrier names only stuck ranks, only on rank 0. So each
survivor checks in through the c10d store (a file with launch(); torchrun's agent store)
and, after a short wait, the ranks that have not checked in are the ones that died or hang.
The first survivor to claim the report writes the failure record naming them; every
survivor then exits with EXIT_RANK_FAILED without tearing the broken group down (that can
block), and the launcher ends the rest.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import torch.distributed as dist

CHECK_IN_S = 3.0  # how long survivors wait for each other before naming the missing
EXIT_RANK_FAILED = 1


class RankTerminated(RuntimeError):
    """This rank was asked to stop (SIGTERM: torchrun ending a job whose rank died)."""


def stop_on_sigterm() -> None:
    """Turn SIGTERM into RankTerminated, so the rank reports before it goes."""
    def raise_terminated(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one ends it at once
        raise RankTerminated("stopped by SIGTERM (the launcher ends the job)")
    signal.signal(signal.SIGTERM, raise_terminated)


def keep_reporting() -> None:
    """Ignore SIGTERM while this rank names the missing ones and writes the record (the
    launcher kills it after its grace period anyway: launch() after the collective timeout
    and the check-in, torchrun after its shutdown timeout)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _store():
    return dist.distributed_c10d._get_default_store()


def missing_ranks(tag: str, rank: int, world: int, wait_s: float = CHECK_IN_S
                  ) -> list[int] | None:
    """Check in under `tag`; the ranks that have not after wait_s (None: the store is gone
    with its host, e.g. the torchrun agent of the first node)."""
    try:
        store = _store()
        store.set(f"{tag}/{rank}", "1")
        deadline = time.monotonic() + wait_s
        while True:
            missing = [r for r in range(world) if not store.check([f"{tag}/{r}"])]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.05)
    except RuntimeError:  # DistNetworkError (a RuntimeError): the store's host is gone
        return None


def claim_report(tag: str) -> bool:
    """True for the first survivor to ask (it writes the failure record)."""
    try:
        return _store().add(f"{tag}/writer", 1) == 1
    except RuntimeError:  # no store: the first local rank of each machine reports
        return os.environ.get("LOCAL_RANK", "0") == "0"


def _first_sentence(exc: BaseException) -> str:
    """The gist of an error: gloo's '[.../pair.cc:537] Read error ...: Connection reset by
    peer. This is typically ...' -> 'Read error ...: Connection reset by peer'."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    text = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", text)
    return text.split(". ")[0][:160]


def describe(exc: BaseException, rank: int, missing: list[int] | None, where: str) -> str:
    """One line: which ranks stopped, where, and the error this rank saw."""
    seen = f"{type(exc).__name__}: {_first_sentence(exc)}"
    if missing is None:
        return (f"a rank stopped during {where}; rank {rank} saw {seen} (which rank is "
                "unknown: the rendezvous store went with its host)")
    if missing:
        names = ", ".join(map(str, missing))
        return (f"rank{'s' if len(missing) > 1 else ''} {names} died or stopped responding "
                f"during {where}; rank {rank} saw {seen}")
    return f"rank {rank} failed during {where}: {seen}"


def exit_failed(line: str) -> None:
    """Say why on stderr and leave at once (no group teardown: it can block)."""
    print(f"moeperf expert-parallel: {line}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_RANK_FAILED)
