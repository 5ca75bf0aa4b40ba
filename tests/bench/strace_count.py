#!/usr/bin/python3
"""strace_count.py - system calls per message from strace -c summaries.

usage: strace_count.py MESSAGES LABEL=FILE [LABEL=FILE ...]

Each FILE is the summary `strace -f -c -o FILE -p PID` wrote when it was
detached from a process that handled MESSAGES messages meanwhile. Prints a
Markdown table: one row per group of system calls, one column per LABEL,
each cell the calls per message; then every single call that came to at
least 0.05 per message in some column.
"""
import sys

GROUPS = [
    ("write, writev, sendmsg, sendto, sendmmsg",
     ("write", "writev", "sendmsg", "sendto", "sendmmsg", "pwrite64", "pwritev")),
    ("read, readv, recvfrom, recvmsg", ("read", "readv", "recvfrom", "recvmsg", "pread64")),
    ("epoll_ctl", ("epoll_ctl",)),
    ("epoll_wait, epoll_pwait", ("epoll_wait", "epoll_pwait", "epoll_pwait2")),
    ("getpid", ("getpid",)),
    ("futex", ("futex",)),
    ("fdatasync, fsync", ("fdatasync", "fsync")),
]


def parse(path):
    calls = {}
    for line in open(path):
        f = line.split()
        # "% time seconds usecs/call calls [errors] syscall"
        if len(f) < 5 or not f[3].isdigit() or f[-1] == "total":
            continue
        try:
            float(f[0])
        except ValueError:
            continue
        calls[f[-1]] = calls.get(f[-1], 0) + int(f[3])
    return calls


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    n = int(sys.argv[1])
    cols = []
    for arg in sys.argv[2:]:
        label, _, path = arg.partition("=")
        cols.append((label, parse(path)))
    print("| per message | " + " | ".join(label for label, _ in cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for name, members in GROUPS:
        cells = ["%.2f" % (sum(c.get(m, 0) for m in members) / n) for _, c in cols]
        print("| %s | %s |" % (name, " | ".join(cells)))
    cells = ["%.2f" % (sum(c.values()) / n) for _, c in cols]
    print("| all system calls | %s |" % " | ".join(cells))
    print()
    names = sorted({k for _, c in cols for k, v in c.items() if v / n >= 0.05},
                   key=lambda k: -max(c.get(k, 0) for _, c in cols))
    print("| call | " + " | ".join(label for label, _ in cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for k in names:
        print("| %s | %s |" % (k, " | ".join("%.2f" % (c.get(k, 0) / n) for _, c in cols)))


if __name__ == "__main__":
    main()
