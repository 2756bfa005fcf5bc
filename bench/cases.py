"""The sizes the suite runs, and the cases it leaves out, with the reasons."""
import pytest
from bench_common import ON_GPU, Settings

LOGIT_SIZES = [(32, 10), (256, 100), (4096, 1000)]
IMAGE_SIZES = [(32, 1, 28, 28), (32, 3, 32, 32), (256, 3, 224, 224)]


def size_id(size) -> str:
    return "x".join(str(s) for s in size)


def smoke_skip(impl: str, size, sizes, layout: str = "contiguous") -> None:
    """What the smoke run (``--benchmark-disable``, CI) leaves out to stay short:
    torch.compile beyond the smallest size and the contiguous layout of a group
    (compiling costs seconds a case; the other cases run the same code), and on the CPU the (256, 3, 224, 224) images
    (drawing their inputs alone takes seconds; the smaller images run the same code)."""
    if not Settings.smoke:
        return
    if impl == "compile" and (tuple(size) != tuple(sizes[0]) or layout != "contiguous"):
        pytest.skip("smoke run (--benchmark-disable): torch.compile runs at the smallest contiguous case only")
    if not ON_GPU and len(size) == 4 and size[0] * size[2] * size[3] >= 256 * 224 * 224:
        pytest.skip("smoke run on the CPU: the (256, 3, 224, 224) images are left to the timed run")
