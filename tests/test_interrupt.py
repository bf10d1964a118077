"""Ctrl-C during one long model call: the call ends with KeyboardInterrupt within a layer, not when the
call would have finished, and the same object then computes the right result.

Each scenario runs in a child process (SIGINT goes to the child only). A call is sized to take a
second or more on the tiny configs; SIGINT is sent from a timer thread a quarter into the call, and
the KeyboardInterrupt must come before half the call's duration has passed (without the per-layer
check it comes after about three quarters, when the call ends).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fixtures import fixture_config

ROOT = Path(__file__).resolve().parent.parent

# kind -> (code building `model` from `cfg`, `path`; code for one call of a second or more using `rng`)
CALLS = {
    "unet": (
        "UNet.from_config(cfg, path)",
        "model(rng.standard_normal((1, 9, 64, 64)).astype(np.float32), 500, "
        "rng.standard_normal((1, 77, 64)).astype(np.float32))",
    ),
    "decode": (
        "Autoencoder.from_config(cfg, path)",
        "model.decode(rng.standard_normal((1, 4, 48, 48)).astype(np.float32))",
    ),
    "encode": (
        "Autoencoder.from_config(cfg, path)",
        "model.encode(rng.uniform(-1, 1, (2, 3, 512, 512)).astype(np.float32))",
    ),
    "text-encoder": (
        "TextEncoder.from_config(cfg, path)",
        "model.encode_ids(rng.integers(0, 1000, (2048, 77)))",
    ),
}

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys, threading, time
    import numpy as np
    from asymvq import Autoencoder, TextEncoder, UNet

    cfg, path, mode = sys.argv[1:4]

    def build():
        return {build}

    def call(model):
        rng = np.random.default_rng(0)
        return {call}

    def interrupt_after(delay):
        sent = []
        def fire():
            time.sleep(delay)
            sent.append(time.perf_counter())
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=fire, daemon=True).start()
        return sent

    report = {{}}
    model = build()
    if mode == "run":
        call(model)  # builds the plan
        t0 = time.perf_counter()
        want = call(model)
        report["call_s"] = duration = time.perf_counter() - t0
        sent = interrupt_after(0.25 * duration)
    else:  # "build": interrupt the first call, which builds the plan
        want = call(build())
        report["call_s"] = duration = None
        sent = interrupt_after(0.05)
    try:
        call(model)
        report["interrupted"] = False
    except KeyboardInterrupt:
        report["interrupted"] = True
        report["latency_s"] = time.perf_counter() - sent[0]
    got = call(model)
    report["same_after"] = bool(np.array_equal(got, want))
    print(json.dumps(report))
    """
)


def run_child(kind: str, path: Path, mode: str) -> dict:
    build, call = CALLS[kind]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD.format(build=build, call=call), str(fixture_config("sd15-inpaint")), str(path),
         mode],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode < 0:
        pytest.fail(f"the child died of {signal.Signals(-proc.returncode).name}:\n{proc.stderr}")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", list(CALLS))
def test_ctrl_c_ends_a_long_call_within_a_layer_and_the_model_stays_usable(checkpoints, kind):  # noqa: F811
    r = run_child(kind, checkpoints.get("sd15-inpaint"), "run")
    assert r["interrupted"], r
    assert r["latency_s"] < 0.5 * r["call_s"], r
    assert r["same_after"], r


def test_ctrl_c_during_the_first_call_leaves_a_model_that_builds_again(checkpoints):  # noqa: F811
    r = run_child("decode", checkpoints.get("sd15-inpaint"), "build")
    assert r["interrupted"], r
    assert r["same_after"], r


SIGNALS_AFTER = textwrap.dedent(
    """
    import os, signal, sys, time
    import numpy as np
    from asymvq import Autoencoder

    model = Autoencoder.from_config(sys.argv[1], sys.argv[2])
    z = np.zeros((1, 4, 8, 8), np.float32)
    model.decode(z)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        print("no KeyboardInterrupt")
    except KeyboardInterrupt:
        print("python handler intact")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.kill(os.getpid(), signal.SIGINT)
    model.decode(z)
    print("ignored stays ignored")
    """
)


def test_python_sigint_handling_is_unchanged_between_and_around_calls(checkpoints):  # noqa: F811
    proc = subprocess.run(
        [sys.executable, "-c", SIGNALS_AFTER, str(fixture_config("sd15-inpaint")),
         str(checkpoints.get("sd15-inpaint"))],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["python", "handler", "intact", "ignored", "stays", "ignored"]


SIGNALS_DURING = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    import numpy as np
    from asymvq import UNet

    signal.signal(signal.SIGUSR1, lambda *a: None)
    model = UNet.from_config(sys.argv[1], sys.argv[2])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 9, 64, 64)).astype(np.float32)
    c = rng.standard_normal((1, 77, 64)).astype(np.float32)
    t0 = time.perf_counter()
    want = model(x, 500, c)
    duration = time.perf_counter() - t0

    def kick():
        for _ in range(8):
            time.sleep(duration / 9)
            os.kill(os.getpid(), signal.SIGUSR1)

    for _ in range(4):
        threading.Thread(target=kick, daemon=True).start()
        assert np.array_equal(model(x, 500, c), want)
    print("unchanged")
    """
)


def test_signals_handled_during_a_call_change_nothing(checkpoints):  # noqa: F811
    # oneDNN's JIT sgemm keeps data below the stack pointer; a handler's frame on the computing
    # thread's own stack overwrote it (heap corruption in 6 of 6 runs before the alternate stack)
    proc = subprocess.run(
        [sys.executable, "-c", SIGNALS_DURING, str(fixture_config("sd15-inpaint")),
         str(checkpoints.get("sd15-inpaint"))],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode < 0:
        pytest.fail(f"the child died of {signal.Signals(-proc.returncode).name}:\n{proc.stderr}")
    assert proc.returncode == 0 and proc.stdout.strip() == "unchanged", proc.stderr
