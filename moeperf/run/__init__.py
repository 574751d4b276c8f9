"""Everything that executes measurements: the workload (workload.py), the correctness gate
(correctness.py), one point (point.py), the sweep's tasks and resume (runner.py), worker
processes with time limits (isolation.py), torchrun sharding (sharding.py), the memory floor
that skips points too big for the device (memory_floor.py), the session that ties them to an
output folder (session.py), and the ahead-of-time compile check of the Triton kernels
(compile_check/)."""
