"""Expert formats against the unquantized layer, from synthetic records: pairing, speed-up,
weight ratio, the expected error, the terminal table and the paper's family."""

import pytest
from synthetic import point

from moeperf.analysis.family import family_of, in_paper_family
from moeperf.analysis.precision import expected_error, format_rows
from moeperf.layers.quant_formats import analytic_error
from moeperf.report.table import formats_table

FIELDS = {"d_model": 256, "expert_size": 128, "dtype": "bfloat16"}


def _records():
    return [
        point("moe-grouped_mm", 4.0, 1e6, quant="none", weight_bytes=1000, **FIELDS),
        point("moe-grouped_mm", 2.0, 1e6, quant="fp8_block", weight_bytes=510,
              quant_error=0.05, **FIELDS),
        point("moe-grouped_mm", 8.0, 1e6, quant="mxfp4", weight_bytes=270,
              quant_error=0.16, **FIELDS),
        # another implementation without its quant=none twin
        point("moe-padded_bmm", 3.0, 1e6, quant="mxfp8", weight_bytes=520,
              quant_error=0.06, **FIELDS),
        # another mode's twin must not pair
        point("moe-grouped_mm", 9.0, 1e6, mode="fwd_bwd", quant="none", weight_bytes=1000,
              **FIELDS),
    ]


def test_rows_pair_each_format_with_its_unquantized_twin():
    rows = {(r.implementation, r.quant): r for r in format_rows(_records())}
    assert set(rows) == {("moe-grouped_mm", "fp8_block"), ("moe-grouped_mm", "mxfp4"),
                         ("moe-padded_bmm", "mxfp8")}
    fp8 = rows["moe-grouped_mm", "fp8_block"]
    assert fp8.speedup == pytest.approx(2.0) and fp8.weight_ratio == pytest.approx(0.51)
    assert rows["moe-grouped_mm", "mxfp4"].speedup == pytest.approx(0.5)
    lone = rows["moe-padded_bmm", "mxfp8"]
    assert lone.speedup is None and lone.weight_ratio is None and lone.quant_error == 0.06


def test_expected_error_counts_the_quantized_operands():
    assert expected_error("fp8_block", False) == pytest.approx(2 * analytic_error("fp8_block"))
    assert expected_error("mxfp4", False) == pytest.approx(2 ** 0.5 * analytic_error("mxfp4"))
    assert expected_error("mxfp4", True) == pytest.approx(3 ** 0.5 * analytic_error("mxfp4"))
    assert expected_error("none", False) == 0.0


def test_terminal_table_lists_every_format():
    text = formats_table(_records())
    assert text.startswith("expert formats against the unquantized layer")
    for piece in ("fp8_block", "2.00x", "0.510x", "0.0500", "mxfp4", "0.50x",
                  "no quant=none record"):
        assert piece in text
    assert formats_table(_records()[:1]) == ""


def test_quantized_layers_are_not_the_papers_family():
    plain, fp8 = _records()[:2]
    assert in_paper_family(plain) and not in_paper_family(fp8)
    assert "experts in fp8_block" in family_of(fp8).describe()
