"""What results.json records beside the metrics."""


def test_versions_record_a_hash_of_fastmix_code(tmp_path):
    """versions()["fastmix_source"] names the code that ran: the package and its Triton
    kernels (.py) and the built kernel libraries (.so); other files do not count."""
    import importlib.util
    from pathlib import Path

    import fastmix
    from fastmix.harness.report import code_hash, source_hash, versions

    kernels = [Path(p) for p in importlib.util.find_spec("fastmix.kernels").submodule_search_locations]
    package = Path(fastmix.__file__).parent
    assert versions()["fastmix_source"] == code_hash() == \
        source_hash(package, *[k for k in kernels if package not in k.parents])
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "lib.so").write_bytes(b"\x7fELF 1")
    (tmp_path / "pkg" / "notes.txt").write_text("not code")
    (tmp_path / "kernels").mkdir()
    (tmp_path / "kernels" / "k.py").write_text("y = 1\n")
    roots = (tmp_path / "pkg", tmp_path / "kernels")
    first = source_hash(*roots)
    (tmp_path / "pkg" / "notes.txt").write_text("changed")
    assert source_hash(*roots) == first
    for path, text in (("pkg/a.py", "x = 2\n"), ("pkg/lib.so", "\x7fELF 2"), ("kernels/k.py", "y = 2\n")):
        (tmp_path / path).write_text(text)
        assert source_hash(*roots) != first, path
        first = source_hash(*roots)


def test_code_hash_without_the_kernels_package(monkeypatch):
    """fastmix imported from a source checkout (``python -m fastmix`` in the repository after
    a non-editable install) has no ``fastmix.kernels``: the hash is the package's alone."""
    import importlib.util
    from pathlib import Path

    import fastmix
    from fastmix.harness.report import code_hash, source_hash

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fastmix.kernels" else find_spec(name, *a))
    assert code_hash.__wrapped__() == source_hash(Path(fastmix.__file__).parent)
