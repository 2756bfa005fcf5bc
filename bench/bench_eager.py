"""The eager baseline lives in fastmix.eager (the trainer's --reference-step uses it too)."""
from fastmix.eager import *  # noqa: F401,F403
from fastmix.eager import EPS  # noqa: F401
