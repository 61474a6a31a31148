#!/usr/bin/env python3
"""Edits a UCI file on the primary the way `uci commit` does (temporary file renamed over
it) and measures when the backup has it.

usage: edits.py latency FILE STAGED --count N --min S --max S --csv OUT [--status JSON]
           N edits at random intervals (uniform MIN..MAX seconds); after each, polls STAGED
           (the backup's copy) every 2 ms until it holds the edit. One CSV row per edit:
           i, latency_s (rename -> visible on the backup), daemon_latency_ms (what the
           daemon's status.json reports for the sync that carried it, if given).
       edits.py burst FILE STAGED --count N --seconds S
           N edits spread evenly over S seconds, then waits until STAGED holds the last one.
           Prints the wall time the edits took.
"""
import argparse, json, os, random, sys, time

MARK = "\toption ha_sync_bench '"


def edit(path, base, tag):
    """Appends (replaces) the bench option with `tag`, by rename, as uci commit does."""
    d, name = os.path.split(path)
    tmp = os.path.join(d, f".{name}.uci-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(base + MARK + tag + "'\n")
    os.rename(tmp, path)


def wait_for(staged, tag, timeout=60.0):
    want = MARK + tag + "'"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with open(staged) as f:
                if want in f.read():
                    return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    return None


def base_of(path):
    with open(path) as f:
        text = f.read()
    i = text.find(MARK)
    return text if i < 0 else text[:i]


def daemon_latency(status_path):
    try:
        with open(status_path) as f:
            s = json.load(f)
        return (s.get("last_sync") or {}).get("latency_ms")
    except (OSError, ValueError):
        return None


def latency(a):
    rng = random.Random(5)
    base = base_of(a.file)
    nonce = f"{os.getpid()}-{int(time.time())}"
    out = open(a.csv, "w")
    out.write("i,latency_s,daemon_latency_ms\n")
    missed = 0
    for i in range(a.count):
        time.sleep(rng.uniform(a.min, a.max))
        tag = f"{nonce}-{i}"
        edit(a.file, base, tag)
        t0 = time.monotonic()
        t1 = wait_for(a.staged, tag)
        if t1 is None:
            missed += 1
            out.write(f"{i},,\n")
            continue
        # status.json is written right after the sync is recorded: give it a moment.
        time.sleep(0.02)
        dl = daemon_latency(a.status) if a.status else None
        out.write(f"{i},{t1 - t0:.4f},{'' if dl is None else f'{dl:.1f}'}\n")
        out.flush()
    out.close()
    if missed:
        print(f"edits.py: {missed} edits never reached the backup", file=sys.stderr)
        return 1
    return 0


def burst(a):
    base = base_of(a.file)
    nonce = f"burst-{os.getpid()}-{int(time.time())}"
    start = time.monotonic()
    step = a.seconds / a.count
    for i in range(a.count):
        edit(a.file, base, f"{nonce}-{i}")
        delay = start + (i + 1) * step - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    took = time.monotonic() - start
    t1 = wait_for(a.staged, f"{nonce}-{a.count - 1}")
    if t1 is None:
        print("edits.py: the last edit of the burst never reached the backup", file=sys.stderr)
        return 1
    print(f"edits={a.count} took_s={took:.3f} last_visible_after_s={t1 - start:.3f}")
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["latency", "burst"])
    p.add_argument("file")
    p.add_argument("staged")
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--min", type=float, default=0.25)
    p.add_argument("--max", type=float, default=2.0)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--csv", default="latency.csv")
    p.add_argument("--status")
    a = p.parse_args()
    return latency(a) if a.mode == "latency" else burst(a)


if __name__ == "__main__":
    sys.exit(main())
