"""asymvq.bench.harness and asymvq.bench.weights: what every benchmark shares.

A child's result comes back as its dict, a failed child as an error with the tail of what it said;
peak RSS can be reset between stages; the random weights are deterministic per (seed, tensor name),
so any subset of a model's table gets the tensors the whole table gets.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from asymvq.bench import harness
from asymvq.bench.weights import random_weights

TABLE = {"a.weight": (64, 32, 3, 3), "a.bias": (64,), "norm.weight": (64,), "emb.weight": (100, 16)}


def test_a_childs_result_line_comes_back_as_its_dict() -> None:
    code = f"print('noise'); print({harness.RESULT_MARK!r} + '{{\"x\": [1, 2]}}')"
    assert harness.run_command([sys.executable, "-c", code]) == {"x": [1, 2]}


def test_a_failed_child_is_an_error_with_its_exit_status_and_last_words() -> None:
    code = "import sys; print('first'); sys.exit('the child says why')"
    r = harness.run_command([sys.executable, "-c", code])
    assert r["error"].startswith("exit status 1: ")
    assert "the child says why" in r["error"]


def test_module_main_runs_the_child_on_its_json_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert harness.module_main(lambda job: {"twice": 2 * job["n"]}, lambda argv: 5, ["--child", '{"n": 21}']) == 0
    assert capsys.readouterr().out == harness.RESULT_MARK + '{"twice": 42}\n'


def test_module_main_passes_anything_else_to_the_benchmark() -> None:
    assert harness.module_main(lambda job: {}, lambda argv: len(argv), ["--size", "8"]) == 2


def test_the_peak_rss_resets_to_the_current_resident_set() -> None:
    if not harness.reset_peak_rss():
        pytest.fail("clear_refs is not writable here: the pipeline benchmark's per-stage peaks would be cumulative")
    block = np.ones(64 << 20, np.uint8)  # 64 MiB touched
    high = harness.peak_rss()
    del block
    assert harness.reset_peak_rss()
    assert harness.peak_rss() < high - (32 << 20)


def test_merge_round_keeps_the_best_time_and_the_highest_peak() -> None:
    results = {"fp32": {"times": [2.0], "cpu": [3.0], "peak_rss": 10}}
    harness.merge_round(results, "fp32", {"times": [1.5], "cpu": [3.5], "peak_rss": 5})
    assert results["fp32"] == {"times": [1.5], "cpu": [3.0], "peak_rss": 10}


def test_random_weights_are_the_same_for_a_name_whatever_else_the_table_holds() -> None:
    whole = random_weights(TABLE, seed=3)
    part = random_weights({"a.bias": (64,)}, seed=3)
    np.testing.assert_array_equal(part["a.bias"], whole["a.bias"])
    assert not np.array_equal(random_weights(TABLE, seed=4)["a.bias"], whole["a.bias"])


def test_random_weights_have_the_tables_shapes_in_float32() -> None:
    w = random_weights(TABLE)
    assert {k: v.shape for k, v in w.items()} == TABLE
    assert all(v.dtype == np.float32 for v in w.values())


def test_random_weights_keep_activations_of_order_one() -> None:
    w = random_weights(TABLE)
    assert w["a.weight"].std() == pytest.approx((32 * 9) ** -0.5, rel=0.05)  # 1 / sqrt(fan_in)
    assert w["a.bias"].std() == pytest.approx(0.01, rel=0.3)
    assert 0.9 <= w["norm.weight"].min() and w["norm.weight"].max() <= 1.1
