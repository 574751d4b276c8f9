"""The MoE CPU paths on several threads: work spread over experts, results bitwise equal
whatever the thread count, the record's path saying how the threads were used."""

import threading

import pytest
import torch

from moeperf import registry
from moeperf.layers import cpu_threads
from moeperf.run.workload import Workload
from moeperf.spec import LayerShape

# several chunks per pass, odd sizes
SHAPE = {"tokens": 300, "d_model": 40, "expert_size": 24, "top_k": 3, "n_experts": 12}
IMPLS = ["moe-lean", "moe-lean_recompute", "moe-grouped_mm", "moe-padded_bmm", "moe-loop"]


def fwd_bwd(name, threads, activation="relu", **extra):
    torch.set_num_threads(threads)
    shape = LayerShape(**{**SHAPE, **extra}, d_ff=SHAPE["n_experts"] * SHAPE["expert_size"],
                       dtype="float32", activation=activation)
    w = Workload.create(registry.get(name), shape, "cpu")
    y = w.module(w.x_TD)
    y.backward(w.grad_TD)
    return [("y", y.detach()), ("x.grad", w.x_TD.grad)] + [
        (n, p.grad) for n, p in w.module.named_parameters()]


def assert_same(one, other, text):
    for (what, a), (_, b) in zip(one, other, strict=True):
        assert torch.equal(a, b), f"{what} differs: {text}"


@pytest.mark.parametrize("name", IMPLS)
def test_outputs_and_gradients_bitwise_equal_on_one_and_two_threads(name, keep_threads):
    assert_same(fwd_bwd(name, 1), fwd_bwd(name, 2), f"{name}, 1 and 2 threads")


@pytest.mark.parametrize("activation", ["relu", "swiglu_oss"])
@pytest.mark.parametrize("name", ["moe-lean", "moe-lean_recompute", "moe-grouped_mm"])
def test_expert_work_bitwise_equal_on_any_number_of_workers(name, activation, keep_threads,
                                                            monkeypatch):
    """The caller on one thread (its own ops alike), the expert work on 1 to 5 workers (more
    than this machine's cores: the spreading, not the GEMM library, is under test)."""
    one = fwd_bwd(name, 1, activation)
    for n in (2, 3, 5):
        monkeypatch.setattr(cpu_threads, "threads", lambda device, n=n: n)
        assert_same(one, fwd_bwd(name, 1, activation), f"{name} {activation}, 1 and {n} workers")


def test_lean_spreads_its_chunks_over_worker_threads(keep_threads, monkeypatch):
    calls, ran_on = [], set()
    ordered = cpu_threads.ordered

    def spy(work, items, n, reduce=None):
        calls.append(n)

        def traced(item):
            ran_on.add(threading.current_thread().name)
            assert torch.get_num_threads() == 1  # each worker: one intra-op thread
            return work(item)
        return ordered(traced, list(items), n, reduce)

    monkeypatch.setattr(cpu_threads, "ordered", spy)
    fwd_bwd("moe-lean", 2)
    assert calls == [2, 2]  # forward and backward, both over 2 workers
    assert ran_on and all(t.startswith("moeperf-experts-") for t in ran_on)
    assert torch.get_num_threads() == 2  # the caller's count is untouched


def test_ordered_reduces_in_item_order_and_bounds_alive_results():
    alive, seen, order = [0], [], []
    lock = threading.Lock()

    def work(i):
        with lock:
            alive[0] += 1
            seen.append(alive[0])
        return i

    def reduce(i, out):
        order.append(out)
        with lock:
            alive[0] -= 1

    cpu_threads.ordered(work, range(40), 3, reduce)
    assert order == list(range(40))
    assert max(seen) <= 3


def test_ordered_hands_an_error_to_the_caller():
    def work(i):
        if i == 5:
            raise ValueError("boom")
        return i

    done = []
    with pytest.raises(ValueError, match="boom"):
        cpu_threads.ordered(work, range(20), 2, lambda i, out: done.append(out))
    assert done == [0, 1, 2, 3, 4]


def test_new_threads_start_with_the_callers_count(keep_threads):
    torch.set_num_threads(2)
    cpu_threads.ordered(lambda i: i, range(4), 2)  # the workers set one for themselves
    got = []
    t = threading.Thread(target=lambda: got.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert got == [2] and torch.get_num_threads() == 2


def test_record_path_says_how_the_threads_were_used(keep_threads):
    shape = LayerShape(**SHAPE, d_ff=288, dtype="float32")
    torch.set_num_threads(2)
    lean = registry.get("moe-lean").describe_path(shape, "cpu")
    assert lean.endswith("experts spread over 2 threads, one intra-op thread each")
    assert registry.get("dense-torch").describe_path(shape, "cpu").endswith(
        "2 threads, each op split over them by torch")
    assert registry.get("moe-padded_bmm").describe_path(shape, "cpu").endswith(
        "2 threads, each op split over them by torch")
    with cpu_threads.per_gemm():
        assert registry.get("moe-lean").describe_path(shape, "cpu").endswith(
            "2 threads, each op split over them by torch")
    torch.set_num_threads(1)
    assert registry.get("moe-lean").describe_path(shape, "cpu").endswith("; 1 thread")


def test_under_the_profiler_the_work_stays_on_the_caller(keep_threads):
    """The CPU memory peak comes from torch's profiler, which sees the caller's allocations
    only: the work runs there while it records (unless a profile asks otherwise)."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(2)
    assert cpu_threads.threads("cpu") == 2
    with profile(activities=[ProfilerActivity.CPU]):
        assert cpu_threads.threads("cpu") == 1
        with cpu_threads.spread_under_profiler():
            assert cpu_threads.threads("cpu") == 2
    assert cpu_threads.threads("cpu") == 2 and cpu_threads.threads("meta") == 1
