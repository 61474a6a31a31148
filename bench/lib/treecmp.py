#!/usr/bin/env python3
"""Compare a synced tree with its source: content (diff -r) and metadata (find listing).

usage: treecmp.py SRC DST DETAILS_PREFIX
prints one word: equal | diff:N | meta:N | dirtime:N
  diff:N    N lines of `diff -rq --no-dereference SRC DST` (missing/extra/different content)
  meta:N    N paths whose listing `%P %m %U %G %T@ %s %l` differs (mode, owner, mtime, size,
            symlink target; a directory's size is the filesystem's, not compared) beyond the
            case below
  dirtime:N the only differences are directory mtimes off by less than one second inside the
            same second (rsync 3.x compares directory times in whole seconds, so a directory
            changed and synced within the same second keeps the receiver's own mtime)
Details go to DETAILS_PREFIX.diff / .meta when not equal.
"""
import os, subprocess, sys

FMT = "%P\t%m %U %G %T@ %s %l %y\n"


def listing(root):
    out = subprocess.run(["find", ".", "-printf", FMT], cwd=root, capture_output=True, text=True).stdout
    d = {}
    for line in out.splitlines():
        p, _, rest = line.partition("\t")
        f = rest.split(" ")
        # A directory's size is the filesystem's (ext4 never shrinks a directory that once
        # held more entries, e.g. a batch of temp files): not something a sync carries.
        if f[-1] == "d":
            f[4] = "-"
        d[p] = " ".join(f[:-1])
    return d


def main(src, dst, prefix):
    if not os.path.isdir(dst):
        print("diff:missing")
        return
    r = subprocess.run(["diff", "-rq", "--no-dereference", src, dst], capture_output=True, text=True)
    dlines = [l for l in (r.stdout + r.stderr).splitlines() if l.strip()]
    a, b = listing(src), listing(dst)
    meta, dirtime = [], []
    for p in sorted(set(a) | set(b)):
        x, y = a.get(p), b.get(p)
        if x == y:
            continue
        line = f"{p or '.'}: src[{x}] dst[{y}]"
        if x and y:
            xs, ys = x.split(" "), y.split(" ")
            only_time = xs[:3] == ys[:3] and xs[4:] == ys[4:]
            if only_time and os.path.isdir(os.path.join(src, p)) and xs[3].split(".")[0] == ys[3].split(".")[0]:
                dirtime.append(line)
                continue
        meta.append(line)
    if dlines:
        open(prefix + ".diff", "w").write("\n".join(dlines) + "\n")
    if meta or dirtime:
        open(prefix + ".meta", "w").write("\n".join(meta + dirtime) + "\n")
    if dlines:
        print(f"diff:{len(dlines)}")
    elif meta:
        print(f"meta:{len(meta)}")
    elif dirtime:
        print(f"dirtime:{len(dirtime)}")
    else:
        print("equal")


if __name__ == "__main__":
    main(*sys.argv[1:4])
