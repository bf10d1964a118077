"""Calls under an address-space limit a little too small end in MemoryError, never a signal, and the
model works (and gives the right result) once memory is available again.

oneDNN 3.2 segfaults instead of failing when memory runs out while it creates a primitive (its
allocation operator returns NULL and the object is constructed into it; see csrc/core/plan.c), so
the plan builder refuses to create one without some headroom. Each case runs in a child process
with RLIMIT_AS set to its current address space plus a few MiB, the range where the crash was seen.
Loading a model starts asymvq's OpenMP team, before the cap: a worker thread's stack is RLIMIT_STACK
bytes of address space (8 MiB by default) and libgomp ends the process when it cannot create one, so
a team first started by the capped call would exit instead of raising MemoryError.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fixtures import fixture_config

ROOT = Path(__file__).resolve().parent.parent

CHILD = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from asymvq import Autoencoder, UNet

    cfg, path, kind, extra_mib = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    rng = np.random.default_rng(0)
    if kind == "unet":
        model = UNet.from_config(cfg, path)
        x = rng.standard_normal((1, 9, 32, 32)).astype(np.float32)
        c = rng.standard_normal((1, 77, 64)).astype(np.float32)
        call = lambda: model(x, 5, c)
    else:
        model = Autoencoder.from_config(cfg, path)
        z = rng.standard_normal((1, 4, 32, 32)).astype(np.float32)
        call = lambda: model.decode(z)
    with open("/proc/self/status") as f:
        vm = int(next(l for l in f if l.startswith("VmSize")).split()[1]) * 1024
    limit = vm + extra_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
    try:
        call()
        print("completed")
    except MemoryError as e:
        print("MemoryError:", e)
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    got = call()
    reference = UNet.from_config(cfg, path) if kind == "unet" else Autoencoder.from_config(cfg, path)
    want = reference(x, 5, c) if kind == "unet" else reference.decode(z)
    print("same after" if np.array_equal(got, want) else "different after")
    """
)


@pytest.mark.parametrize("extra_mib", [4, 12, 16, 24, 48])
@pytest.mark.parametrize("kind", ["unet", "decode"])
def test_a_call_short_of_memory_raises_memory_error_and_the_model_recovers(checkpoints, kind, extra_mib):  # noqa: F811
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            str(fixture_config("sd15-inpaint")),
            str(checkpoints.get("sd15-inpaint")),
            kind,
            str(extra_mib),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode < 0:
        pytest.fail(f"the child died of {signal.Signals(-proc.returncode).name}:\n{proc.stdout}\n{proc.stderr}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "completed" or lines[0].startswith("MemoryError: "), lines
    assert lines[-1] == "same after", lines
