import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from usv_ray.io import ShardWriter, atomic_path, remove_stale_tmp, write_json, write_table

SCHEMA = pa.schema([pa.field("i", pa.int32()), pa.field("name", pa.string())])


def test_atomic_path_publishes_only_on_success(tmp_path):
    target = tmp_path / "sub" / "t.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert not target.exists() and list((tmp_path / "sub").iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and len(list((tmp_path / "sub").iterdir())) == 1


@pytest.mark.parametrize(("rows", "group"), [(0, 4), (3, 4), (4, 4), (9, 4)])
def test_shard_writer_streams_row_groups(tmp_path, rows, group):
    path = tmp_path / "s.parquet"
    with ShardWriter(path, SCHEMA, rows_per_group=group) as shard:
        for i in range(rows):
            shard.add({"i": i, "name": f"r{i}"})
    table = pq.read_table(path)
    assert table.schema.equals(SCHEMA) and table["i"].to_pylist() == list(range(rows))
    assert pq.ParquetFile(path).metadata.num_row_groups == max(1, -(-rows // group))


def test_shard_writer_failure_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "s.parquet"
    write_table(pa.table({"i": [7], "name": ["old"]}, schema=SCHEMA), path)
    with pytest.raises(ValueError), ShardWriter(path, SCHEMA, rows_per_group=2) as shard:
        for i in range(5):
            shard.add({"i": i, "name": "new"})
        raise ValueError("decoder died")
    assert pq.read_table(path)["name"].to_pylist() == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["s.parquet"]


def test_remove_stale_tmp(tmp_path):
    write_json({"a": 1}, tmp_path / "j.json")
    (tmp_path / "x.parquet.tmp-1234abcd").write_bytes(b"half")
    assert remove_stale_tmp(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["j.json"]
    assert remove_stale_tmp(tmp_path / "missing") == 0


def test_a_temporary_file_of_a_live_run_is_its_own(tmp_path):
    """Only a dead writer's temporary files are removed: one run never deletes another's."""
    import os
    import subprocess
    import sys

    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f"x.parquet.tmp-{alive.pid}-abcd1234").write_bytes(b"being written")
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
        (tmp_path / f"y.parquet.tmp-{dead.stdout.strip()}-abcd1234").write_bytes(b"left")
        (tmp_path / f"z.parquet.tmp-{os.getpid()}-abcd1234").write_bytes(b"mine")
        assert remove_stale_tmp(tmp_path) == 1
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == [
            f"x.parquet.tmp-{alive.pid}-abcd1234",
            f"z.parquet.tmp-{os.getpid()}-abcd1234",
        ]
    finally:
        alive.kill()
