"""Product-key memory sizes: parameter count, and the N parameter-equal to a dense MLP.

Shape legend: D = d_model, F = d_ff, H = pkm_heads, Q = pkm_key_dim (query size per head),
N = pkm_values (values; a perfect square n*n), n = sqrt(N) keys per sub-key table,
k = pkm_knn (values kept per head).

    P_pkm(N) = N*D  +  H*n*Q  +  D*H*Q  [+ 2*H*Q]
               values V   keys: H heads x 2 tables x n keys of Q/2   W_q   query batch-norm

Parameter-equal to a budget B (the dense MLP's 2*D*F weights, no biases; train-check uses
the σ-MoE's count): N = n*n with n the largest whole number for which P_pkm(n*n) <= B, so the
PKM never has more parameters than the layer it is compared with (it has fewer by less than
(2n+1)*D + H*Q).
"""

from __future__ import annotations

import math

from moeperf.errors import UserError


def pkm_params(d_model: int, n_values: int, heads: int, key_dim: int,
               query_bn: bool = False) -> int:
    """Trainable parameters of a PKM layer (see the module docstring)."""
    n = math.isqrt(n_values)
    return (n_values * d_model + heads * n * key_dim + d_model * heads * key_dim
            + (2 * heads * key_dim if query_bn else 0))


def param_equal_values(d_model: int, budget: int, heads: int, key_dim: int,
                       query_bn: bool = False) -> int:
    """The largest N = n*n whose PKM has at most `budget` parameters (0 if not even n = 1)."""
    fixed = pkm_params(d_model, 0, heads, key_dim, query_bn)
    if fixed + d_model + heads * key_dim > budget:
        return 0
    # D*n^2 + H*Q*n <= budget - fixed: the positive root, then corrected for rounding
    a, b, c = d_model, heads * key_dim, budget - fixed
    n = int((-b + math.sqrt(b * b + 4 * a * c)) / (2 * a))
    while pkm_params(d_model, (n + 1) ** 2, heads, key_dim, query_bn) <= budget:
        n += 1
    while n > 0 and pkm_params(d_model, n * n, heads, key_dim, query_bn) > budget:
        n -= 1
    return n * n


def check_values(n_values: int, knn: int) -> None:
    """N must be a positive perfect square with k <= sqrt(N) (UserError otherwise)."""
    n = math.isqrt(n_values) if n_values > 0 else 0
    if n_values <= 0 or n * n != n_values:
        raise UserError(f"pkm_values={n_values} is not a perfect square; the values are "
                        "indexed by pairs of sub-keys, so N = n*n (e.g. 1024, 4096, 16384)")
    if knn > n:
        raise UserError(f"pkm_knn={knn} is larger than sqrt(pkm_values)={n}; each head keeps "
                        f"pkm_knn of the {n} keys of each sub-key table, so pkm_knn <= {n}")


def resolve_values(d_model: int, d_ff: int, heads: int, knn: int, key_dim: int,
                   n_values: int = 0) -> int:
    """N of a PKM point: `n_values`, or (0) the one parameter-equal to the dense 2*D*F."""
    if n_values == 0:
        n_values = param_equal_values(d_model, 2 * d_model * d_ff, heads, key_dim)
        if n_values == 0 or knn > math.isqrt(n_values):
            raise UserError(
                f"a PKM parameter-equal to the dense MLP (d_model={d_model}, d_ff={d_ff}) has "
                f"room for N={n_values} values, too few for pkm_knn={knn} (needs "
                f"sqrt(N) >= pkm_knn); raise d_ff, lower pkm_heads*pkm_key_dim "
                f"({heads}*{key_dim}) or pkm_knn, or set pkm_values")
    check_values(n_values, knn)
    return n_values
