"""uwav.atomic: a file or folder appears complete or not at all, whatever fails or runs alongside."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from uwav.atomic import atomic_dir, atomic_path, clean_interrupted, write_bytes_atomic, write_text_atomic


def run_and_crash(code: str) -> None:
    """Run `code` in a fresh interpreter that dies with os._exit (no cleanup, as on a kill)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr


def test_writes_create_the_folder_and_replace_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b.txt"
    assert write_text_atomic(path, "first") == path
    assert write_bytes_atomic(path, b"second") == path
    assert path.read_bytes() == b"second"
    assert [p.name for p in path.parent.iterdir()] == ["b.txt"]


def test_failed_writer_leaves_old_content_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "table.parquet"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_temporary_is_a_hidden_unique_sibling_without_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "x.parquet"
    with atomic_path(path) as first, atomic_path(path) as second:
        assert first != second
        for tmp in (first, second):
            assert tmp.parent == tmp_path and tmp.name.startswith(".x.parquet.")
            assert not tmp.name.endswith(".parquet")  # a `*.parquet` glob never sees it
            tmp.write_text(tmp.name)
    assert path.read_text() == first.name  # the outer context renamed last
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


def test_concurrent_writers_never_show_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "shared.bin"
    payloads = [bytes([i]) * 1_000_000 for i in range(8)]
    write_bytes_atomic(path, payloads[0])
    seen: set[bytes] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(path.read_bytes())

    reader = threading.Thread(target=read)
    reader.start()
    writers = [threading.Thread(target=write_bytes_atomic, args=(path, p)) for p in payloads for _ in range(3)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    reader.join()
    assert seen <= set(payloads)
    assert path.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"]


@pytest.mark.parametrize("durable", [False, True])
def test_atomic_dir_replaces_the_whole_folder(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "bench"
    with atomic_dir(path, durable=durable) as tmp:
        (tmp / "old.txt").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "a.npy").write_text("1")
    with atomic_dir(path, durable=durable) as tmp:
        (tmp / "new.txt").write_text("2")
    assert sorted(p.name for p in path.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bench"]


def test_failed_atomic_dir_keeps_the_old_folder(tmp_path: Path) -> None:
    path = tmp_path / "bench"
    with atomic_dir(path) as tmp:
        (tmp / "kept.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_dir(path) as tmp:
        (tmp / "partial.txt").write_text("new")
        raise KeyboardInterrupt
    assert [p.name for p in path.iterdir()] == ["kept.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["bench"]


def test_clean_interrupted_after_a_crash_mid_write(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "kept.txt").write_text("old")
    run_and_crash(f"""
        import os
        from uwav.atomic import atomic_dir, atomic_path
        with atomic_path({str(tmp_path / "file.json")!r}) as tmp:
            tmp.write_text("half")
            with atomic_dir({str(tmp_path / "ckpt")!r}) as folder:
                (folder / "partial.txt").write_text("new")
                os._exit(3)
    """)
    assert len(list(tmp_path.iterdir())) == 3  # ckpt and two temporaries
    clean_interrupted(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["kept.txt"]


def test_clean_interrupted_restores_the_old_folder_after_a_crash_mid_replace(tmp_path: Path) -> None:
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "kept.txt").write_text("old")
    (tmp_path / "unrelated.txt").write_text("mine")
    # Die between moving the old folder aside and renaming the new one into place.
    run_and_crash(f"""
        import os
        from uwav.atomic import atomic_dir
        real_rename = os.rename
        calls = []
        def rename(src, dst):
            calls.append(src)
            if len(calls) == 2:
                os._exit(3)
            real_rename(src, dst)
        os.rename = rename
        with atomic_dir({str(tmp_path / "best")!r}, durable=True) as folder:
            (folder / "new.txt").write_text("new")
    """)
    assert not (tmp_path / "best").exists()
    clean_interrupted(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "unrelated.txt"]
    assert [p.name for p in (tmp_path / "best").iterdir()] == ["kept.txt"]
