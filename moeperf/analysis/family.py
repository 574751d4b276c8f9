"""Layer families: which kind of MoE layer a record measures, and whether it is the paper's.

A family is the experts' activation, the shared experts, and the routing function (with
DeepSeek-V3's group limit and routed scaling). The σ-MoE paper's claims (C29-C32) are
about one family: two-matrix ReLU experts, no shared experts, σ-MoE routing or one of the
routing variants the paper compares it with (softmax, softmax_renorm, Switch, S-BASE), no
group limit, unquantized experts, against the parameter-equal ReLU dense MLP. Verdicts are computed on the
records of that family only; the claims on any other family are reported "not applicable"
(analysis/claims.py), never failed. The compute-equal dense MLP (dense-active) is no part
of the paper either.
"""

from __future__ import annotations

from dataclasses import dataclass

from moeperf.analysis.records import COMPUTE_BASELINE

PAPER_ROUTINGS = ("sigma", "softmax", "softmax_renorm", "switch", "sbase")
PAPER_FAMILY = ("ReLU experts (two matrices), no shared experts, σ-MoE routing or the "
                "routing variants the paper compares (softmax, softmax_renorm, Switch, "
                "S-BASE), against the parameter-equal ReLU dense MLP")
ACTIVATION_WORDS = {
    "relu": "ReLU experts (two matrices, the paper's)",
    "swiglu": "SwiGLU experts (gate, up, down)",
    "geglu": "GeGLU experts (gate, up, down)",
    "swiglu_oss": "gpt-oss's clamped SwiGLU experts with biases (gate, up, down)",
}
ROUTING_WORDS = {
    "sigma": "σ-MoE: sigmoid, top-k (the paper's)",
    "softmax": "softmax, top-k, not renormalised",
    "softmax_renorm": "softmax, top-k, renormalised over the k",
    "switch": "Switch: softmax, top-1",
    "sbase": "S-BASE: Sinkhorn selection",
    "sigmoid_grouped": "sigmoid scores, selection bias, group-limited top-k, renormalised",
}


@dataclass(frozen=True)
class Family:
    """The layer family of an MoE record (records written before these fields: ReLU)."""

    activation: str = "relu"
    n_shared: int = 0
    shared_size: int = 0  # 0: the expert size
    routing: str | None = None  # None: not recorded (a plugin that does not say)
    n_group: int = 0
    topk_group: int = 0
    routed_scaling: float = 1.0
    quant: str = "none"  # the experts' format (moeperf.spec.quant); the paper's: none

    @property
    def paper(self) -> bool:
        return (self.activation == "relu" and not self.n_shared and not self.n_group
                and (self.routing is None or self.routing in PAPER_ROUTINGS)
                and self.quant == "none")

    def describe(self) -> str:
        parts = [ACTIVATION_WORDS.get(self.activation, f"{self.activation} experts")]
        if self.n_shared:
            size = f" of size {self.shared_size}" if self.shared_size else ""
            parts.append(f"{self.n_shared} shared expert{'s' if self.n_shared > 1 else ''}"
                         f"{size}")
        else:
            parts.append("no shared experts")
        if self.routing is not None:
            routing = f"routing {self.routing} ({ROUTING_WORDS.get(self.routing, 'plugin')})"
            if self.n_group:
                routing += f", {self.topk_group} of {self.n_group} expert groups"
            if self.routed_scaling != 1.0:
                routing += f", gates x{self.routed_scaling:g}"
            parts.append(routing)
        if self.quant != "none":
            parts.append(f"experts in {self.quant}")
        return ", ".join(parts)


def family_of(record: dict) -> Family:
    return Family(record.get("activation", "relu"), record.get("n_shared", 0),
                  record.get("shared_size", 0), record.get("routing"),
                  record.get("n_group", 0), record.get("topk_group", 0),
                  record.get("routed_scaling", 1.0), record.get("quant", "none"))


def in_paper_family(record: dict) -> bool:
    """Whether the paper's claims are about this record's layer."""
    if record.get("kind") == "dense":
        return (record.get("activation", "relu") == "relu"
                and record["implementation"] != COMPUTE_BASELINE)
    if record.get("kind") == "moe":
        return family_of(record).paper
    return True  # PKM: the paper's other approximation of the MLP (claims ignore it)


def families(records: list[dict]) -> dict[Family, list[str]]:
    """{family: its MoE implementations} of the MoE records, the paper's family first."""
    out: dict[Family, set[str]] = {}
    for r in records:
        if r.get("kind") == "moe":
            out.setdefault(family_of(r), set()).add(r["implementation"])
    order = sorted(out, key=lambda f: (not f.paper, f.activation, f.n_shared,
                                        f.routing or "", f.n_group))
    return {f: sorted(out[f]) for f in order}


def dense_activations(records: list[dict]) -> list[str]:
    return sorted({r.get("activation", "relu") for r in records if r.get("kind") == "dense"})
