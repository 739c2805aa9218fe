"""Writes are whole or not at all; a run is judged on its validation part, else its train part."""

import pytest

from sparsebin import runfolder
from sparsebin.files import atomic_path, write_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "status.json"
    write_atomic(path, b'{"state": "running"}')
    with pytest.raises(OSError, match="disk full"), atomic_path(path) as partial:
        partial.write_bytes(b'{"state": "do')
        raise OSError("disk full")
    assert path.read_bytes() == b'{"state": "running"}'
    assert [item.name for item in tmp_path.iterdir()] == ["status.json"]
    write_atomic(path, b'{"state": "done"}')
    assert path.read_bytes() == b'{"state": "done"}'
    assert [item.name for item in tmp_path.iterdir()] == ["status.json"]


def test_a_run_is_judged_on_its_validation_part_else_its_train_part():
    held_out = {"train": {"recon_loss": 0.2}, "validation": {"recon_loss": 0.3}}
    assert runfolder.evaluated_part(held_out) == ("validation", {"recon_loss": 0.3})
    assert runfolder.evaluated_part({"train": {"recon_loss": 0.2}}) == ("train", {"recon_loss": 0.2})
    assert runfolder.evaluated_part({"train": {"recon_loss": 0.2}, "validation": {}}) == ("train", {"recon_loss": 0.2})
