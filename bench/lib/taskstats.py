#!/usr/bin/env python3
"""Exit-time peak RSS of every process, from the kernel's taskstats (genetlink "TASKSTATS").

usage: taskstats.py OUTFILE        (runs until SIGTERM/SIGINT; needs root, CONFIG_TASK_XACCT)

Registers for the exit records of all CPUs and appends one line per exiting task:
    pid tgid ppid hiwater_rss_kB cpu_us comm      (cpu_us: user+system time of that task)
hiwater_rss is the mm's high-water mark (VmHWM) taken by the kernel in do_exit() before the
mm is dropped, so it is exact, costs nothing while the measured processes run, and catches
processes that live only a few milliseconds (sshd's pre-auth child, for instance), which a
/proc poller misses. Threads share the mm: group by tgid. Prints "ready" on stdout once
registered. Lines are flushed as they arrive so a reader can cut the file at any point.
"""
import os, signal, socket, struct, sys

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY, CTRL_ATTR_FAMILY_ID, CTRL_ATTR_FAMILY_NAME = 3, 1, 2
TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_ATTR_REGISTER_CPUMASK = 3
T_PID, T_TGID, T_STATS, T_AGGR_PID, T_AGGR_TGID = 1, 2, 3, 4, 5
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR, NLMSG_DONE = 2, 3


def attr(t, data):
    n = 4 + len(data)
    return struct.pack("=HH", n, t) + data + b"\0" * ((4 - n % 4) % 4)


def attrs(buf):
    i = 0
    while i + 4 <= len(buf):
        n, t = struct.unpack_from("=HH", buf, i)
        if n < 4:
            break
        yield t & 0x3FFF, buf[i + 4 : i + n]
        i += (n + 3) & ~3


def msg(sock, typ, cmd, payload, seq):
    body = struct.pack("=BBH", cmd, 1, 0) + payload
    sock.send(struct.pack("=IHHII", 16 + len(body), typ, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body)


def messages(data):
    i = 0
    while i + 16 <= len(data):
        n, typ, flags, seq, pid = struct.unpack_from("=IHHII", data, i)
        if n < 16:
            break
        yield typ, data[i + 16 : i + n]
        i += (n + 3) & ~3


def family_id(sock):
    msg(sock, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, attr(CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0"), 1)
    while True:
        for typ, body in messages(sock.recv(65536)):
            if typ == NLMSG_ERROR:
                err = struct.unpack_from("=i", body)[0]
                if err:
                    sys.exit(f"taskstats.py: no TASKSTATS genetlink family ({os.strerror(-err)})")
                continue
            for t, v in attrs(body[4:]):
                if t == CTRL_ATTR_FAMILY_ID:
                    return struct.unpack("=H", v[:2])[0]


def parse_stats(v):
    # struct taskstats (linux/taskstats.h); offsets stable since version 1, ac_tgid from 12.
    version = struct.unpack_from("=H", v, 0)[0]
    comm = v[80:112].split(b"\0", 1)[0].decode(errors="replace") or "?"
    pid, ppid = struct.unpack_from("=II", v, 128)
    utime, stime = struct.unpack_from("=QQ", v, 152)  # ac_utime, ac_stime in microseconds
    hiwater = struct.unpack_from("=Q", v, 200)[0]
    tgid = struct.unpack_from("=I", v, 368)[0] if version >= 12 and len(v) >= 372 else 0
    return pid, tgid or pid, ppid, hiwater, utime + stime, comm


def main():
    out = open(sys.argv[1], "a", buffering=1)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((0, 0))
    fam = family_id(sock)
    ncpu = os.cpu_count() or 1
    msg(sock, fam, TASKSTATS_CMD_GET, attr(TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, f"0-{ncpu - 1}\0".encode()), 2)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    sock.settimeout(0.2)
    print("ready", flush=True)
    while not stop:
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            continue
        except InterruptedError:
            continue
        except OSError as e:  # ENOBUFS: records were lost; say so in the file
            out.write(f"# lost records: {e}\n")
            continue
        for typ, body in messages(data):
            if typ != fam:
                if typ == NLMSG_ERROR and struct.unpack_from("=i", body)[0]:
                    sys.exit(f"taskstats.py: register failed ({os.strerror(-struct.unpack_from('=i', body)[0])})")
                continue
            for t, v in attrs(body[4:]):
                if t not in (T_AGGR_PID,):
                    continue  # AGGR_TGID repeats the group's sums; the per-task record has hiwater
                for t2, v2 in attrs(v):
                    if t2 == T_STATS:
                        pid, tgid, ppid, hw, cpu, comm = parse_stats(v2)
                        out.write(f"{pid} {tgid} {ppid} {hw} {cpu} {comm}\n")


if __name__ == "__main__":
    main()
