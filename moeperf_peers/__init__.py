"""Peers: the MoE layers and kernels users run instead of moeperf's, as moeperf plugins.

Shipped with moeperf as optional extras and written exactly as an outside plugin would be:
each module has `moeperf_implementations()` and is found through moeperf's entry-point group
(`moeperf.implementations`, declared in moeperf's pyproject.toml), never imported by moeperf.
A peer whose package is missing still declares its implementations; each refuses with its
reason (the package to install), so `moeperf list` and `moeperf list --matrix` show what
could run.

- `moeperf_peers.hf`: Hugging Face transformers' sparse-MoE blocks (extra `peers`).

GPU kernels (moeperf_peers.kernel_common: moeperf's router, the peer's expert kernels):
- `moeperf_peers.liger`: Liger-Kernel's fused MoE (Triton; extra `peers-liger`).
- `moeperf_peers.moe_ops`: moe-ops' Triton permute / grouped GEMM / unpermute (`peers-moe-ops`).
- `moeperf_peers.grouped_gemm`: grouped_gemm's CUTLASS/cuBLAS gmm (`peers-grouped-gemm`).
- `moeperf_peers.megablocks`: MegaBlocks' dropless-MoE experts (`peers-megablocks`).
- `moeperf_peers.sonicmoe`: SonicMoE's CuTe-DSL kernels, Hopper (`peers-sonicmoe`).
- `moeperf_peers.vllm`: vLLM's Triton fused_moe, forward only, bf16 and fp8 (`peers-vllm`).
- `moeperf_peers.deepgemm`: DeepGEMM's contiguous fp8 grouped GEMM at quant fp8_block,
  forward only, Hopper (`peers-deepgemm`).
- `moeperf_peers.torchao`: torchao's fp8 rowwise grouped GEMM, forward only (`peers-torchao`).
- `moeperf_peers.flashinfer`: FlashInfer's CUTLASS fused MoE at quant none, fp8_block, mxfp4,
  forward only (`peers-flashinfer`).
"""
