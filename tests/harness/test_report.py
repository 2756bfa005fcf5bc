"""What results.json records beside the metrics."""


def test_versions_record_a_hash_of_fastmix_source(tmp_path):
    """versions()["fastmix_source"] names the code that ran: it changes with any .py file."""
    from fastmix.harness.report import source_hash, versions

    assert len(versions()["fastmix_source"]) == 16
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not source")
    first = source_hash(tmp_path / "pkg")
    (tmp_path / "pkg" / "notes.txt").write_text("changed")
    source_hash.cache_clear()
    assert source_hash(tmp_path / "pkg") == first
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    source_hash.cache_clear()
    assert source_hash(tmp_path / "pkg") != first
