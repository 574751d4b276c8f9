"""grouped_matmul on both its paths (torch grouped_mm and the per-group loop)."""

import pytest
import torch

from moeperf.layers import grouped_gemm
from moeperf.layers.grouped_gemm import grouped_matmul, native_ok


def manual(a, b, offs):
    ends = offs.tolist()
    starts = [0] + ends[:-1]
    return torch.cat([a[s:e] @ b[i] for i, (s, e) in enumerate(zip(starts, ends))])


@pytest.mark.parametrize("k,n", [(16, 8), (7, 5)])  # aligned (native on CPU) / unaligned
@pytest.mark.parametrize("sizes", [[3, 0, 7], [0, 0, 10], [4, 4, 4]])  # empty groups included
def test_values_and_grads(k, n, sizes):
    torch.manual_seed(0)
    offs = torch.tensor(sizes, dtype=torch.int32).cumsum(0).to(torch.int32)
    a = torch.randn(sum(sizes), k, requires_grad=True)
    b = torch.randn(len(sizes), k, n, requires_grad=True)
    grad = torch.randn(sum(sizes), n)
    out = grouped_matmul(a, b, offs)
    out.backward(grad)
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    want = manual(a2, b2, offs)
    want.backward(grad)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(a.grad, a2.grad)
    torch.testing.assert_close(b.grad, b2.grad)  # empty groups get zero gradient


def test_native_path_taken_when_aligned():
    if not grouped_gemm.has_grouped_mm():
        pytest.skip("this torch has no grouped_mm")
    assert native_ok(torch.randn(4, 16), torch.randn(2, 16, 8))
    assert not native_ok(torch.randn(4, 7), torch.randn(2, 7, 5))  # 28-byte rows


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="do not fit"):
        grouped_matmul(torch.randn(4, 8), torch.randn(2, 9, 3),
                       torch.tensor([2, 4], dtype=torch.int32))
