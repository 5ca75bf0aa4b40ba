"""proctree.py - CPU time and memory of a process and all its descendants,
from /proc, for the delivery benchmarks (bench_delivery.sh).

usage: proctree.py cpu PID...        print the CPU seconds (user + system) of
                                     the trees rooted at the PIDs
       proctree.py peak OUT PID...   sample the trees every 100 ms until
                                     SIGTERM, then write the peaks to OUT

cpu: for every live process in the trees, utime + stime + cutime + cstime
from /proc/PID/stat. cutime and cstime hold the CPU time of children the
process has waited for, so a Postfix daemon that ran and exited is counted
in its master's figures. Two readings around a run give the CPU the run
cost, whether the work was done by processes still alive or by ones that
came and went between the readings. (A process that exits, with its parent
not yet having reaped it, at the very moment of a reading may be missed;
readings are taken when the MTA is idle.)

peak: every 100 ms the sum over the trees of resident memory (VmRSS, which
counts shared library pages once per process) and of the proportional set
size (Pss from /proc/PID/smaps_rollup, which splits shared pages among the
processes that share them); OUT gets "PEAK_RSS_KIB PEAK_PSS_KIB SAMPLES".
"""

import os
import signal
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")


def children(pid):
    out = []
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def tree(roots):
    seen, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo += children(pid)
    return seen


def cpu_of(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            stat = f.read()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): utime is field 14, cstime field 17.
    return sum(int(x) for x in fields[11:15])


def mem_of(pid):
    rss = pss = 0
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
    except OSError:
        pass
    return rss, pss


def main(argv):
    if len(argv) >= 3 and argv[1] == "cpu":
        ticks = sum(cpu_of(p) for p in tree(int(x) for x in argv[2:]))
        print("%.2f" % (ticks / TICK))
        return 0
    if len(argv) >= 4 and argv[1] == "peak":
        out, roots = argv[2], [int(x) for x in argv[3:]]
        stop = []
        signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
        peak_rss = peak_pss = samples = 0
        while not stop:
            rss = pss = 0
            for p in tree(roots):
                r, s = mem_of(p)
                rss += r
                pss += s
            peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
            samples += 1
            time.sleep(0.1)
        with open(out, "w") as f:
            f.write("%d %d %d\n" % (peak_rss, peak_pss, samples))
        return 0
    sys.stderr.write(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
