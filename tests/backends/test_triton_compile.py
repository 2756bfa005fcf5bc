"""Every Triton kernel variant the launchers start compiles to a cubin for an A100-class
(sm_86) and an H100 (sm_90) GPU, in float32, float16 and bfloat16.

The interpreter runs kernels but cannot catch what only the GPU compiler
rejects; this compiles ahead of time through the JIT's own specialisation
(tests/triton_aot.py), which needs no GPU.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("arch", [86, 90])  # one process each, so that pytest -n runs them side by side
def test_all_kernel_variants_compile(arch):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    script = Path(__file__).parents[1] / "triton_aot.py"
    result = subprocess.run([sys.executable, str(script), str(arch)], capture_output=True, text=True, env=env,
                            timeout=1800, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "compiled" in result.stdout and "FAILED" not in result.stdout
    # the JIT's specialisation reached the compiler: vectorised (divisible-by-16) variants exist
    assert "_tile_kernel" in result.stdout and "_grad_kernel" in result.stdout
