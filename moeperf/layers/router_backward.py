"""The router logits a token's gates use, with a backward through those K only (CPU).

Shape legend: T = tokens, D = d_model, E = n_experts, K = top_k, P = T * K pairs.

Routers whose gates depend on the picked logits alone (σ-MoE's sigmoid of the K picked
logits; routers.RoutingVariant.gate_of_picked) get a gradient in only K of each token's E
logits. Autograd's dense path scatters it into a [T, E] zero tensor, then runs two [T, E]
GEMMs (2 * 2*T*E*D FLOPs) for grad x and grad w_router; here the same sums run over the P
nonzeros:
    grad_x_TD[t]     = sum_k g_TK[t, k] * w_ED[e_TK[t, k]]          (embedding_bag, sum)
    grad_w_ED[e]     = sum over pairs (t, k) with e_TK[t, k] = e of g_TK[t, k] * x_TD[t]
                                                                    (sparse COO [E, T] @ x)
Neither materialises a [T, E] or [P, D] tensor. The forward is the gather from the dense
logits [T, E] (the top-k needs all of them; computed by the caller without autograd), so its
values are the dense path's exactly. Measured on CPU (1 thread, T 4096, D 256, K 4; fp32):
router backward 6.5 ms dense -> 1.3 ms here at E 128, 0.7 -> 1.1 ms at E 8 (hence
`worth_it`). CUDA keeps autograd's dense path (its GEMMs are cheap there; not measured).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The sparse backward's fixed cost (COO build and coalesce) beats the two dense [T, E]
# GEMMs once each token uses at most this fraction of the experts (measured as above, K 4:
# E 8 1.1-2.1 ms sparse against 0.7-1.3 dense; E 16 2.0 against 2.7; E 32 1.4 against 3.0).
MAX_PICKED_FRACTION = 0.25


def worth_it(device: torch.device, n_experts: int, top_k: int) -> bool:
    """Whether a router on `device` takes the sparse backward (CPU, K/E small enough)."""
    return device.type == "cpu" and top_k <= MAX_PICKED_FRACTION * n_experts


class PickedLogits(torch.autograd.Function):
    """s_TK = logits_TE gathered at e_TK, differentiable in x_TD and w_ED through the P
    picked entries only. logits_TE must be x_TD @ w_ED^T (+ a constant bias), without grad."""

    @staticmethod
    def forward(ctx, x_TD, w_ED, expert_idx_TK, logits_TE):
        ctx.save_for_backward(x_TD, w_ED, expert_idx_TK)
        return logits_TE.gather(1, expert_idx_TK)

    @staticmethod
    def backward(ctx, grad_TK):
        x_TD, w_ED, expert_idx_TK = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        # Each sum accumulates in fp32 (bf16/fp16 operands are widened; a bf16 sparse
        # matmul rounds its running sum: 4e-2 off on 1024 tokens) and is returned in its
        # input's dtype; under autocast the logits (and grad_TK) may be bf16, x and w fp32.
        grad_TK = grad_TK.contiguous().float()
        grad_x = grad_w = None
        if need_x:
            grad_x = F.embedding_bag(expert_idx_TK, w_ED.float(), mode="sum",
                                     per_sample_weights=grad_TK)
            grad_x = grad_x.to(x_TD.dtype)
        if need_w:
            T, K = expert_idx_TK.shape
            token_P = torch.arange(T, device=x_TD.device).repeat_interleave(K)
            pairs_ET = torch.sparse_coo_tensor(
                torch.stack([expert_idx_TK.reshape(-1), token_P]),
                grad_TK.reshape(-1), (w_ED.shape[0], T), check_invariants=False)
            grad_w = torch.sparse.mm(pairs_ET, x_TD.float()).to(w_ED.dtype)
        return grad_x, grad_w, None, None
