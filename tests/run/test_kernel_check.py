"""The ahead-of-time compile check of the Triton kernels (moeperf/run/compile_check) and the
autotune pruning it reports: capture of the launchers' real arguments, the JIT's
specialization, and real compiles for sm_80/sm_90 (Triton's compiler and bundled ptxas need
no GPU). Compiles take seconds each, so the CLI test runs a handful at a small shape."""

import json

import torch

# moeperf before triton: `import moeperf` sets TRITON_INTERPRET=1 on a CPU-only machine, and
# triton.language's own jit functions must be defined after that (no `import triton` here)
from moeperf.cli import main
from moeperf.run.compile_check import capture
from moeperf.kernels.common import PruneRule
from moeperf.spec import LayerShape

SMALL = LayerShape(tokens=64, d_model=32, expert_size=16, n_experts=4, d_ff=64, top_k=2)
MATMUL_RULE = PruneRule(dims=(("BLOCK_N", "N"),), operands=(("BLOCK_M", "BLOCK_K"),
                                                            ("BLOCK_K", "BLOCK_N")),
                        acc=("BLOCK_M", "BLOCK_N"), dtype_arg="a_ptr")


def config(m, n, k, warps, stages):
    import triton

    return triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=warps,
                         num_stages=stages)


def test_every_layer_launch_is_captured_once_per_variant():
    launches = capture.record_layers(SMALL, torch.float32, False)
    names = {(l.kernel, l.variant) for l in launches}
    assert {("routed_matmul", "moe h_PG"), ("routed_matmul", "moe y_TD"),
            ("routed_matmul", "moe y_TD +="), ("routed_matmul", "moe dh_PG"),
            ("routed_matmul", "moe dx"), ("routed_matmul", "moe dx +="),
            ("routed_weight_grad", "moe dw_up"), ("routed_weight_grad", "moe dw_down"),
            ("routed_matmul", "dense h_TF"), ("routed_weight_grad", "dense dw_up"),
            ("routed_gated", "gated h_PG"), ("routed_gated_grad", "gated dgu_P2G"),
            ("routed_gated", "gated dx_TD"), ("routed_gated", "gated dx_TD +="),
            ("routed_weight_grad", "gated dw_ED2G"), ("routed_weight_grad", "gated db_E2G"),
            ("routed_gated", "swiglu h_PG"), ("routed_gated_grad", "swiglu dgu_P2G"),
            ("routed_gated", "geglu h_PG"), ("routed_gated_grad", "geglu dgu_P2G")} <= names
    assert len(names) == len(launches)
    # the gated layers' down projection and its weight gradient compile as the σ-MoE's: kept
    # once, under the σ-MoE's names
    assert not {("routed_matmul", "gated y_TD"), ("routed_weight_grad", "gated dw_down"),
                ("routed_weight_grad", "swiglu dw_ED2G")} & names


def test_no_reset_or_restore_of_an_argument_passed_as_none():
    # Triton < 3.9's autotuner calls .zero_() on every reset_to_zero argument without a None
    # check: a None there crashes the first tuned launch on a GPU.
    for launch in capture.record_layers(SMALL, torch.float32, False):
        named = launch.named_args()
        for name in (*getattr(launch.fn, "reset_to_zero", ()),
                     *getattr(launch.fn, "restore_value", ())):
            assert isinstance(named[name], torch.Tensor), (launch.variant, name)


def test_block_beyond_the_problem_size_is_pruned():
    a = torch.empty(4, 8, dtype=torch.bfloat16)
    reasons = MATMUL_RULE.reasons([config(128, 256, 64, 8, 3), config(128, 128, 64, 8, 3)],
                                  {"N": 128, "a_ptr": a}, {"PRECISION": "ieee"}, (90, 232448))
    assert reasons == ["BLOCK_N 256 > N 128", ""]


def test_shared_memory_pruning_follows_the_target():
    # fp32 128x128x64, 3 stages: 64 KB per stage; sm_90 keeps 3 buffers (192 KB), sm_80 two
    a = torch.empty(4, 8, dtype=torch.float32)
    cfg = [config(128, 128, 64, 8, 3), config(64, 32, 32, 4, 5)]
    named, tf32 = {"N": 512, "a_ptr": a}, {"PRECISION": "tf32"}
    assert MATMUL_RULE.reasons(cfg, named, tf32, (90, 160 * 1024))[0] == \
        "shared 192 KB > 160 KB"
    assert MATMUL_RULE.reasons(cfg, named, tf32, (80, 160 * 1024)) == ["", ""]


def test_fp32_ieee_drops_spilling_tiles_and_always_keeps_one():
    # 128x128x64 on 8 warps: (128*128 + 2 * 128*64) / 256 = 128 fp32 tile elements per thread
    a = torch.empty(4, 8, dtype=torch.float32)
    big = [config(128, 128, 64, 8, 3), config(128, 64, 64, 4, 4)]
    assert MATMUL_RULE.reasons([*big, config(64, 64, 32, 4, 4)], {"N": 512, "a_ptr": a},
                               {"PRECISION": "ieee"}, (90, 0))[2] == ""  # 64 per thread
    named = {"N": 512, "a_ptr": a}
    assert all(MATMUL_RULE.reasons(big, named, {"PRECISION": "ieee"}, (90, 0))[:1])
    assert MATMUL_RULE.reasons(big, named, {"PRECISION": "tf32"}, (90, 0)) == ["", ""]
    # every config pruned: the smallest stays
    assert MATMUL_RULE.reasons(big, named, {"PRECISION": "ieee"}, (90, 0)) == \
        [MATMUL_RULE.reason(big[0], named, {"PRECISION": "ieee"}, (90, 0)), ""]


def test_cli_compiles_for_both_targets(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    code = main(["kernels", "--check-compile", "--subset", "ci", "--kernel", "routed_weight_grad",
                 "--dtype", "bf16", "--tokens", "256", "--d-model", "64", "--expert-size", "32",
                 "--n-experts", "4", "--top-k", "2", "--json", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    # 6 variants (moe and dense dw_up, dw_down; the gated experts' [dw_gate | dw_up] and
    # [db_gate | db_up]) x sm_80, sm_90, each in its first config
    assert len(rows) == 12 and not any(r["error"] for r in rows)
    by_target = {t: [r for r in rows if r["target"] == t] for t in ("sm_80", "sm_90")}
    assert {r["mma"] for r in by_target["sm_90"]} == {"wgmma"}
    assert {r["mma"] for r in by_target["sm_80"]} == {"mma"}
    assert all(0 < r["shared"] <= r["shared_limit"] and r["registers"] > 0 and r["pipelined"]
               for r in rows)
    assert "12 compiles" in capsys.readouterr().out


def test_cli_rejects_an_unknown_target(capsys):
    assert main(["kernels", "--check-compile", "--target", "sm_75"]) == 2
    assert "--target 'sm_75'" in capsys.readouterr().err


def test_each_format_records_the_up_and_down_projections():
    for fmt in capture.SCALED_FORMATS:
        launches = capture.record_scaled(SMALL, fmt)
        assert [(l.kernel, l.variant) for l in launches] == [
            ("routed_scaled_matmul", "moe h_PG"), ("routed_scaled_matmul", "moe y_TD"),
            ("routed_scaled_matmul", "moe y_TD +=")]
        named = launches[0].named_args()
        assert named["w_ptr"].dtype == (torch.uint8 if fmt == "mxfp4" else torch.float8_e4m3fn)
        assert launches[2].kwargs["ACCUMULATE"] and not launches[1].kwargs["ACCUMULATE"]


def test_operand_types_of_the_tensor_core_instruction():
    from moeperf.run.compile_check.compile import mma_operand_types

    assert mma_operand_types("wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {") == "e4m3"
    assert mma_operand_types("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {") == "bf16"
    assert mma_operand_types("fma.rn.f32 %f1") == ""


def test_cli_fp8_runs_on_hopper_tensor_cores_and_is_refused_on_ampere(tmp_path, capsys):
    # Triton 3.9 has no e4m3 before sm_89 (no emulation): a refusal row, not a failure.
    # MXFP4 weights are unpacked to bf16 in registers: bf16 tensor cores on both targets.
    out = tmp_path / "rows.jsonl"
    code = main(["kernels", "--check-compile", "--subset", "ci", "--kernel",
                 "routed_scaled_matmul", "--dtype", "fp8_block", "--dtype", "mxfp4",
                 "--tokens", "256", "--n-experts", "4", "--top-k", "2", "--json", str(out)])
    assert code == 0
    rows = {(r["dtype"], r["target"], r["variant"]): r
            for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows) == 12
    for (fmt, target, _), r in rows.items():
        if target == "sm_90":
            assert (r["mma"], r["mma_inputs"], r["spill"]) == \
                ("wgmma", "e4m3" if fmt == "fp8_block" else "bf16", 0)
            assert r["pipelined"] and not r["refused"] and not r["error"]
        elif fmt == "fp8_block":
            assert r["refused"] == "type fp8e4nv not supported in this architecture"
        else:
            assert (r["mma"], r["mma_inputs"]) == ("mma", "bf16") and not r["refused"]
    assert "3 refused by the target" in capsys.readouterr().out
