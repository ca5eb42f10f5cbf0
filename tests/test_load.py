"""Threads on a shared machine (minicnn/kernels/load.py): the measurement, the cap it sets and
the C engine honouring it. Speed itself is measured by benchmarks/bench_train.py --neighbour."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import minicnn
from minicnn import kernels
from minicnn.kernels import load
from models import seed_model

TICKS = 100


def write_stat(path, busy_ticks_per_cpu, idle_ticks=1000):
    """A /proc/stat with one aggregate line and one line per CPU, each CPU busy for the given
    ticks (split over user, system and steal) and idle for idle_ticks."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    for cpu, busy in enumerate(busy_ticks_per_cpu):
        user, system, steal = busy - busy // 2 - busy // 4, busy // 2, busy // 4
        lines.append(f"cpu{cpu} {user} 0 {system} {idle_ticks} 7 0 0 {steal} 0 0")
    lines.append("intr 1 2 3")
    path.write_text("\n".join(lines) + "\n")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def monitor_for(tmp_path, cpus, own_seconds):
    stat = tmp_path / "stat"
    clock = FakeClock()
    monitor = load.LoadMonitor(stat_path=str(stat), clock=clock, own_cpu_seconds=lambda: own_seconds[0])
    monitor._cpus = list(range(cpus))  # as if the affinity mask held `cpus` CPUs
    monitor.cap = cpus
    return monitor, stat, clock


def test_busy_seconds_sum_the_allowed_cpus_without_idle_and_io_wait(tmp_path):
    stat = tmp_path / "stat"
    write_stat(stat, [300, 500, 700])
    assert load.read_busy_seconds([0, 2], str(stat), ticks_per_second=TICKS) == pytest.approx(10.0)
    assert load.read_busy_seconds([1], str(stat), ticks_per_second=TICKS) == pytest.approx(5.0)
    # a CPU the file does not list, or no file: unknown, never a partial sum
    assert load.read_busy_seconds([0, 5], str(stat), ticks_per_second=TICKS) is None
    assert load.read_busy_seconds([0], str(tmp_path / "missing"), ticks_per_second=TICKS) is None


@pytest.mark.parametrize("cpus, others, expected_cap", [
    (2, 0.0, 2),     # quiet
    (2, 0.3, 2),     # background noise keeps both threads
    (2, 0.67, 1),    # one busy process next to our two threads gets 2/3 of a CPU
    (2, 1.0, 1),     # ... and a whole one next to our single thread
    (2, 2.0, 1),     # never below one thread
    (4, 2.0, 2),
    (4, 1.7, 2),
    (4, 1.5, 3),
])
def test_the_cap_is_the_cpus_other_processes_leave_free(tmp_path, cpus, others, expected_cap):
    own = [50.0]
    monitor, stat, clock = monitor_for(tmp_path, cpus, own)
    ticks = os.sysconf("SC_CLK_TCK")
    write_stat(stat, [1000] * cpus)
    assert monitor.poll() == cpus               # the first sample only starts the window
    # one second later: this process used 0.8 CPU-seconds, everyone else `others`
    clock.now += 1.0
    own[0] += 0.8
    extra = [0] * cpus
    total_ticks = round((0.8 + others) * ticks)
    for i in range(total_ticks):
        extra[i % cpus] += 1
    write_stat(stat, [1000 + e for e in extra])
    assert monitor.poll() == expected_cap
    assert monitor.others == pytest.approx(others, abs=1.5 / ticks)


def test_the_load_is_measured_at_most_once_an_interval(tmp_path):
    own = [0.0]
    monitor, stat, clock = monitor_for(tmp_path, 2, own)
    ticks = os.sysconf("SC_CLK_TCK")
    write_stat(stat, [0, 0])
    monitor.poll()
    clock.now += 0.5
    write_stat(stat, [ticks // 2, ticks // 2])  # 1 CPU-second of others in 0.5 s: 2 CPUs busy
    assert monitor.poll() == 1
    write_stat(stat, [ticks // 2, ticks // 2])  # quiet again, but within the interval: not read
    clock.now += load.INTERVAL_SECONDS / 2
    assert monitor.poll() == 1
    clock.now += load.INTERVAL_SECONDS
    assert monitor.poll() == 2


def test_an_unreadable_stat_file_means_no_cap(tmp_path):
    monitor, stat, clock = monitor_for(tmp_path, 2, [0.0])
    assert monitor.poll() is None               # no file
    clock.now += 10
    write_stat(stat, [0, 0])
    assert monitor.poll() is None               # it stopped trying


@pytest.fixture
def c_engine():
    if "c" not in kernels.available_backends():
        pytest.skip("C engine not built here")
    from minicnn.kernels import c_engine
    previous = kernels.get_backend()
    minicnn.set_backend("c")
    try:
        yield c_engine
    finally:
        c_engine.set_load_cap(None)
        c_engine.set_num_threads(None)
        kernels.set_adaptive_threads(True)
        kernels._load_cap = None
        minicnn.set_backend(previous)


def test_the_c_engine_honours_the_cap_except_when_tests_ask_beyond_the_cpus(c_engine):
    c_engine.set_num_threads(4, beyond_cpus=True)
    c_engine.set_load_cap(1)
    assert c_engine.engine_info()["threads"] == 4      # the fuzz and tests run what they ask
    c_engine.set_num_threads(None)
    if os.cpu_count() >= 2 and len(os.sched_getaffinity(0)) >= 2:
        assert c_engine.engine_info()["threads"] == 1
    c_engine.set_load_cap(None)
    assert c_engine.engine_info()["threads"] == min(len(os.sched_getaffinity(0)), 64,
                                                    int(os.environ.get("OMP_NUM_THREADS") or 64))


class FixedMonitor:
    def __init__(self, cap):
        self.cap = cap

    def poll(self):
        return self.cap


def test_training_follows_the_monitor_and_can_be_told_not_to(c_engine, monkeypatch):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to see a cap")
    model = seed_model(filters=(4, 8), units=16)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    y = np.arange(8) % 10
    monkeypatch.setattr(kernels, "_load_monitor", FixedMonitor(1))
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert minicnn.backend_info()["threads"] == 1
    assert minicnn.backend_info()["threads_left_by_others"] == 1
    kernels.set_adaptive_threads(False)
    assert minicnn.backend_info()["threads"] >= 2
    model.predict(x, verbose=0)
    assert minicnn.backend_info()["threads"] >= 2       # off: the monitor is not consulted
    with pytest.raises(TypeError, match="True or False"):
        kernels.set_adaptive_threads("no")


def test_a_busy_neighbour_takes_a_thread_away(c_engine):
    """A real busy-loop process next to training: within a second the monitor sees at least
    half a CPU used by others and gives up a thread (a pure measurement; no timing asserted)."""
    cpus = len(os.sched_getaffinity(0))
    if cpus < 2:
        pytest.skip("needs two CPUs")
    model = seed_model(filters=(8, 16), units=32)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((64, 28, 28, 1), dtype=np.float32)
    y = np.arange(64) % 10
    kernels._load_monitor = load.LoadMonitor()
    neighbours = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(min(cpus - 1, 3))]
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and kernels._load_monitor.cap in (None, cpus):
            model.fit(x, y, batch_size=32, epochs=1, verbose=0)
        assert kernels._load_monitor.cap is not None and kernels._load_monitor.cap < cpus, \
            f"others used {kernels._load_monitor.others:.2f} CPUs"
        assert minicnn.backend_info()["threads"] <= kernels._load_monitor.cap
    finally:
        for neighbour in neighbours:
            neighbour.kill()
            neighbour.wait()


@pytest.mark.parametrize("filters", [(32, 64), (16, 32)], ids=["winograd-dkernel", "direct-dkernel"])
def test_a_capped_team_computes_the_same_bits(c_engine, filters):
    """The load only decides how many threads run, not how the kernel gradients are split and
    summed: training under a cap of one thread gives the uncapped run's weights bit for bit
    (conv2's kernel gradient on Winograd with 32 -> 64 channels, direct with 16 -> 32)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to see a cap")
    x = np.random.default_rng(0).random((64, 28, 28, 1), dtype=np.float32)
    y = np.arange(64) % 10
    kernels.set_adaptive_threads(False)

    def train(cap):
        c_engine.set_load_cap(cap)
        minicnn.set_seed(7)
        model = seed_model(filters=filters, units=32)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=32, epochs=2, verbose=0)
        threads = minicnn.backend_info()["threads"]
        return b"".join(w.tobytes() for w in model.get_weights()), threads

    uncapped, threads_uncapped = train(None)
    capped, threads_capped = train(1)
    assert threads_capped == 1 and threads_uncapped >= 2
    assert capped == uncapped
