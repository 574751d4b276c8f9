"""Expert weight formats (the `quant` shape field): pure facts, no tensors.

Shape legend: E = n_experts, D = d_model, G = expert_size; a projection multiplies [M, K]
activations by a [K, N] weight (up: K = D, N = G; down: K = G, N = D).

| quant       | weights                                   | activations                      |
|-------------|-------------------------------------------|----------------------------------|
| none        | the point's dtype                          | the point's dtype                |
| fp8_rowwise | e4m3, one fp32 scale per output channel    | e4m3, one fp32 scale per token   |
| fp8_block   | e4m3, one fp32 scale per 128x128 block     | e4m3, one fp32 scale per 1x128   |
| mxfp8       | e4m3, one e8m0 scale per 32 along K        | e4m3, one e8m0 scale per 32      |
| mxfp4       | e2m1, one e8m0 scale per 32 along K        | the point's dtype (as gpt-oss)   |

Sources: DeepSeek-V3's config (`quantization_config`: fmt e4m3, weight_block_size
[128, 128], activation_scheme dynamic), OCP Microscaling v1.0 (blocks of 32, e8m0 scales),
gpt-oss (`quant_method` mxfp4, bf16 activations). Bits per weight count the scales:
mxfp4 = 4 + 8/32 = 4.25; fp8_block = 8 + 32/128^2; fp8_rowwise = 8 + 32/K.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeperf.errors import UserError

E4M3_MAX = 448.0  # largest finite float8_e4m3fn
E2M1_MAX = 6.0  # largest e2m1 value
DTYPE_BITS = {"float32": 32, "float16": 16, "bfloat16": 16}


@dataclass(frozen=True)
class QuantFormat:
    """One expert weight format.

    name; element ("e4m3", "e2m1" or "" for none) and its bits; `block_k`, `block_n`: the
    weight block one scale covers along K and N (0: the whole dimension; 1: one element);
    scale ("fp32", "e8m0" or ""); activation scheme ("per_token", "1x128", "mx32" or
    "none"); `act_block`: the activations' group along K (0: the whole row); `trainable`:
    whether moeperf has a differentiable path (fwd_bwd); `description`.
    """

    name: str
    element: str
    element_bits: int
    block_k: int
    block_n: int
    scale: str
    activation: str
    act_block: int
    trainable: bool
    description: str

    @property
    def quantized(self) -> bool:
        return self.name != "none"

    @property
    def k_block(self) -> int:
        """The K multiple a shape needs (weights' and activations' blocks); 1: any."""
        return max(self.block_k, self.act_block, 1)

    @property
    def n_block(self) -> int:
        """The N multiple a shape needs; 1: any."""
        return max(self.block_n, 1)

    def weight_bits(self, k: int, n: int, dtype: str = "bfloat16") -> float:
        """Bits per weight of a [K, N] matrix as stored, scales included."""
        if not self.quantized:
            return float(DTYPE_BITS[dtype])
        scale_bits = 32 if self.scale == "fp32" else 8
        per_k = self.block_k or k
        per_n = self.block_n or n
        return self.element_bits + scale_bits / (per_k * per_n)


QUANT_FORMATS: dict[str, QuantFormat] = {f.name: f for f in (
    QuantFormat("none", "", 0, 0, 0, "", "none", 0, True, "the point's dtype"),
    QuantFormat("fp8_rowwise", "e4m3", 8, 0, 1, "fp32", "per_token", 0, True,
                "e4m3 weights with a scale per output channel, activations per token"),
    QuantFormat("fp8_block", "e4m3", 8, 128, 128, "fp32", "1x128", 128, True,
                "DeepSeek-V3: e4m3 in 128x128 weight blocks, 1x128 activation groups"),
    QuantFormat("mxfp8", "e4m3", 8, 32, 1, "e8m0", "mx32", 32, False,
                "OCP MXFP8: e4m3 in blocks of 32 along K, e8m0 scales, the same for activations"),
    QuantFormat("mxfp4", "e2m1", 4, 32, 1, "e8m0", "none", 0, False,
                "OCP MXFP4 (gpt-oss): e2m1 in blocks of 32 along K, e8m0 scales; "
                "activations stay in the point's dtype"),
)}
QUANTS = tuple(QUANT_FORMATS)
# Dense peak throughput of the formats' tensor cores (TFLOP/s), H100/H200 SXM: fp8 1,979
# (NVIDIA's H100 datasheet, without sparsity); MXFP4 weights are dequantized to bf16 on
# Hopper, so its peak is bf16's.
PEAK_DTYPE = {"fp8_rowwise": "float8", "fp8_block": "float8", "mxfp8": "float8"}


def check_shape(quant: str, d_model: int, expert_size: int) -> None:
    """UserError unless the format's blocks tile d_model and expert_size (each is K of one
    projection and N of the other)."""
    if quant not in QUANT_FORMATS:
        raise UserError(f"unknown quant {quant!r}; allowed: {', '.join(QUANTS)}")
    fmt = QUANT_FORMATS[quant]
    block = max(fmt.k_block, fmt.n_block)
    for name, value in (("d_model", d_model), ("expert_size", expert_size)):
        if value % block:
            raise UserError(f"quant={quant} needs {name} to be a multiple of {block} "
                            f"(its block), got {name}={value}")
    if fmt.element == "e2m1" and (d_model % 2 or expert_size % 2):
        raise UserError(f"quant={quant} packs two weights per byte: d_model and expert_size "
                        "must be even")


def expert_weight_bytes(quant: str, d_model: int, expert_size: int, n_matrices: int,
                        n_experts: int, dtype: str) -> int:
    """Bytes of the routed experts' weight matrices as stored (scales included):
    n_matrices [D, G]-sized matrices per expert (2, gated 3), the down one [G, D]."""
    fmt = QUANT_FORMATS[quant]
    D, G = d_model, expert_size
    up = fmt.weight_bits(D, G, dtype) * D * G * (n_matrices - 1)
    down = fmt.weight_bits(G, D, dtype) * G * D
    return int(round(n_experts * (up + down) / 8))
