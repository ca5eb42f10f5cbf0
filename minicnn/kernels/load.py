"""Threads on a shared machine: how many CPUs the other processes leave free.

Every parallel region of the C engine ends with its threads waiting for each other. On a quiet
machine that wait is short and the threads spin through it. When another process keeps one of
the two cores busy, the scheduler takes one of our threads away for whole time slices while the
other spins at the barrier: seed-model training fell to 19% of its quiet speed with one
busy-loop neighbour (1,772 vs 9,193 images/s), less than one thread alone gets next to the same
neighbour (4,173). Passive waiting (OMP_WAIT_POLICY=passive) avoids the spinning but costs
every region a wake-up: 43% of the quiet speed at batch 32.

So the trainer asks a LoadMonitor between steps, at most every `interval` seconds of wall time,
how much CPU time the rest of the machine used on the CPUs this process may run on (Linux's
/proc/stat, minus this process's own CPU time), and caps the engine's threads at the CPUs left.
A neighbour counts once it uses more than `threshold` of a CPU on average (0.6: two of our
threads next to one busy process leave it 0.67 of a CPU; background noise stays well below).
On a quiet machine the cap is the CPU count, so it costs nothing there; the measurement is one
read of /proc/stat a quarter of a second. The cap changes which threads run, never a result:
the C engine keeps the work split for the uncapped count (docs/architecture.md). Where /proc/stat cannot be read (not Linux), there is
no cap.
"""
import math
import os
import time

STAT_PATH = "/proc/stat"
INTERVAL_SECONDS = 0.25
THRESHOLD = 0.6


def _allowed_cpus():
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux: no per-process mask to read
        return None


def read_busy_seconds(cpus, stat_path=STAT_PATH, ticks_per_second=None):
    """CPU seconds spent busy (everything but idle and I/O wait; steal included: a hypervisor's
    other guests are neighbours too) since boot, summed over `cpus`; None if unreadable."""
    ticks = ticks_per_second or os.sysconf("SC_CLK_TCK")
    wanted = {f"cpu{cpu}" for cpu in cpus}
    busy = 0
    found = 0
    try:
        with open(stat_path) as stat:
            for line in stat:
                fields = line.split()
                if not fields or fields[0] not in wanted:
                    continue
                # user nice system idle iowait irq softirq steal (guest time is inside user)
                values = [int(v) for v in fields[1:9]]
                busy += sum(values) - values[3] - values[4]
                found += 1
    except (OSError, ValueError, IndexError):
        return None
    return busy / ticks if found == len(wanted) else None


class LoadMonitor:
    """Caps threads at the CPUs other processes leave free; poll() between steps."""

    def __init__(self, interval=INTERVAL_SECONDS, threshold=THRESHOLD, stat_path=STAT_PATH,
                 clock=time.monotonic, own_cpu_seconds=time.process_time):
        self.interval = interval
        self.threshold = threshold
        self.stat_path = stat_path
        self._clock = clock
        self._own_cpu_seconds = own_cpu_seconds
        self._cpus = _allowed_cpus()
        self._previous = None      # (wall, busy seconds of our CPUs, our own CPU seconds)
        self._next_poll = 0.0
        self.others = 0.0          # CPUs the rest of the machine used in the last interval
        self.cap = len(self._cpus) if self._cpus else None

    def poll(self):
        """The thread cap now (an int >= 1), or None where the load cannot be measured.

        Measures at most every `interval` seconds; in between it returns the last cap."""
        if self._cpus is None:
            return None
        now = self._clock()
        if now < self._next_poll:
            return self.cap
        self._next_poll = now + self.interval
        busy = read_busy_seconds(self._cpus, self.stat_path)
        if busy is None:
            self._cpus = None      # /proc/stat unreadable: stop trying, no cap
            self.cap = None
            return None
        sample = (now, busy, self._own_cpu_seconds())
        previous, self._previous = self._previous, sample
        if previous is None or sample[0] <= previous[0]:
            return self.cap
        wall = sample[0] - previous[0]
        others = ((sample[1] - previous[1]) - (sample[2] - previous[2])) / wall
        self.others = min(max(others, 0.0), float(len(self._cpus)))
        taken = math.floor(self.others + 1.0 - self.threshold)
        self.cap = max(1, len(self._cpus) - taken)
        return self.cap
