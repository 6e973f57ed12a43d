"""The shared helpers of edgeprune.core: atomic writes, strict JSON, the cache root, the machine
fingerprint, the interleaved timer and the progress protocol."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from edgeprune.core import cache, files, machine, progress, timing
from edgeprune.core.errors import EdgepruneError


def test_concurrent_writers_use_unique_temp_names(tmp_path, monkeypatch):
    target, seen, lock = tmp_path / "out.json", [], threading.Lock()
    barrier = threading.Barrier(8)

    def write(i):
        def body(tmp):
            with lock:
                seen.append(tmp)
            barrier.wait(timeout=10)  # all eight temp files exist at once
            Path(tmp).write_text(json.dumps({"writer": i}))
        files.write_atomic(target, body)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 8 and all(Path(t).parent == tmp_path for t in seen)
    assert json.loads(target.read_text())["writer"] in range(8)
    assert os.listdir(tmp_path) == ["out.json"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failing_writer_leaves_no_temp_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")

    def boom(tmp):
        Path(tmp).write_text("half")
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        files.write_atomic(target, boom)
    assert os.listdir(tmp_path) == ["a.txt"] and target.read_text() == "old"


def test_fsync_of_file_and_folder(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    files.write_text_atomic(tmp_path / "x.txt", "hi")
    assert len(calls) == 2  # the file, then the folder
    calls.clear()
    with files.atomic_directory(tmp_path / "folder") as tmp:
        (tmp / "f").write_text("1")
    assert len(calls) == 1 and (tmp_path / "folder" / "f").read_text() == "1"


def test_unwritable_place_is_one_error_line(tmp_path):
    with pytest.raises(EdgepruneError, match="cannot write"):
        files.write_json_atomic(tmp_path / "no" / "such" / "x.json", {})
    files.write_json_atomic(tmp_path / "made" / "x.json", {"a": 1}, mkdir=True)
    assert files.read_json(tmp_path / "made" / "x.json") == {"a": 1}
    assert os.listdir(tmp_path / "made") == ["x.json"]


@pytest.mark.parametrize("text", ['{"a": 1, "a": 2}', '{"x": {"b": 1, "b": 1}}', '{"a": NaN}', "[Infinity]", "[-Infinity]"])
def test_strict_json_refuses(text):
    with pytest.raises(json.JSONDecodeError):
        files.loads_strict(text)


def test_strict_json_reads_standard_json(tmp_path):
    assert files.loads_strict('{"a": [1, 2.5, null, true], "b": {"a": 1}}') == {"a": [1, 2.5, None, True], "b": {"a": 1}}
    (tmp_path / "manifest.json").write_text('{"k": 1, "k": 2}')
    with pytest.raises(EdgepruneError, match="corrupt manifest"):
        files.read_folder_json(tmp_path, "manifest.json", "artifact")


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEPRUNE_CACHE_DIR", str(tmp_path / "c"))
    assert cache.cache_dir("engines") == tmp_path / "c" / "engines"
    from edgeprune.core.cache import cache_dir
    from edgeprune.engines.cache import default_cache_dir

    assert cache_dir() == tmp_path / "c" and default_cache_dir() == tmp_path / "c" / "engines"
    monkeypatch.delenv("EDGEPRUNE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and not __import__("sys").platform == "darwin":
        assert cache.cache_dir("latency") == tmp_path / "xdg" / "edgeprune" / "latency"


def _fake_proc(monkeypatch, tmp_path, cpuinfo, model=None):
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "cpuinfo")
    monkeypatch.setattr(machine, "DEVICE_TREE_MODEL", tmp_path / "model")
    if model is not None:
        (tmp_path / "model").write_bytes(model)


def test_fingerprint_x86(monkeypatch, tmp_path):
    _fake_proc(monkeypatch, tmp_path, "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n")
    fp = machine.machine_fingerprint()
    assert fp["cpu"] == "Intel(R) Xeon(R) CPU @ 2.20GHz"
    assert set(fp) == {"cpu", "cores", "platform", "onnxruntime"}  # what stored calibrations compare


def test_fingerprint_jetson(monkeypatch, tmp_path):
    cpuinfo = "processor\t: 0\nBogoMIPS\t: 62.50\nCPU implementer\t: 0x41\nCPU part\t: 0xd42\n\nprocessor\t: 1\nCPU part\t: 0xd42\n"
    _fake_proc(monkeypatch, tmp_path, cpuinfo, b"NVIDIA Jetson AGX Orin Developer Kit\x00")
    assert machine.cpu_name() == "NVIDIA Jetson AGX Orin Developer Kit"
    (tmp_path / "model").unlink()
    assert machine.cpu_name() == "ARM Cortex-A78AE"
    _fake_proc(monkeypatch, tmp_path, "Hardware\t: BCM2835\nCPU part\t: 0xd08\n")
    assert machine.cpu_name() == "BCM2835"
    monkeypatch.setattr(machine, "CPUINFO", tmp_path / "missing")
    assert machine.cpu_name()  # platform's answer


def test_interleaved_order():
    log = []
    sessions = [[lambda s=s, j=j: log.append((s, j)) for j in range(jobs)] for s, jobs in enumerate((1, 2, 1))]
    ticks = iter(range(10**6))
    done = []
    times = timing.interleaved_times(sessions, runs=4, per_visit=2, warmup=1, settle_calls=1, seed=3,
                                     clock=lambda: next(ticks) * 1e-3, sleep=lambda _s: log.append("pause"),
                                     pause_s=0.01, progress=lambda d, t, m="": done.append((d, t)))
    assert [len(t) for s in times for t in s] == [4, 4, 4, 4] and all(v == pytest.approx(1.0) for s in times for t in s for v in t)
    assert done == [(1, 2), (2, 2)]
    visits = [i for i, x in enumerate(log) if x == "pause"]
    assert len(visits) == 6  # 3 sessions x 2 rounds, each visit starts with a pause
    for k, (start, end) in enumerate(zip(visits, visits[1:] + [len(log)])):
        visit = log[start + 1:end]
        assert len({s for s, _ in visit}) == 1  # one session per visit
        jobs = len(sessions[visit[0][0]])
        warm = jobs if k < 3 else 0
        assert len(visit) == warm + 1 + 2 * jobs  # warm-up (first round), settle, 2 timed runs of each job
    first_round = [log[v + 1][0] for v in visits[:3]]
    assert sorted(first_round) == [0, 1, 2]


def test_progress_adapters():
    shown, counted = [], []
    progress.say(progress.messages(shown.append), "hello")
    progress.advance(progress.counts(lambda d, t: counted.append((d, t))), 3, 5)
    progress.say(progress.prefixed(progress.messages(shown.append), "a"), "b")
    progress.say(None, "nobody")

    class Bar:
        def update(self, task, **fields):
            counted.append(fields)
    rb = progress.rich_bar(Bar(), 0, offset=10)
    rb(2, 4)
    rb(0, None, "phase")
    assert shown == ["hello", "a: b"] and counted == [(3, 5), {"completed": 12}, {"description": "phase"}]
    counted.clear()
    steps = progress.rich_bar(Bar(), 0, set_total=True, log=shown.append)
    steps(0, None, "a line")
    steps(3, 7, "screen: tome")
    steps(7, 9)
    assert shown[-1] == "a line" and counted == [{"description": "screen: tome", "completed": 3, "total": 7},
                                                 {"completed": 7, "total": 9}]
