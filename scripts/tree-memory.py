"""Runs a command and samples the memory of its whole process tree.

    python3 scripts/tree-memory.py OUT.json -- CMD [ARGS...]

Every 50 ms it finds the command's descendants (through /proc's parent
links) and adds up their resident memory two ways: RSS (what `ps` shows;
shared memory is counted once per process that maps it) and PSS (shared
pages divided among the processes that map them: the tree's real
footprint). The peaks, the wall time and the exit status go to OUT.json.
"""

import json
import os
import subprocess
import sys
import time


def children_map():
    kids = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after it.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(root):
    kids, seen, todo = children_map(), [], [root]
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo.extend(kids.get(pid, []))
    return seen


def memory(pid):
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def main():
    out, cmd = sys.argv[1], sys.argv[sys.argv.index("--") + 1 :]
    started = time.monotonic()
    child = subprocess.Popen(cmd)
    peak_rss = peak_pss = peak_procs = 0
    while child.poll() is None:
        pids = tree(child.pid)
        totals = [memory(p) for p in pids]
        peak_rss = max(peak_rss, sum(r for r, _ in totals))
        peak_pss = max(peak_pss, sum(p for _, p in totals))
        peak_procs = max(peak_procs, len(pids))
        time.sleep(0.05)
    wall = time.monotonic() - started
    with open(out, "w") as f:
        json.dump(
            {
                "wall_seconds": wall,
                "peak_rss_bytes": peak_rss,
                "peak_pss_bytes": peak_pss,
                "peak_processes": peak_procs,
                "exit": child.returncode,
            },
            f,
        )
    sys.exit(child.returncode)


main()
