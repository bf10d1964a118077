"""What this CPU, under the ONEDNN_MAX_CPU_ISA cap if one is set, lets the tests run.

bf16 needs AVX-512 (native with AVX512-BF16 or AMX, emulated by oneDNN on plain AVX-512). Under an
AVX2 cap (CI runs the fast suite a second time with ONEDNN_MAX_CPU_ISA=AVX2) bf16 cases are marked
with :data:`needs_bf16` and skip with a reason; ``test_isa.py`` checks, under every cap, that bf16 is
then refused with a clear error and that fp32 runs on the capped kernels.
"""

import pytest

import asymvq

INFO = asymvq.info()

#: bf16 models and ops can run in this process.
BF16_RUNS: bool = INFO["kernel_isa"] == "avx512"

needs_bf16 = pytest.mark.skipif(
    not BF16_RUNS,
    reason=f"bf16 needs AVX-512; oneDNN runs at {INFO['isa']} here (CPU {INFO['cpu_isa']}, ONEDNN_MAX_CPU_ISA "
    "cap?): test_isa.py checks the clear error instead",
)


def bf16(*values, **kw):
    """``pytest.param(*values)`` for a bf16 case: runs where bf16 can (see :data:`needs_bf16`)."""
    return pytest.param(*values, marks=needs_bf16, **kw)
