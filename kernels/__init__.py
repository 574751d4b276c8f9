"""Triton kernels and their launchers, installed as `moeperf.kernels`.

Triton only: @triton.jit kernels and launchers (shape checks, allocation, grid). No
nn.Module and no autograd here; those live next to the layers that use them.
On CPU the kernels run through the Triton interpreter (TRITON_INTERPRET=1, set before
triton is imported).
"""
