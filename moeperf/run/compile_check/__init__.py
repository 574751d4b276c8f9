"""Ahead-of-time compile checks of moeperf's Triton kernels, for GPU targets, on any machine.

capture.py runs the Triton layers at a given shape with every kernel launch recorded instead
of run (the launchers' real arguments); compile.py turns each recorded launch into the
signature, constexprs and attributes Triton's JIT would specialize it to, compiles it for a
target (sm_80, sm_90) with Triton's own compiler and bundled ptxas, and reads back shared
memory, registers, spills, pipelining and the tensor-core instruction. `moeperf kernels
--check-compile` (moeperf/cli/kernels.py) prints the table; `python -m moeperf.run.compile_check`
is the process it runs in (TRITON_INTERPRET=0: the compiler needs JIT functions).
"""
