"""Progress bars (tqdm) that ``--quiet`` turns off."""
from __future__ import annotations

import sys


def progress_bar(total: int, desc: str, quiet: bool = False):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=quiet, leave=False, file=sys.stderr, mininterval=1.0,
                dynamic_ncols=True)
