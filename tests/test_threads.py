"""asymvq and PyTorch in one process: which OpenMP runtime serves both, its wait policy, the parked
team asymvq starts when torch loaded a spinning runtime first, and the OpenMPWarning it gives when
it does not fix the problem.

Each scenario runs in a fresh child process (the runtime reads OMP_WAIT_POLICY once, when it loads).
The runtime's real spin setting is read independently of asymvq, from libgomp's own report at load
(``OMP_DISPLAY_ENV=VERBOSE`` prints ``GOMP_SPINCOUNT``: 0 when passive, 300000 by default).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from typing import Any, Dict, Optional

from asymvq import _loader

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A notebook's order of events, with the import order as the parameter; the asymvq call is checked
# against numpy so that a broken shared runtime cannot pass as a fast one.
_CHILD = r"""
import json, os, sys, warnings
import numpy as np
def torch_op():
    import torch
    torch.set_num_threads(2)
    a = torch.randn(256, 256)
    (a @ a).sum().item()
    torch.nn.functional.conv2d(torch.randn(1, 3, 64, 64), torch.randn(8, 3, 3, 3), padding=1)
if sys.argv[1] == "torch-first":
    torch_op()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import asymvq
if sys.argv[1] == "asymvq-first":
    torch_op()
from asymvq import _loader
from asymvq._core import ops
rng = np.random.default_rng(0)
x, w = rng.standard_normal((64, 96), dtype=np.float32), rng.standard_normal((48, 96), dtype=np.float32)
err = float(np.abs(ops.linear(x, w) - x.astype(np.float64) @ w.T.astype(np.float64)).max())
print(json.dumps({
    "warnings": [str(m.message) for m in caught if issubclass(m.category, asymvq.OpenMPWarning)],
    "runtimes": _loader.openmp_runtimes(),
    "policy": os.environ.get("OMP_WAIT_POLICY"),
    "parked": _loader.PARKED_TEAM,
    "park_threads": sum(open(f"/proc/self/task/{t}/comm").read().strip() == "avq-omp-park"
                        for t in os.listdir("/proc/self/task")),
    "threads": asymvq.get_num_threads(),
    "linear_error": err,
}))
"""


def _run(order: str, policy: Optional[str], throttle: Optional[str] = None) -> Dict[str, Any]:
    env = dict(os.environ, OMP_DISPLAY_ENV="VERBOSE")
    env.pop("OMP_WAIT_POLICY", None)  # this test process's own value is asymvq's default
    env.pop("ASYMVQ_OPENMP_THROTTLE", None)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    if throttle is not None:
        env["ASYMVQ_OPENMP_THROTTLE"] = throttle
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, order], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    spins = re.findall(r"GOMP_SPINCOUNT = '(\d+)'", proc.stderr)
    assert len(spins) == 1, f"expected one OpenMP runtime report, got {spins}"
    out["spincount"] = int(spins[0])
    assert out["linear_error"] < 1e-3
    return out


def test_torch_imported_first_gets_a_parked_team_that_throttles_its_spinning_runtime() -> None:
    r = _run("torch-first", None)
    assert r["spincount"] == 300000  # torch's libgomp loaded with the default policy: idle threads spin
    assert len(r["runtimes"]) == 1  # ... and serves asymvq too
    # libgomp spins briefly while it manages more threads than CPUs: asymvq's plus the team's minus its master
    assert r["parked"] >= 2
    assert r["threads"] + r["parked"] - 1 > len(os.sched_getaffinity(0))
    assert r["park_threads"] == r["parked"]  # the team really exists: its threads sleep under that name
    assert r["warnings"] == []


def test_torch_imported_first_without_the_throttle_warns_how_to_fix_it() -> None:
    r = _run("torch-first", None, throttle="0")
    assert r["parked"] == 0 and r["park_threads"] == 0
    assert len(r["warnings"]) == 1
    assert "OMP_WAIT_POLICY=PASSIVE" in r["warnings"][0] and "before torch" in r["warnings"][0]


def test_asymvq_imported_first_makes_the_one_runtime_passive_for_both() -> None:
    r = _run("asymvq-first", None)
    assert r["spincount"] == 0
    assert r["warnings"] == []
    assert r["parked"] == 0 and r["park_threads"] == 0
    assert len(r["runtimes"]) == 1  # torch's libgomp has the same soname: asymvq's runtime serves it


def test_passive_policy_set_before_python_starts_removes_the_spinning_and_the_warning() -> None:
    r = _run("torch-first", "PASSIVE")
    assert r["spincount"] == 0
    assert r["warnings"] == []
    assert r["parked"] == 0


def test_an_explicit_active_policy_is_kept_without_throttle_or_warning() -> None:
    r = _run("torch-first", "ACTIVE")
    assert r["policy"] == "ACTIVE"
    assert r["warnings"] == []
    assert r["parked"] == 0


def test_asymvq_alone_sets_the_passive_policy_as_the_runtime_loads() -> None:
    env = dict(os.environ, OMP_DISPLAY_ENV="VERBOSE")
    env.pop("OMP_WAIT_POLICY", None)
    code = "import warnings; warnings.simplefilter('error'); import asymvq"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.findall(r"GOMP_SPINCOUNT = '(\d+)'", proc.stderr) == ["0"]


def test_asymvq_calls_use_its_thread_count_whatever_torch_set_and_torch_then_reads_it() -> None:
    import numpy as np
    import torch

    import asymvq
    from asymvq._core import ops

    ours, theirs = asymvq.get_num_threads(), torch.get_num_threads()
    x = np.ones((8, 16), np.float32)
    try:
        asymvq.set_num_threads(3)
        torch.set_num_threads(1)
        ops.linear(x, x)
        assert asymvq.get_num_threads() == 3
        assert torch.get_num_threads() == 3  # one runtime, one per-thread setting: asymvq's call set it
    finally:
        asymvq.set_num_threads(ours)
        torch.set_num_threads(theirs)


MAPS = """\
7f00-7f01 r-xp 00000000 08:01 11 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0
7f01-7f02 r--p 00010000 08:01 11 /usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0
7f02-7f03 r-xp 00000000 08:01 12 /site-packages/torch/lib/libgomp-a34b3233.so.1
7f03-7f04 r-xp 00000000 08:01 13 /opt/intel/lib/libiomp5.so
7f04-7f05 r-xp 00000000 08:01 14 /usr/lib/libgompish-not-openmp.so
7f05-7f06 rw-p 00000000 00:00 0 [heap]
7f06-7f07 rw-p 00000000 00:00 0
"""


def test_openmp_runtimes_lists_each_mapped_runtime_once_in_load_order() -> None:
    assert _loader.openmp_runtimes(MAPS.splitlines()) == [
        "/usr/lib/x86_64-linux-gnu/libgomp.so.1.0.0",
        "/site-packages/torch/lib/libgomp-a34b3233.so.1",
        "/opt/intel/lib/libiomp5.so",
    ]


def test_two_runtimes_are_a_problem_whatever_the_policy() -> None:
    problems = _loader.openmp_problems([], ["/a/libgomp.so.1", "/b/libiomp5.so"], "PASSIVE", throttled=False)
    assert len(problems) == 1
    assert "/a/libgomp.so.1" in problems[0] and "/b/libiomp5.so" in problems[0]
    assert "set_num_threads" in problems[0]


def test_a_shared_early_runtime_is_a_problem_only_without_a_user_policy_or_throttle() -> None:
    gomp = ["/a/libgomp.so.1"]
    assert len(_loader.openmp_problems(gomp, gomp, None, throttled=False)) == 1
    assert _loader.openmp_problems(gomp, gomp, None, throttled=True) == []
    assert _loader.openmp_problems(gomp, gomp, "PASSIVE", throttled=False) == []
    assert _loader.openmp_problems([], gomp, None, throttled=False) == []


def test_asymvq_shares_an_early_runtime_only_when_it_brought_none_of_its_own() -> None:
    assert _loader.shares_early_runtime(["/t/libgomp.so.1"], ["/t/libgomp.so.1"])
    assert not _loader.shares_early_runtime([], ["/s/libgomp.so.1"])
    assert not _loader.shares_early_runtime(["/t/libiomp5.so"], ["/t/libiomp5.so", "/s/libgomp.so.1"])


def test_bench_inprocess_rejects_an_unknown_variant_with_a_clear_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "asymvq.bench", "inprocess", "--variants", "alone,bogus"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown variant 'bogus'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_plan_built_for_fewer_threads_is_rebuilt_when_the_count_grows():
    # per-thread workspaces are sized at build: running a 1-thread plan on 2 threads overran them
    # (heap corruption seen under the AVX2 cap)
    code = textwrap.dedent(
        """
        import sys, numpy as np
        sys.path.insert(0, "tests")
        from fixtures import write_checkpoint, fixture_config
        import asymvq
        from asymvq import TextEncoder
        import tempfile, os
        p = write_checkpoint(os.path.join(tempfile.mkdtemp(), "sd.ckpt"), "sd15-inpaint")
        te = TextEncoder.from_config(fixture_config("sd15-inpaint"), p)
        ids = np.random.default_rng(0).integers(0, 1000, (2, 77))
        asymvq.set_num_threads(1)
        a = te.encode_ids(ids)
        asymvq.set_num_threads(2)
        for _ in range(10):
            b = te.encode_ids(ids)
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max(), np.abs(a - b).max()
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
