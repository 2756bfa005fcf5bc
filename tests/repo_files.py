"""The repository's own Python files that are not in the package (scripts/, setup.py),
loaded as modules for the tests."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(relative: str, name: str | None = None):
    """The file ``ROOT/relative`` run as a module (not as ``__main__``)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
