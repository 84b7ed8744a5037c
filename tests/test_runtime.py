"""The CPU runtime's thread governor and the inference backend choice (no timings: those are
bench/contention.py's and bench/predict_latency.py's)."""

from __future__ import annotations

import os

import torch

from murakit.infer import runtime as rt


def test_governor_stays_within_bounds_and_restores(monkeypatch):
    before = torch.get_num_threads()
    governor = rt.ThreadGovernor(max_threads=2, interval=0.0)
    samples = iter([(0.0, 0.0), (2.0, 0.1), (4.0, 0.2)])  # (machine busy s, own s)
    monkeypatch.setattr(governor, "_busy_seconds", lambda: next(samples)[0])
    monkeypatch.setattr(governor, "_own_seconds", lambda: governor._fake_own)
    clock = iter([0.0, 1.0, 2.0])
    monkeypatch.setattr(rt.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(governor, "_cpus", 2)
    try:
        governor._fake_own = 0.0
        assert governor.poll() == 2  # first sample: nothing to compare yet
        governor._fake_own = 0.1  # others used 1.9 CPU-s in 1 s: one core left at most
        assert governor.poll() == 1
        assert torch.get_num_threads() == 1
        governor._fake_own = 2.0  # the machine's busy time is all ours: both cores free
        assert governor.poll() == 2
        assert governor.changes == 2
    finally:
        torch.set_num_threads(before)


def test_governor_reads_this_machine():
    governor = rt.ThreadGovernor(max_threads=max(1, torch.get_num_threads()), interval=0.0)
    assert governor._busy_seconds() > 0
    assert governor._own_seconds() >= 0
    before = torch.get_num_threads()
    try:
        for _ in range(3):
            assert 1 <= governor.poll() <= governor.max_threads
    finally:
        torch.set_num_threads(before)


def test_make_runtime_governs_cpu_threads_unless_told_not(monkeypatch):
    monkeypatch.setattr(rt, "_START_THREADS", 2)
    monkeypatch.delenv("MURAKIT_ADAPTIVE_THREADS", raising=False)
    assert not rt.make_runtime("cpu").threads.train  # inference only by default
    assert rt.make_runtime("cpu", adaptive_threads=True).threads.train
    assert rt.make_runtime("cpu", adaptive_threads=False).threads is None
    monkeypatch.setenv("MURAKIT_ADAPTIVE_THREADS", "1")
    assert rt.make_runtime("cpu").threads.train
    monkeypatch.setenv("MURAKIT_ADAPTIVE_THREADS", "0")
    assert rt.make_runtime("cpu").threads is None
    # the governor does not change what is equal
    assert rt.make_runtime("cpu") == rt.make_runtime("cpu", adaptive_threads=True)


def test_passive_openmp_leaves_a_user_choice():
    assert rt.passive_openmp({})["OMP_WAIT_POLICY"] == "PASSIVE"
    assert rt.passive_openmp({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"
    assert "OMP_WAIT_POLICY" not in rt.passive_openmp({"GOMP_SPINCOUNT": "1000"})
    assert rt.openmp_wait({"OMP_WAIT_POLICY": "passive"}) == "passive wait"


def test_auto_backend_picks_onnx_only_when_a_fresh_graph_is_there(tmp_path, monkeypatch):
    assert rt.choose_backend("torch", tmp_path, None) == "torch"
    assert rt.choose_backend("onnx", tmp_path, None) == "onnx"
    (tmp_path / "best.pt").write_bytes(b"")
    assert rt.choose_backend("auto", tmp_path, None) == "torch"  # no graph
    (tmp_path / "model.onnx").write_bytes(b"")
    assert rt.choose_backend("auto", tmp_path, None) == "torch"  # no sidecar
    (tmp_path / "model.onnx.json").write_text("{}")
    assert rt.choose_backend("auto", tmp_path, None) == "onnx"
    old = (tmp_path / "model.onnx").stat().st_mtime - 100
    os.utime(tmp_path / "model.onnx", (old, old))
    assert rt.choose_backend("auto", tmp_path, None) == "torch"  # older than the weights
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert rt.choose_backend("auto", tmp_path, tmp_path / "model.onnx") == "torch"


def test_training_runs_at_full_threads_unless_asked(monkeypatch):
    before = torch.get_num_threads()
    governor = rt.ThreadGovernor(max_threads=2, interval=0.0)
    polls = []
    monkeypatch.setattr(governor, "poll", lambda: polls.append(1))
    try:
        governor.on_batch(training=False)
        assert polls == [1]  # inferring: adapts
        governor.threads = 1
        torch.set_num_threads(1)
        governor.on_batch(training=True)  # training: back to full, and stays there
        assert governor.threads == 2 and torch.get_num_threads() == 2
        governor.on_batch(training=False)
        assert polls == [1]  # its validation passes do not adapt either
        both = rt.ThreadGovernor(max_threads=2, interval=0.0, train=True)
        monkeypatch.setattr(both, "poll", lambda: polls.append(2))
        both.on_batch(training=True)
        assert polls == [1, 2]
    finally:
        torch.set_num_threads(before)


def test_fixed_training_threads_say_once_when_a_core_is_taken(monkeypatch):
    before = torch.get_num_threads()
    governor = rt.ThreadGovernor(max_threads=2, interval=0.0)
    readings = iter([2, 1, 1, 2, 1, 1, 1, 1, 1])  # threads the free cores would allow
    monkeypatch.setattr(governor, "_wanted_threads", lambda: next(readings))
    heard = []
    governor.on_slowed = heard.append
    try:
        torch.set_num_threads(2)
        for _ in range(6):  # a reading that allows both threads restarts the count
            governor.on_batch(training=True)
        assert heard == []
        for _ in range(3):
            governor.on_batch(training=True)
        assert len(heard) == 1 and governor.on_slowed is None  # said once, then quiet
        assert governor.threads == 2 and torch.get_num_threads() == 2  # still fixed
    finally:
        torch.set_num_threads(before)
