"""The group-limited routing's docstring says what transformers does with the masked groups
(checked against the installed transformers' own source)."""

from __future__ import annotations

import inspect
import re

import pytest

from moeperf.layers import router_functions


def test_the_masked_groups_fill_is_described_as_transformers_does_it():
    modeling = pytest.importorskip("transformers.models.deepseek_v3.modeling_deepseek_v3")
    source = inspect.getsource(modeling)
    fills = set(re.findall(r"masked_fill\(~score_mask\.bool\(\), (.+?)\)\n", source + "\n"))
    assert fills == {'float("-inf")'}, fills  # what transformers fills masked groups with
    doc = " ".join(router_functions.__doc__.split())
    assert "HF's fills 0" not in doc
    assert "set to -inf (DeepSeek's code and transformers' alike)" in doc
