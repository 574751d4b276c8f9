"""How `moeperf compare` matches the cases of its two sides (moeperf/compare.compare): the
cases on one side only, the refusals when nothing matches, comparing across dtypes with
--force, and contexts that differ only in key order. In-memory sides, no files."""

import dataclasses

import pytest

from moeperf.analysis.compare import CompareSettings, Side, case_label, compare
from moeperf.errors import UserError
from synthetic import TINY, ok_record


def ok(impl="dense-torch", tokens=16, dtype="float32", **fields):
    shape = dataclasses.replace(TINY, tokens=tokens, dtype=dtype)
    return ok_record(impl, shape, **{"samples_ms": [1.0, 1.0, 1.0], **fields})


def side(label, *records):
    return Side(label, list(records), [label])


def test_cases_on_one_side_only_are_listed_and_the_rest_compared():
    a_base, a_cur = ok(), ok()
    b_runs = [ok(tokens=32), ok(tokens=32)]
    c_only, d_only = ok(tokens=64), ok("moe-loop")
    result = compare(side("base", a_base, *b_runs, d_only), side("cur", ok(tokens=32), a_cur,
                                                                 c_only))
    assert [c.label for c in result.cases] == sorted([case_label(a_base), case_label(b_runs[0])])
    by_label = {c.label: c for c in result.cases}
    assert by_label[case_label(a_base)].baseline == [a_base]
    assert by_label[case_label(a_base)].current == [a_cur]
    assert by_label[case_label(b_runs[0])].baseline == b_runs
    assert result.only_baseline == [case_label(d_only)]
    assert result.only_current == [case_label(c_only)]


def test_no_case_in_common_is_one_line():
    with pytest.raises(UserError) as err:
        compare(side("base", ok(), ok(tokens=32)), side("cur", ok("moe-loop")))
    assert str(err.value) == ("baseline (2 cases) and current (1 cases) have no case in "
                              "common (same implementation, mode and shape)")


def test_another_dtype_is_refused_unless_forced():
    base = side("base", ok(), ok(tokens=32))
    cur = side("cur", ok(dtype="bfloat16"), ok(dtype="float16", tokens=64))
    with pytest.raises(UserError) as err:
        compare(base, cur)
    assert str(err.value) == ("baseline and current share no case: dtype float32 vs "
                              "bfloat16/float16; pass --force to compare across dtypes")
    with pytest.raises(UserError, match="dtype float16/float32 vs bfloat16;"):
        compare(side("base", ok(), ok(tokens=32, dtype="float16")), side("cur", cur.records[0]))
    result = compare(base, cur, CompareSettings(force=True))
    (case,) = result.cases  # matched without the dtype, and labelled without it
    assert case.label == case_label(ok(), with_dtype=False)
    assert not case.label.endswith("float32")
    assert result.only_baseline == [case_label(ok(tokens=32), with_dtype=False)]
    assert result.only_current == [case_label(ok(tokens=64), with_dtype=False)]


def test_contexts_that_differ_only_in_key_order_match():
    env_a = {"comparable": {"versions": {"torch": "2.13", "triton": "3.9"}}}
    env_b = {"comparable": {"versions": {"triton": "3.9", "torch": "2.13"}}}
    result = compare(side("base", ok(env=env_a)), side("cur", ok(env=env_b)))
    assert result.context_differences == {}
    with pytest.raises(UserError, match=r"contexts: versions \{'torch': '2.13', 'triton': "
                                        r"'3.9'\} vs \{'torch': '2.14'"):
        compare(side("base", ok(env=env_a)),
                side("cur", ok(env={"comparable": {"versions": {"torch": "2.14"}}})))
