#!/usr/bin/env python3
"""Peak RSS of process trees, from the exit records taskstats.py wrote.

usage: rssattr.py EXITS_FILE FROM_BYTE TO_BYTE ROOT_PID [ROOT_PID...] [--exclude-roots]
prints: sum_kb=N max_kb=N cpu_ms=N procs=comm:pid:kB|...

Takes the records between two byte offsets of the file (the window of one sync), keeps the
processes that descend from a ROOT_PID (by the parent pid at exit, to a fixed point) and adds
up their peak RSS, one figure per process (threads share the mm: max over a tgid), and their
CPU time (user+system, every thread; roots included, GNU time's own is negligible). The roots
themselves count unless --exclude-roots (the sshd listener and GNU time are long-lived or
measuring overhead, not part of what the tool needs).
"""
import sys


def main(a):
    excl = "--exclude-roots" in a
    a = [x for x in a if x != "--exclude-roots"]
    path, lo, hi, roots = a[0], int(a[1]), int(a[2]), {int(x) for x in a[3:]}
    with open(path, "rb") as f:
        f.seek(lo)
        chunk = f.read(max(0, hi - lo)).decode(errors="replace")
    recs = {}
    for line in chunk.splitlines():
        p = line.split(None, 5)
        if len(p) < 6 or line.startswith("#"):
            continue
        pid, tgid, ppid, hw, cpu, comm = int(p[0]), int(p[1]), int(p[2]), int(p[3]), int(p[4]), p[5]
        r = recs.setdefault(tgid, [ppid, 0, comm, 0])
        if pid == tgid:
            r[0], r[2] = ppid, comm
        r[1] = max(r[1], hw)
        r[3] += cpu
    tree = set(roots)
    grew = True
    while grew:
        grew = False
        for tgid, (ppid, hw, comm, _) in recs.items():
            if tgid not in tree and ppid in tree:
                tree.add(tgid)
                grew = True
    cpu = sum(c for tgid, (_, _, _, c) in recs.items() if tgid in tree) // 1000
    sel = [(tgid, hw, comm) for tgid, (ppid, hw, comm, _) in recs.items() if tgid in tree and not (excl and tgid in roots)]
    sel.sort()
    s = sum(hw for _, hw, _ in sel)
    m = max((hw for _, hw, _ in sel), default=0)
    procs = "|".join(f"{c.replace(',', '_').replace(' ', '_')}:{t}:{hw}" for t, hw, c in sel)
    print(f"sum_kb={s} max_kb={m} cpu_ms={cpu} procs={procs or '-'}")


if __name__ == "__main__":
    main(sys.argv[1:])
