"""A sweep session: the guarantees of `moeperf sweep`, callable from Python.

One place owns the output folder's integrity (one sweep at a time: a lock in the folder;
a folder measured with another sweep, device, seed or environment is refused unless `fresh`
sets the old results aside: moeperf.run.out_dir), the
executor (isolated worker processes with a time limit, one per GPU, or in-process) and
local vs torchrun (sharded by rank, gathered on rank 0). The CLI is a thin layer over it.

    from moeperf import plugins, spec
    from moeperf.session import SweepSession

    plugins.activate(["my_plugin"])                   # optional: implementations from outside
    sweep = spec.apply_overrides(spec.get_preset("quick"), ["tokens=512"])
    session = SweepSession(sweep, ["moe-grouped_mm", "dense-torch"], out="reports/mine")
    outcome = session.run()                           # resumable; Ctrl-C keeps what is done
    records = session.records()                       # list of dicts (moeperf.results.schema)

Implementations registered at run time in Python, not through a plugin module, exist only
in this process: use isolation=False for them (workers load plugins, nothing else).
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from moeperf import registry
from moeperf.errors import UserError
from moeperf.results.folders import FolderLock, ensure_out_dir
from moeperf.measure import TimingConfig, fingerprint
from moeperf.registry import Implementation
from moeperf.run import out_dir, runner
from moeperf.run.runner import RESULTS_FILE, InlineExecutor, SweepOutcome, run_sweep
from moeperf.spec import Sweep


@dataclass
class SweepSession:
    """`moeperf sweep` from Python: measure `implementations` (names or Implementations;
    None: the default set for the device) over `sweep` (moeperf.spec.Sweep) into `out`.

    `run()` measures what the folder lacks (resumable; Ctrl-C keeps what is done) and
    returns a SweepOutcome; `records()` reads every record of the folder. Settings: device
    ("cpu" or "cuda"), timing (moeperf.measure.TimingConfig), seed, isolation (worker
    processes with time_limit_s; False measures in this process), interleave (>= 2: every
    implementation at a point timed in that many round-robin rounds, moeperf.run.interleave;
    None: one after another), memory_limit_bytes, gpus,
    fresh (set old results aside instead of resuming), progress, command (recorded in
    sweep.json). A folder measured with another sweep, device or environment is refused
    unless `fresh`.
    """

    sweep: Sweep
    implementations: list[str | Implementation] | None = None  # None: the default set
    out: str | Path = "reports/session"
    device: str = "cpu"
    timing: TimingConfig = field(default_factory=TimingConfig)
    seed: int = 0
    isolation: bool = True  # worker processes with a time limit (False: this process)
    time_limit_s: float = 600.0
    memory_limit_bytes: int | None = None  # None: the device's memory
    gpus: list[int] | None = None  # None: every visible GPU
    fresh: bool = False  # set old results aside instead of resuming
    progress: bool = True  # a progress line (or bar) per task
    announce: bool = True  # one line saying what is about to be measured, and where
    command: str = ""
    interleave: int | None = None  # >= 2: every implementation at a point in that many rounds

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.interleave is not None and (isinstance(self.interleave, bool)
                                            or not isinstance(self.interleave, int)
                                            or self.interleave < 2):
            raise UserError(f"--interleave: {self.interleave!r} is not a round count of at "
                            "least 2 (leave it out to time implementations one after another)")
        names = self.implementations
        self.impls: list[Implementation] = (
            registry.resolve([n if isinstance(n, str) else n.name for n in names], self.device)
            if names else registry.resolve(self.sweep.implementations, self.device))
        if self.gpus and self.device != "cuda":  # before any folder is made
            raise UserError("--gpus needs a CUDA device (--device cuda)")
        for shape in self.sweep.points():  # a routing that needs n_group at a point without
            for impl in self.impls:         # one is bad input, before any folder is made
                problem = registry.groups_missing(impl, shape)
                if problem is not None:
                    raise UserError(problem)
        if any(impl.kind == "pkm" for impl in self.impls):  # a PKM that cannot be built
            for shape in self.sweep.points():                 # is bad input, before any work
                shape.pkm_n_values()
        if self.memory_limit_bytes is None:
            from moeperf.run.memory_floor import device_memory_bytes

            self.memory_limit_bytes = device_memory_bytes(self.device)

    @property
    def results_path(self) -> Path:
        return self.out / RESULTS_FILE

    def meta(self) -> dict:
        """sweep.json: what the folder holds and where it was measured."""
        sweep = self.sweep
        return {"name": sweep.name, "description": sweep.description, "device": self.device,
                "fingerprint": sweep.fingerprint(), "sweep": sweep.as_dict(),
                "implementations": [i.name for i in self.impls], "seed": self.seed,
                "env": fingerprint(self.device)["comparable"],
                "command": self.command or "python: moeperf.session.SweepSession"}

    def prepare_out_dir(self, meta: dict | None = None) -> None:
        """Take the folder's lock (another sweep writing there: UserError), refuse a folder
        measured with another sweep, device, seed or environment (UserError) unless
        `fresh`; with `fresh`, set its results aside. Then write sweep.json. The lock is
        held until release_out_dir()."""
        meta, out = meta or self.meta(), self.out
        ensure_out_dir(out)  # a folder that cannot be made or written: one line, before any work
        lock = FolderLock(out).acquire()
        try:
            if not self.fresh:
                out_dir.check_folder(out, meta, self.sweep)
            else:
                out_dir.set_aside(out)
            out_dir.write_meta(out, meta)
        except BaseException:
            lock.release()
            raise
        self._lock = lock

    def release_out_dir(self) -> None:
        """Let another sweep write into the folder."""
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()
            self._lock = None

    def slots(self) -> list[str]:
        """Worker slots on this machine: 'cpu', or one 'cuda:<i>' per GPU used."""
        import torch

        if self.device != "cuda":  # --gpus without CUDA was refused in __post_init__
            return ["cpu"]
        count = torch.cuda.device_count()
        if not self.gpus:
            return [f"cuda:{i}" for i in range(count)]
        for index in self.gpus:
            if not 0 <= index < count:
                raise UserError(f"--gpus: {index!r} is not a visible GPU index "
                                f"(0..{count - 1})")
        return [f"cuda:{i}" for i in self.gpus]

    def executor(self, slots: list[str]):
        if not self.isolation:
            return InlineExecutor(runner.measure_task, self.device, self.timing, self.seed)
        from moeperf.run.isolation import WorkerPool

        return WorkerPool(slots, runner.measure_task, self.device, self.timing, self.seed,
                          time_limit_s=self.time_limit_s)

    def run(self, meta: dict | None = None) -> SweepOutcome:
        """Measure every record not yet in results.jsonl (locally, or this rank's share
        under torchrun). On a rank other than 0 the outcome holds only its own records."""
        from moeperf.run.sharding import torchrun_rank

        meta = meta or self.meta()
        ranks = torchrun_rank()
        if ranks is not None:
            return self._sharded(meta, ranks)
        slots = self.slots()
        executor = self.executor(slots)
        if hasattr(executor, "start"):  # the workers import torch while the folder is prepared
            executor.start(len(runner.plan(self.sweep, self.impls)))
        try:
            self.prepare_out_dir(meta)
        except BaseException:
            executor.close()
            raise
        if self.announce:
            print(f"moeperf sweep {self.sweep.name!r} on {self.device}: "
                  f"{len(self.sweep.points())} points x {len(self.impls)} implementations x "
                  f"modes {', '.join(self.sweep.modes)} -> {self.out}", file=sys.stderr)
        try:
            return run_sweep(self.sweep, self.impls, self.device, self.out, timing=self.timing,
                             seed=self.seed, progress=self.progress, executor=executor,
                             memory_limit_bytes=self.memory_limit_bytes,
                             interleave_rounds=self.interleave or 0)
        finally:
            try:
                # idle workers exit (their interpreter's teardown) while the caller reads the
                # results; the interpreter waits for this thread before it exits itself
                threading.Thread(target=executor.close, name="moeperf-close-workers").start()
            finally:
                self.release_out_dir()

    def _sharded(self, meta: dict, ranks: tuple[int, int, int]) -> SweepOutcome:
        """This rank's part of a torchrun sweep (moeperf.run.sharding)."""
        import torch

        from moeperf.run.sharding import init_control_group, sharded_sweep

        rank, local_rank, world = ranks
        slot = "cpu"
        if self.device == "cuda":
            index = local_rank % torch.cuda.device_count()
            torch.cuda.set_device(index)
            slot = f"cuda:{index}"
        init_control_group()
        if rank == 0 and self.announce:
            print(f"moeperf sweep {self.sweep.name!r} on {world} ranks ({self.device}): "
                  f"{len(self.sweep.points())} points x {len(self.impls)} implementations "
                  f"-> {self.out}", file=sys.stderr)
        try:
            return sharded_sweep(self.sweep, self.impls, self.device, self.out,
                                 make_executor=lambda: self.executor([slot]),
                                 prepare=lambda: self.prepare_out_dir(meta),
                                 progress=self.progress,
                                 memory_limit_bytes=self.memory_limit_bytes, fresh=self.fresh,
                                 interleave_rounds=self.interleave or 0)
        finally:
            self.release_out_dir()

    def records(self) -> list[dict]:
        """Every record in the output folder (moeperf.results.schema), the latest of each key last."""
        from moeperf.results import load_records

        return (load_records(self.results_path, identify=registry.identity_of)
                if self.results_path.exists() else [])
