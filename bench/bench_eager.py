"""The eager baseline lives in fastmix.ops.eager (the trainer's --paper-step uses it too)."""
from fastmix.ops.eager import *  # noqa: F401,F403
from fastmix.ops.eager import EPS  # noqa: F401
