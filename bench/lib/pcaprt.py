#!/usr/bin/env python3
"""Round trips of a sync, from a tcpdump capture (classic pcap, Ethernet/SLL/raw IPv4).

usage: pcaprt.py FILE.pcap CLIENT_IP
prints: turns=N rt=N conns=N segs=N c2s=BYTES s2c=BYTES

Per TCP connection, payload-carrying segments are taken in capture order and every change of
direction (client->server then server->client, or back) counts as one "turn"; rt is
ceil(turns / 2), i.e. how many times the client had to hear from the server before going on,
the number that multiplies the link's RTT. Pure ACKs, SYN/FIN without data are not counted
(the TCP handshake adds one RTT to every tool alike). Summed over the connections in the file.
Caveat: a pipelined protocol (rsync's generator and sender stream at the same time) shows
many turns in a big transfer that are not latency-bound waits: read rt on the small
scenarios (nochange, edit, touch) as the latency cost; on full/bigedit it is an upper bound.
"""
import struct, sys


def main(path, client_ip):
    cip = bytes(int(x) for x in client_ip.split("."))
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        print("turns=0 rt=0 conns=0 segs=0 c2s=0 s2c=0")
        return
    magic = struct.unpack_from("<I", data, 0)[0]
    if magic in (0xA1B2C3D4, 0xA1B23C4D):
        e = "<"
    elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
        e = ">"
    else:
        sys.exit("pcaprt.py: not a classic pcap file (use tcpdump -w, not pcapng)")
    link = struct.unpack_from(e + "I", data, 20)[0]
    l2 = {1: 14, 113: 16, 276: 20, 101: 0, 12: 0}.get(link)
    if l2 is None:
        sys.exit(f"pcaprt.py: unsupported link type {link}")
    conns = {}  # key -> [last_dir, turns]
    segs = c2s = s2c = 0
    i = 24
    while i + 16 <= len(data):
        incl = struct.unpack_from(e + "I", data, i + 8)[0]
        pkt = data[i + 16 : i + 16 + incl]
        i += 16 + incl
        off = l2
        if link == 1:
            et = struct.unpack_from(">H", pkt, 12)[0]
            if et == 0x8100:
                et = struct.unpack_from(">H", pkt, 16)[0]
                off += 4
            if et != 0x0800:
                continue
        if len(pkt) < off + 20 or pkt[off] >> 4 != 4 or pkt[off + 9] != 6:
            continue
        ihl = (pkt[off] & 15) * 4
        tot = struct.unpack_from(">H", pkt, off + 2)[0]
        src, dst = pkt[off + 12 : off + 16], pkt[off + 16 : off + 20]
        t = off + ihl
        if len(pkt) < t + 13:
            continue
        sport, dport = struct.unpack_from(">HH", pkt, t)
        thl = (pkt[t + 12] >> 4) * 4
        payload = tot - ihl - thl
        if payload <= 0:
            continue
        d = 0 if src == cip else 1
        key = (src, sport, dst, dport) if d == 0 else (dst, dport, src, sport)
        st = conns.setdefault(key, [None, 0])
        if st[0] is not None and st[0] != d:
            st[1] += 1
        st[0] = d
        segs += 1
        if d == 0:
            c2s += payload
        else:
            s2c += payload
    turns = sum(v[1] for v in conns.values())
    print(f"turns={turns} rt={(turns + 1) // 2} conns={len(conns)} segs={segs} c2s={c2s} s2c={s2c}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
