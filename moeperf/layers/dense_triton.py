"""DenseMLP computed by Triton kernels, to stand beside the cuBLAS (torch) one.

Shape legend: T = tokens, D = d_model, F = d_ff.
A dense layer is a routed matmul with one expert that owns every row, so it runs on the same
kernels as the MoE (moeperf.kernels) with E = 1 and no gather:
    h_TF = ReLU(x_TD @ w_up_DF)          matmul, ReLU fused into the epilogue
    y_TD = h_TF @ w_down_FD
    dh_TF = (dy_TD @ w_down^T) * (h > 0) matmul, ReLU's gradient fused into the epilogue
    dx_TD = dh_TF @ w_up^T;  dw_up = x^T @ dh;  dw_down = h^T @ dy
Same parameters, init and contract as DenseMLP (biases are not supported).
"""

from __future__ import annotations

import torch

from moeperf.kernels.runtime import tf32_allowed
from moeperf.layers.dense import DenseMLP
from moeperf.layers.triton_common import autocast_inputs, kernels, triton_runtime


class TritonDenseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_TD, w_up_DF, w_down_FD, allow_tf32: bool):
        one_group = torch.full((1,), x_TD.shape[0], dtype=torch.int32, device=x_TD.device)
        h_TF = kernels.routed_matmul(x_TD, w_up_DF.unsqueeze(0), one_group, relu=True,
                                     allow_tf32=allow_tf32)
        y_TD = kernels.routed_matmul(h_TF, w_down_FD.unsqueeze(0), one_group,
                                     allow_tf32=allow_tf32)
        ctx.save_for_backward(x_TD, w_up_DF, w_down_FD, h_TF, one_group)
        ctx.allow_tf32 = allow_tf32
        return y_TD

    @staticmethod
    def backward(ctx, dy_TD):
        x_TD, w_up_DF, w_down_FD, h_TF, one_group = ctx.saved_tensors
        need_x, need_up, need_down = ctx.needs_input_grad[:3]
        tf32 = ctx.allow_tf32
        dy_TD = dy_TD.to(x_TD.dtype)
        dx = dw_up = dw_down = None
        if need_x or need_up:
            dh_TF, _ = kernels.routed_matmul_relu_grad(dy_TD, w_down_FD.t().unsqueeze(0),
                                                       one_group, h_TF, allow_tf32=tf32)
            if need_x:
                dx = kernels.routed_matmul(dh_TF, w_up_DF.t().unsqueeze(0), one_group,
                                           allow_tf32=tf32)
            if need_up:
                dw_up = kernels.routed_weight_grad(x_TD, dh_TF, one_group, allow_tf32=tf32)[0]
        if need_down:
            dw_down = kernels.routed_weight_grad(h_TF, dy_TD, one_group, allow_tf32=tf32)[0]
        return dx, dw_up, dw_down, None


class TritonDenseMLP(DenseMLP):
    """DenseMLP (same parameters w_up [D, F], w_down [F, D]) on Triton kernels."""

    def __init__(self, d_model: int, d_ff: int, *, bias: bool = False, n_layers: int = 1,
                 device=None, dtype=None) -> None:
        reason = triton_runtime.unavailable_reason()
        if reason is not None:
            raise ValueError(f"TritonDenseMLP cannot run here: {reason}")
        if bias:
            raise ValueError("TritonDenseMLP has no bias terms (the benchmarked layers have "
                             "none); use DenseMLP(bias=True)")
        super().__init__(d_model, d_ff, bias=False, n_layers=n_layers, device=device,
                         dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_TD, w_up, w_down = autocast_inputs(x.reshape(-1, self.d_model), self.w_up,
                                             self.w_down)
        y_TD = TritonDenseFunction.apply(x_TD, w_up, w_down, tf32_allowed())
        return y_TD.view(*x.shape[:-1], self.d_model)
