#!/bin/bash
# Change-to-live latency of the ha-sync daemon between two network namespaces (issue 5).
# See "latency.sh" in bench/README.md. Run as root:
#   bench/latency.sh [--edits N] [--burst N] [--now-runs N] [--idle SECONDS] [--scale N]
#                    [--bin PATH] [--out DIR] [--force] [--keep] [--live]
# --live: the backup restores each commit to its live tree (where the host has no hotplug-call,
# as on a Debian host, the NOTIFY_SYNC scripts step is skipped) and the live copy is polled.
# Writes OUT/latency.md (the report) and OUT/latency.csv (one row per edit).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
EDITS=100 BURST=500 NOW_RUNS=10 IDLE=65 SCALE=1
BIN="" OUT="$HERE/results" FORCE=0 KEEP=0 LIVE=0
# Own names: bench/run.sh uses ha-p/ha-b and vp/vb, so both can exist on one machine.
NS_P=lat-p NS_B=lat-b V_P=lvp V_B=lvb IP_P=198.18.0.1 IP_B=198.18.0.2
SSH_PORT=65022 HS_PORT=65023

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "latency.sh: $*" >&2; exit 2; }
log() { echo "[$(date +%T)] $*" >&2; }
posint() { [[ "${2:-}" =~ ^[0-9]+$ ]] || die "$1 needs a number"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --edits) posint "$1" "${2:-}"; EDITS=$2; shift 2 ;;
    --burst) posint "$1" "${2:-}"; BURST=$2; shift 2 ;;
    --now-runs) posint "$1" "${2:-}"; NOW_RUNS=$2; shift 2 ;;
    --idle) posint "$1" "${2:-}"; IDLE=$2; shift 2 ;;
    --scale) posint "$1" "${2:-}"; SCALE=$2; shift 2 ;;
    --bin) BIN=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --force) FORCE=1; shift ;;
    --keep) KEEP=1; shift ;;
    --live) LIVE=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "latency.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || die "must run as root (network namespaces, tmpfs, sshd)"
for c in ip rsync /usr/sbin/sshd ssh ssh-keygen python3 bc; do
  command -v "$c" >/dev/null 2>&1 || die "missing $c (apt-get install iproute2 rsync openssh-server openssh-client python3 bc)"
done
PY=$(python3 -c 'import sys; print(sys.executable)')
if [ -z "$BIN" ]; then
  BIN="$REPO/target/release/ha-sync"
  [ -x "$BIN" ] || (cd "$REPO" && cargo build --release -p sync-cli) >&2 || die "cargo build --release -p sync-cli failed"
fi
[ -x "$BIN" ] || die "no ha-sync binary at $BIN"
HELP=$("$BIN" --help 2>&1)   # captured first: grep -q closing the pipe would fail it
grep -Eq '^  watch( |$)' <<<"$HELP" || die "$BIN has no watch command"

# ---------------------------------------------------------------- cleanup
W="" MOUNTED=0 CREATED_NS=0 MADE_RUN_SSHD=0 PIDS=()
cleanup() {
  local rc=$? p
  trap - EXIT INT TERM HUP
  set +e
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  if [ $CREATED_NS = 1 ]; then
    for ns in $NS_P $NS_B; do
      for p in $(ip netns pids $ns 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
      ip netns del $ns 2>/dev/null
    done
  fi
  if [ -n "$W" ] && [ -d "$W/logs" ]; then rm -rf "$OUT/latency-logs"; cp -r "$W/logs" "$OUT/latency-logs" 2>/dev/null; fi
  if [ $MOUNTED = 1 ]; then
    if [ $KEEP = 1 ]; then echo "latency.sh: --keep: left mounted at $W" >&2
    else umount "$W" 2>/dev/null || { sleep 0.5; umount "$W" 2>/dev/null; } || umount -l "$W"; rmdir "$W" 2>/dev/null; fi
  fi
  [ $MADE_RUN_SSHD = 1 ] && rmdir /run/sshd 2>/dev/null
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# ---------------------------------------------------------------- namespaces and tmpfs
for ns in $NS_P $NS_B; do
  if ip netns list 2>/dev/null | grep -qw "^$ns"; then
    [ $FORCE = 1 ] || die "namespace $ns exists (another run?): 'ip netns del $ns' or --force"
    [ -z "$(ip netns pids $ns 2>/dev/null)" ] || die "namespace $ns has processes: not touching it"
    ip netns del $ns || die "cannot delete $ns"
  fi
done
ip netns add $NS_P || die "cannot create network namespaces"
CREATED_NS=1
ip netns add $NS_B || die "ip netns add $NS_B"
ip link add $V_P type veth peer name $V_B || die "veth"
ip link set $V_P netns $NS_P && ip link set $V_B netns $NS_B || die "veth into namespaces"
ip -n $NS_P addr add $IP_P/24 dev $V_P && ip -n $NS_B addr add $IP_B/24 dev $V_B || die "addresses"
for ns in $NS_P $NS_B; do ip -n $ns link set lo up; done
ip netns exec $NS_P sysctl -qw net.ipv6.conf.$V_P.disable_ipv6=1
ip netns exec $NS_B sysctl -qw net.ipv6.conf.$V_B.disable_ipv6=1
ip -n $NS_P link set $V_P up && ip -n $NS_B link set $V_B up || die "link up"
for _ in $(seq 100); do ip -n $NS_P link show $V_P | grep -q LOWER_UP && break; sleep 0.02; done

# Mounted in the root mount namespace before any `ip netns exec` (see README: each exec gets
# its own mount namespace, a slave copy of ours).
W=$(mktemp -d /tmp/ha-lat.XXXXXX) || die mktemp
mount -t tmpfs -o size=2g,mode=0755 ha-lat "$W" || die "cannot mount a tmpfs"
MOUNTED=1
mkdir -p "$W"/{bin,logs,keys,ssh,A,B,rs/src,rs/dst} "$OUT"
cp "$BIN" "$W/bin/ha-sync"; HS="$W/bin/ha-sync"

wait_listen() { # NS PORT PID
  for _ in $(seq 200); do
    ip netns exec "$1" ss -Hltn "sport = :$2" 2>/dev/null | grep -q . && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.02
  done
  return 1
}
wire() { ip netns exec $NS_P cat /sys/class/net/$V_P/statistics/tx_bytes /sys/class/net/$V_P/statistics/rx_bytes | paste -sd+ | bc; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) {print ""} else if (NR%2) {print a[(NR+1)/2]} else {print (a[NR/2]+a[NR/2+1])/2}}'; }
status_field() { "$PY" -c 'import json,sys; s=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {"s": s}))' "$W/A/var/run/ha-sync/status.json" "$1"; }
wait_idle() { # up to 60 s for the daemon to have nothing pending after a good sync
  for _ in $(seq 600); do
    [ "$(status_field 's["pending_changes"] == 0 and (s.get("last_sync") or {}).get("ok") is True')" = True ] && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- the trees
log "generating the tree (scale $SCALE)"
"$PY" "$HERE/mkdata.py" "$W/A" --scale "$SCALE" >/dev/null || die "mkdata.py failed"
cp -a "$W/A/etc" "$W/rs/src/etc"
# The primary: HA role, VRRP master as the hooks record it, and /etc on the restore list.
printf "config vrrp_instance 'primary'\n\toption name 'master'\n\nconfig peer 'ha_peer'\n\tlist sync_list '/etc'\n" > "$W/A/etc/config/keepalived"
: > "$W/A/etc/sysupgrade.conf"
mkdir -p "$W/A/var/run/ha-sync" && echo master > "$W/A/var/run/ha-sync/vrrp_state"
TARGET=etc/config/cfg7
STAGED="$W/B/usr/share/keepalived/rsync/$TARGET"
[ $LIVE = 1 ] && STAGED="$W/B/$TARGET"

# ---------------------------------------------------------------- sshd (rsync's reference)
if [ ! -d /run/sshd ]; then mkdir -p /run/sshd && chmod 0755 /run/sshd && MADE_RUN_SSHD=1; fi
ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/host" && ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/id" || die ssh-keygen
cp "$W/ssh/id.pub" "$W/ssh/authorized_keys"
cat > "$W/ssh/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress $IP_B
HostKey $W/ssh/host
AuthorizedKeysFile $W/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PidFile $W/ssh/sshd.pid
LogLevel ERROR
EOF
# As bench/run.sh: root's login shell replaced by /bin/sh for sshd only (a router runs ash).
awk -F: -v OFS=: '$1 == "root" { $7 = "/bin/sh" } { print }' /etc/passwd > "$W/ssh/passwd"
ip netns exec $NS_B /bin/sh -c 'mount --bind "$1" /etc/passwd && exec /usr/sbin/sshd -D -e -f "$2"' sh \
  "$W/ssh/passwd" "$W/ssh/sshd_config" 2>>"$W/logs/sshd.log" &
PIDS+=($!)
wait_listen $NS_B $SSH_PORT "${PIDS[-1]}" || die "sshd did not start: $(tail -3 "$W/logs/sshd.log")"
SSH="ssh -p $SSH_PORT -i $W/ssh/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes"

# ---------------------------------------------------------------- ha-sync agent and daemon
"$HS" keygen --out "$W/keys/client" >/dev/null && "$HS" keygen --out "$W/keys/host" >/dev/null || die "ha-sync keygen"
cp "$W/keys/client.pub" "$W/keys/authorized_keys"
read -r kt kb _ < "$W/keys/host.pub"
echo "[$IP_B]:$HS_PORT $kt $kb" > "$W/keys/known_hosts"
# Staging only: the restore to live runs hotplug-call and init scripts, which a Debian host
# does not have; the latency measured is primary change -> backup's committed staging copy,
# which the restore follows in the same session.
ip netns exec $NS_B "$HS" serve --root "$W/B" --listen $IP_B:$HS_PORT --host-key "$W/keys/host" \
  --authorized-keys "$W/keys/authorized_keys" $([ $LIVE = 1 ] || echo --staging-only) >>"$W/logs/serve.log" 2>&1 &
SERVE_PID=$!; PIDS+=($SERVE_PID)
wait_listen $NS_B $HS_PORT $SERVE_PID || die "ha-sync serve did not start: $(tail -3 "$W/logs/serve.log")"
HS_ARGS=(--root "$W/A" --peer $IP_B:$HS_PORT --key "$W/keys/client" --known-hosts "$W/keys/known_hosts")
ip netns exec $NS_P env HA_SYNC_LOG=info "$HS" watch "${HS_ARGS[@]}" --interval 60 >>"$W/logs/watch.log" 2>&1 &
WATCH_PID=$!; PIDS+=($WATCH_PID)
log "daemon pid $WATCH_PID: first (full) sync"
for _ in $(seq 600); do [ -f "$W/A/var/run/ha-sync/status.json" ] && break; sleep 0.1; done
wait_idle || die "the daemon's first sync did not finish: $(tail -5 "$W/logs/watch.log")"
FIRST=$(status_field '"%.0f ms, %d files, %d bytes" % (s["last_sync"]["duration_ms"], s["last_sync"]["files"], s["last_sync"]["bytes"])')
log "first sync: $FIRST"

# ---------------------------------------------------------------- 1. latency of single edits
log "$EDITS edits of /$TARGET at random intervals (0.25-2 s)"
CSV="$W/latency.csv"
"$PY" "$HERE/lib/edits.py" latency "$W/A/$TARGET" "$STAGED" --count "$EDITS" --min 0.25 --max 2.0 \
  --csv "$CSV" --status "$W/A/var/run/ha-sync/status.json" || die "latency edits failed"
LAT=$(cut -d, -f2 "$CSV" | tail -n +2 | grep . | "$PY" -c '
import sys
v = sorted(float(x) for x in sys.stdin)
q = lambda p: v[min(len(v) - 1, int(round(p * (len(v) - 1))))]
print(f"{len(v)} {q(0.5):.3f} {q(0.9):.3f} {q(0.99):.3f} {v[0]:.3f} {v[-1]:.3f}")')
read -r LAT_N P50 P90 P99 LMIN LMAX <<<"$LAT"
DLAT=$(cut -d, -f3 "$CSV" | tail -n +2 | grep . | median)
log "latency: p50=${P50}s p99=${P99}s (n=$LAT_N)"

# ---------------------------------------------------------------- 2. a burst
wait_idle || die "not idle before the burst"
S0=$(status_field 's["syncs"]["total"]')
BURST_OUT=$("$PY" "$HERE/lib/edits.py" burst "$W/A/$TARGET" "$STAGED" --count "$BURST" --seconds 1) || die "burst failed"
sleep 3   # a late sync of the burst would land here
wait_idle || die "not idle after the burst"
S1=$(status_field 's["syncs"]["total"]')
BURST_SYNCS=$((S1 - S0))
log "burst: $BURST_OUT -> $BURST_SYNCS syncs"

# ---------------------------------------------------------------- 3. warm `now`, nothing changed
# Timed inside the namespace (one `ip netns exec` for the whole loop, as for rsync below).
measure_loop() { # N CMD...: prints "wall_s wire_bytes" per run
  local n=$1; shift
  ip netns exec $NS_P bash -c '
    n=$1; shift; dev=$1; shift
    w() { echo $(( $(cat /sys/class/net/$dev/statistics/tx_bytes) + $(cat /sys/class/net/$dev/statistics/rx_bytes) )); }
    for i in $(seq "$n"); do
      b0=$(w); t0=$EPOCHREALTIME
      "$@" >/dev/null 2>>"'"$W"'/logs/measure.err" || echo "run failed: $*" >&2
      t1=$EPOCHREALTIME
      sleep 0.2   # the last ACKs
      b1=$(w)
      echo "$(echo "${t1/,/.} - ${t0/,/.}" | bc -l) $((b1 - b0))"
    done' sh "$n" "$V_P" "$@"
}
wait_idle || die "not idle before now"
log "warm ha-sync now (through the daemon), nothing changed: $NOW_RUNS runs"
NOW=$(measure_loop "$NOW_RUNS" "$HS" now "${HS_ARGS[@]}")
NOW_WALL=$(awk '{print $1}' <<<"$NOW" | median); NOW_WIRE=$(awk '{print $2}' <<<"$NOW" | median)
log "ha-sync now (standalone, new connection), nothing changed: $NOW_RUNS runs"
ALONE=$(measure_loop "$NOW_RUNS" "$HS" now --no-daemon "${HS_ARGS[@]}")
ALONE_WALL=$(awk '{print $1}' <<<"$ALONE" | median); ALONE_WIRE=$(awk '{print $2}' <<<"$ALONE" | median)
log "rsync -a --delete over OpenSSH, nothing changed: first a full copy, then $NOW_RUNS runs"
RSYNC=(rsync -a --delete -e "$SSH" "$W/rs/src/etc/" "root@$IP_B:$W/rs/dst/etc/")
ip netns exec $NS_P "${RSYNC[@]}" >/dev/null 2>>"$W/logs/rsync.err" || die "rsync full copy failed: $(tail -2 "$W/logs/rsync.err")"
RS=$(measure_loop "$NOW_RUNS" "${RSYNC[@]}")
RS_WALL=$(awk '{print $1}' <<<"$RS" | median); RS_WIRE=$(awk '{print $2}' <<<"$RS" | median)
printf "%s\n" "$NOW" > "$W/logs/now-daemon.txt"; printf "%s\n" "$ALONE" > "$W/logs/now-standalone.txt"; printf "%s\n" "$RS" > "$W/logs/rsync-nochange.txt"

# ---------------------------------------------------------------- 4. idle daemon
wait_idle || die "not idle before the idle window"
sleep 1
log "idle daemon: ${IDLE} s with no change"
CT0=$(cpu_ticks $WATCH_PID)
S0=$(status_field 's["syncs"]["total"]')
sleep "$IDLE"
CT1=$(cpu_ticks $WATCH_PID)
S1=$(status_field 's["syncs"]["total"]')
TCK=$(getconf CLK_TCK)
IDLE_CPU_MS=$(( (CT1 - CT0) * 1000 / TCK ))
IDLE_SYNCS=$((S1 - S0))
kb() { awk -v k="$1:" '$1 == k {print $2}' /proc/$WATCH_PID/status; }
RSS_KB=$(kb VmRSS); HWM_KB=$(kb VmHWM); ANON_KB=$(kb RssAnon); FILE_KB=$(( $(kb RssFile) + $(kb RssShmem) ))
THREADS=$(ls /proc/$WATCH_PID/task | wc -l)
# Where the RSS is, per mapping (kB): latency-logs/idle-smaps.txt.
awk '/^[0-9a-f]+-[0-9a-f]+ / { m = $2 " " ($6 == "" ? "[anon]" : $6) } $1 == "Rss:" { rss[m] += $2 } $1 == "Anonymous:" { an[m] += $2 }
     END { for (m in rss) if (rss[m]) printf "%8d %8d  %s\n", rss[m], an[m], m }' /proc/$WATCH_PID/smaps | sort -rn \
  | { echo "# rss_kB anon_kB perms mapping"; cat; } > "$W/logs/idle-smaps.txt"
log "idle: ${IDLE_CPU_MS} ms CPU in ${IDLE} s, ${IDLE_SYNCS} reconcile syncs; RSS ${RSS_KB} kB (anon ${ANON_KB}, file ${FILE_KB}; peak ${HWM_KB} kB), ${THREADS} threads"

# ---------------------------------------------------------------- report
pass() { if [ "$(echo "$1" | bc -l)" = 1 ]; then echo PASS; else echo FAIL; fi; }
NOW_RATIO=$(echo "$NOW_WALL / $RS_WALL" | bc -l)
GIT_V=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && [ -n "$(git status --porcelain 2>/dev/null | grep -v '^?? bench/' | head -1)" ] && echo "+dirty")
cp "$CSV" "$OUT/latency.csv"
{
  echo "# ha-sync daemon: change-to-live latency (bench/latency.sh)"
  echo
  echo "$(date -u +%FT%TZ), tree $GIT_V, kernel $(uname -r), $(nproc) CPUs, load at end $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "Command: \`sudo bench/latency.sh --edits $EDITS --burst $BURST --now-runs $NOW_RUNS --idle $IDLE --scale $SCALE$([ $LIVE = 1 ] && echo ' --live')\`."
  echo "Tree: mkdata.py scale $SCALE, \`sync_list /etc\` ($FIRST at the first sync); namespaces $NS_P/$NS_B on a veth, no delay;"
  if [ $LIVE = 1 ]; then
    echo "tmpfs. \`--live\`: the backup agent restores each commit to its live tree, which is what is polled"
    echo "(this Debian host has no hotplug-call: the NOTIFY_SYNC scripts step is skipped, the files land all the same)."
  else
    echo "tmpfs. The backup agent runs \`--staging-only\` (no hotplug-call here): \"live\" below is the backup's staged copy,"
    echo "committed atomically in the same session that then restores."
  fi
  echo
  echo "| measure | result | target | |"
  echo "|---|---|---|---|"
  echo "| change-to-backup latency p50 ($LAT_N edits of /$TARGET by rename, random 0.25-2 s apart) | ${P50} s | <= 0.5 s | $(pass "$P50 <= 0.5") |"
  echo "| change-to-backup latency p99 | ${P99} s | <= 2.5 s | $(pass "$P99 <= 2.5") |"
  echo "| latency p90 / min / max | ${P90} / ${LMIN} / ${LMAX} s | | |"
  echo "| the daemon's own latency figure (first event -> Restored report), median | ${DLAT:-n/a} ms | | |"
  echo "| syncs for a burst of $BURST edits in 1 s | $BURST_SYNCS | <= 3 | $(pass "$BURST_SYNCS <= 3") |"
  echo "| warm \`ha-sync now\`, nothing changed: wall (median of $NOW_RUNS) | $(printf %.4f "$NOW_WALL") s | <= 0.05 x rsync = $(printf %.4f "$(echo "$RS_WALL * 0.05" | bc -l)") s | $(pass "$NOW_WALL <= 0.05 * $RS_WALL") |"
  echo "| warm \`ha-sync now\`, nothing changed: wire | $NOW_WIRE B | < 2048 B | $(pass "$NOW_WIRE < 2048") |"
  echo "| rsync -a --delete over OpenSSH, nothing changed: wall / wire | $(printf %.4f "$RS_WALL") s / $RS_WIRE B | | |"
  echo "| \`ha-sync now --no-daemon\` (new SSH connection), nothing changed: wall / wire | $(printf %.4f "$ALONE_WALL") s / $ALONE_WIRE B | | |"
  mb() { echo "$(($1 / 1024)).$(( ($1 % 1024) * 10 / 1024 ))"; }
  echo "| idle daemon: CPU over ${IDLE} s | ${IDLE_CPU_MS} ms ($IDLE_SYNCS reconcile syncs) | no polling | |"
  echo "| idle daemon: RSS | $(mb "$RSS_KB") MB: $(mb "$ANON_KB") MB anonymous (the daemon's heap and stacks) + $(mb "$FILE_KB") MB of mapped code (the binary, on the tmpfs, and libc); peak $(mb "$HWM_KB") MB; $THREADS threads | <= 10 MB | $(pass "$RSS_KB <= 10240") |"
  echo
  echo "wall/wire: timed inside $NS_P around the client process (start to exit), wire = tx+rx bytes of the"
  echo "veth in $NS_P (L2) read 0.2 s after the run. \`now\` goes to the running daemon over its socket, which"
  echo "syncs on its open SSH connection (one channel, one round trip). Ratio ha-sync/rsync wall: $(printf %.3f "$NOW_RATIO")."
  echo "Idle: CPU = utime+stime of the daemon; the daemon sleeps between events; the SSH keepalive (15 s) and the"
  echo "reconcile (60 s) are its only timers. Raw per-edit rows: latency.csv; logs: latency-logs/."
} > "$OUT/latency.md"
cat "$OUT/latency.md"
log "wrote $OUT/latency.md and $OUT/latency.csv"
