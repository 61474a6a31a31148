#!/bin/bash
# ha-sync vs rsync over OpenSSH, between two network namespaces, same tree, same run.
# See bench/README.md. Run as root:
#   bench/run.sh [--scale N]... [--rounds R] [--mode auto|net|local] [--no-pcap]
#                [--bin PATH] [--out DIR] [--tag NAME] [--force] [--no-install] [--keep]
#                [--ssh-shell /bin/sh|keep] [--quiet-wait SECONDS] [--staging-only] [--fs tmpfs|ext4] [--slow]
#                [--fresh-agent]
# ha-sync as shipped: the static musl build (built if missing), the backup restoring each commit
# to its live tree; --staging-only stops at the staging tree (what rsync writes); --fs ext4 puts
# the trees on an ext4 loop device instead of a tmpfs; --slow pins the whole run (both tools,
# sshd, the agent) to one core capped at 25% (a cgroup) as a stand-in for a small appliance.
# Writes OUT/latest.csv (one row per sync) and OUT/latest.md (the tables, via report.py).
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
SCALES=()
ROUNDS=3
MODE=auto
PCAP=1
BIN=""
OUT="$HERE/results"
TAG=""
FORCE=0
INSTALL=1
KEEP=0
SSH_SHELL=/bin/sh
QUIET_WAIT=0
QUIET_PCT=25
STAGING_ONLY=0
FS=tmpfs
SLOW=0
FRESH_AGENT=0
SCENARIOS=(full nochange edit bigedit delete add touch)
TOOLS=(ha-sync rsync rsync-z)
NS_P=ha-p NS_B=ha-b IP_P=198.18.0.1 IP_B=198.18.0.2
SSH_PORT=65022 HS_PORT=65023

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "run.sh: $*" >&2; exit 2; }
log() { echo "[$(date +%T)] $*" >&2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --scale) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || die "--scale needs a positive integer"; SCALES+=("$2"); shift 2 ;;
    --rounds) [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || die "--rounds needs a positive integer"; ROUNDS=$2; shift 2 ;;
    --mode) case "${2:-}" in auto|net|local) MODE=$2 ;; *) die "--mode auto|net|local" ;; esac; shift 2 ;;
    --no-pcap) PCAP=0; shift ;;
    --bin) BIN=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --tag) TAG=${2:?}; shift 2 ;;
    --force) FORCE=1; shift ;;
    --no-install) INSTALL=0; shift ;;
    --keep) KEEP=1; shift ;;
    --ssh-shell) SSH_SHELL=${2:?}; shift 2 ;;
    --staging-only) STAGING_ONLY=1; shift ;;
    --slow) SLOW=1; shift ;;
    --fresh-agent) FRESH_AGENT=1; shift ;;
    --fs) case "${2:-}" in tmpfs|ext4) FS=$2 ;; *) die "--fs tmpfs|ext4" ;; esac; shift 2 ;;
    --quiet-wait) [[ "${2:-}" =~ ^[0-9]+$ ]] || die "--quiet-wait needs seconds"; QUIET_WAIT=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
[ ${#SCALES[@]} -gt 0 ] || SCALES=(1 4)

[ "$(id -u)" = 0 ] || die "must run as root (it creates network namespaces, mounts a tmpfs, starts sshd)"

# ---------------------------------------------------------------- --slow: one core at 25%
SLOW_CG=()
slow_cleanup() { local d; for d in "${SLOW_CG[@]}"; do rmdir "$d" 2>/dev/null; done; }
if [ $SLOW = 1 ]; then
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then            # cgroup v2
    d=/sys/fs/cgroup/ha-bench-slow
    echo "+cpu +cpuset" > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
    mkdir -p $d && echo "25000 100000" > $d/cpu.max && echo 0 > $d/cpuset.cpus && echo $$ > $d/cgroup.procs \
      || die "--slow: cannot set up cgroup v2 $d"
    SLOW_CG=($d)
  else                                                           # cgroup v1
    c=/sys/fs/cgroup/cpu/ha-bench-slow s=/sys/fs/cgroup/cpuset/ha-bench-slow
    mkdir -p $c $s && echo 100000 > $c/cpu.cfs_period_us && echo 25000 > $c/cpu.cfs_quota_us \
      && echo 0 > $s/cpuset.cpus && cat /sys/fs/cgroup/cpuset/cpuset.mems > $s/cpuset.mems \
      && echo $$ > $c/tasks && echo $$ > $s/tasks || die "--slow: cannot set up cgroup v1 $c, $s"
    SLOW_CG=($c $s)
  fi
  # Everything this script starts from here on inherits the cgroups.
fi

# ---------------------------------------------------------------- tools
need_pkgs=()
for c in ip:iproute2 ss:iproute2 rsync:rsync sshd:openssh-server ssh:openssh-client ssh-keygen:openssh-client \
         bc:bc /usr/bin/time:time python3:python3; do
  command -v "${c%%:*}" >/dev/null 2>&1 || need_pkgs+=("${c#*:}")
done
[ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
[ $PCAP = 1 ] && ! command -v tcpdump >/dev/null 2>&1 && need_pkgs+=(tcpdump)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  [ $INSTALL = 1 ] && command -v apt-get >/dev/null || die "missing: ${need_pkgs[*]} (install them, or drop --no-install)"
  log "installing ${need_pkgs[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}"; } >/dev/null 2>&1 \
    || die "apt-get install ${need_pkgs[*]} failed"
fi
NCPU=$(nproc)
PY=$(python3 -c 'import sys; print(sys.executable)')   # the real interpreter, not a pyenv shim

if [ -z "$BIN" ]; then
  # The product: a static musl binary with mimalloc (README "Router builds", .ci/musl).
  BIN="$REPO/target/x86_64-unknown-linux-musl/release/ha-sync"
  if [ ! -x "$BIN" ]; then
    log "no $BIN: cargo build --release --target x86_64-unknown-linux-musl -p sync-cli"
    (cd "$REPO" && rustup target add x86_64-unknown-linux-musl >/dev/null \
      && CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --target x86_64-unknown-linux-musl -p sync-cli) >&2 \
      || die "the musl build failed (apt-get install musl-tools?)"
  fi
fi
[ -x "$BIN" ] || die "no ha-sync binary at $BIN"
HELP=$("$BIN" --help 2>&1)
has_cmd() { grep -Eq "^  $1( |$)" <<<"$HELP"; }
if has_cmd serve && has_cmd now && has_cmd keygen; then NET_OK=1; else NET_OK=0; fi
case $MODE in
  auto) [ $NET_OK = 1 ] && MODE=net || MODE=local ;;
  net) [ $NET_OK = 1 ] || die "--mode net: $BIN has no serve/now/keygen commands" ;;
esac
if [ $MODE = local ]; then
  log "WARNING: ha-sync runs in PLACEHOLDER mode (sync-local, in-process, NOT over the network):"
  log "         its wire, round trips and backup RSS are not measured; ratios are not valid"
fi

# ---------------------------------------------------------------- state and cleanup
W="" MOUNTED=0 CREATED_NS=0 MADE_RUN_SSHD=0
SSHD_PID="" SERVE_PID="" TS_PID="" TCPDUMP_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  set +e
  local p
  for p in $TCPDUMP_PID $SERVE_PID $SSHD_PID $TS_PID; do kill -TERM "$p" 2>/dev/null; done
  for p in $TCPDUMP_PID $SERVE_PID $SSHD_PID $TS_PID; do
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  if [ $CREATED_NS = 1 ]; then
    # anything still running in our namespaces was started by this script
    for ns in $NS_P $NS_B; do
      for p in $(ip netns pids $ns 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
      ip netns del $ns 2>/dev/null
    done
  fi
  if [ -n "$W" ] && [ -d "$W/logs" ] && [ -d "$OUT" ]; then
    rm -rf "$OUT/last-run-logs"; cp -r "$W/logs" "$OUT/last-run-logs" 2>/dev/null
  fi
  if [ $MOUNTED = 1 ]; then
    if [ $KEEP = 1 ]; then
      echo "run.sh: --keep: trees left mounted at $W (umount $W when done)" >&2
    else
      umount "$W" 2>/dev/null || { sleep 0.5; umount "$W" 2>/dev/null; } || umount -l "$W"
      rmdir "$W" 2>/dev/null
    fi
  elif [ -n "$W" ] && [ $KEEP = 0 ]; then
    rm -rf "$W"
  fi
  [ $MADE_RUN_SSHD = 1 ] && rmdir /run/sshd 2>/dev/null
  if [ ${#SLOW_CG[@]} -gt 0 ]; then
    # move ourselves out, or the cgroups cannot be removed
    for d in "${SLOW_CG[@]}"; do
      case $d in
        */ha-bench-slow) [ -f "$d/tasks" ] && echo $$ > "$(dirname "$d")/tasks" || echo $$ > "$(dirname "$d")/cgroup.procs" ;;
      esac 2>/dev/null
    done
    slow_cleanup
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# ---------------------------------------------------------------- namespaces, tmpfs
for ns in $NS_P $NS_B; do
  if ip netns list 2>/dev/null | grep -qw "^$ns"; then
    [ $FORCE = 1 ] || die "namespace $ns already exists (another run, or a stale one: 'ip netns del $ns', or pass --force)"
    for p in $(ip netns pids $ns 2>/dev/null); do
      die "namespace $ns exists and has processes ($(ip netns pids $ns | tr '\n' ' ')): not touching it"
    done
    ip netns del $ns || die "cannot delete stale namespace $ns"
  fi
done
ip netns add $NS_P 2>/dev/null || die "cannot create network namespaces (ip netns add $NS_P failed: no CAP_SYS_ADMIN, or no netns support)"
CREATED_NS=1
ip netns add $NS_B || die "cannot create network namespace $NS_B"
ip link add vp type veth peer name vb || die "cannot create a veth pair"
ip link set vp netns $NS_P && ip link set vb netns $NS_B || die "cannot move the veth into the namespaces"
ip -n $NS_P addr add $IP_P/24 dev vp && ip -n $NS_B addr add $IP_B/24 dev vb || die "cannot address the veth"
for ns in $NS_P $NS_B; do ip -n $ns link set lo up; done
# no IPv6 on the veth: keeps NDP/MLD chatter out of the wire-byte counters
ip netns exec $NS_P sysctl -qw net.ipv6.conf.vp.disable_ipv6=1
ip netns exec $NS_B sysctl -qw net.ipv6.conf.vb.disable_ipv6=1
ip -n $NS_P link set vp up && ip -n $NS_B link set vb up || die "cannot bring the veth up"
for _ in $(seq 100); do ip -n $NS_P link show vp | grep -q LOWER_UP && break; sleep 0.02; done
ip -n $NS_P link show vp | grep -q LOWER_UP || die "the veth did not come up"

# The tmpfs is mounted here, in the root mount namespace, BEFORE any 'ip netns exec': each
# 'ip netns exec' makes its own mount namespace (a slave copy of the caller's), so a mount made
# inside one is invisible to the other namespace's processes, while one made here is seen by both.
W=$(mktemp -d /tmp/ha-bench.XXXXXX) || die "mktemp failed"
if [ $FS = ext4 ]; then
  # A loop device on the real disk: ext4 journals and syncs as a router's overlay does.
  IMG="$W.img"
  truncate -s 8G "$IMG" && mkfs.ext4 -q -F "$IMG" || die "cannot make an ext4 image at $IMG"
  mount -o loop "$IMG" "$W" || die "cannot mount $IMG on $W"
  rm -f "$IMG"   # the mount keeps it; the space returns at umount
  chmod 0755 "$W"
  FS_T=ext2/ext3
else
  mount -t tmpfs -o size=8g,mode=0755 ha-bench "$W" || die "cannot mount a tmpfs on $W"
  FS_T=tmpfs
fi
MOUNTED=1
for ns in $NS_P $NS_B; do
  [ "$(ip netns exec $ns stat -f -c %T "$W")" = $FS_T ] || die "$W is not a $FS as seen from $ns (mount propagation?)"
done
mkdir -p "$W/bin" "$W/logs" "$W/ssh" "$W/keys" "$W/cap" "$W/tmp" "$OUT" || die "mkdir"
cp "$BIN" "$W/bin/ha-sync" || die "cannot copy $BIN"   # a rebuild during the run must not swap it
HS="$W/bin/ha-sync"

# ---------------------------------------------------------------- exit-time RSS recorder
EXITS="$W/exits.txt"; : > "$EXITS"
"$PY" "$HERE/lib/taskstats.py" "$EXITS" > "$W/logs/taskstats.out" 2> "$W/logs/taskstats.err" &
TS_PID=$!
for _ in $(seq 50); do grep -q ready "$W/logs/taskstats.out" 2>/dev/null && break; kill -0 $TS_PID 2>/dev/null || break; sleep 0.1; done
if grep -q ready "$W/logs/taskstats.out" 2>/dev/null; then TASKSTATS=1; else
  TASKSTATS=0; TS_PID=""
  log "WARNING: taskstats unavailable ($(cat "$W/logs/taskstats.err")): rsync's per-process RSS sums are not measured"
fi

# ---------------------------------------------------------------- sshd in ha-b
if [ ! -d /run/sshd ]; then mkdir -p /run/sshd && chmod 0755 /run/sshd && MADE_RUN_SSHD=1; fi
ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/host_ed25519" || die "ssh-keygen"
ssh-keygen -q -t ed25519 -N '' -f "$W/ssh/id" || die "ssh-keygen"
cp "$W/ssh/id.pub" "$W/ssh/authorized_keys"
cat > "$W/ssh/sshd_config" <<EOF
Port $SSH_PORT
ListenAddress $IP_B
HostKey $W/ssh/host_ed25519
AuthorizedKeysFile $W/ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PidFile $W/ssh/sshd.pid
LogLevel ERROR
EOF
# sshd runs the remote rsync through root's login shell. On this machine that is bash, whose
# ~/.bashrc (pyenv init, cargo env) forks dozens of processes and adds ~0.3 s to every rsync
# session; a router runs `ash -c` with no rc file. So by default sshd sees a passwd where root's
# shell is /bin/sh, bind-mounted over /etc/passwd in sshd's own mount namespace only (the one
# `ip netns exec` made for it; the mount never reaches the host). --ssh-shell keep: no override.
if [ "$SSH_SHELL" = keep ]; then
  ip netns exec $NS_B /usr/sbin/sshd -D -e -f "$W/ssh/sshd_config" 2>>"$W/logs/sshd.log" &
else
  [ -x "$SSH_SHELL" ] || die "--ssh-shell $SSH_SHELL: not an executable"
  awk -F: -v OFS=: -v sh="$SSH_SHELL" '$1 == "root" { $7 = sh } { print }' /etc/passwd > "$W/ssh/passwd"
  ip netns exec $NS_B /bin/sh -c 'mount --bind "$1" /etc/passwd && exec /usr/sbin/sshd -D -e -f "$2"' sh \
    "$W/ssh/passwd" "$W/ssh/sshd_config" 2>>"$W/logs/sshd.log" &
fi
SSHD_PID=$!
wait_listen() { # NS PORT PID
  local i
  for i in $(seq 100); do
    ip netns exec "$1" ss -Hltn "sport = :$2" 2>/dev/null | grep -q . && return 0
    kill -0 "$3" 2>/dev/null || return 1
    sleep 0.02
  done
  return 1
}
wait_listen $NS_B $SSH_PORT $SSHD_PID || die "sshd did not start in $NS_B: $(tail -3 "$W/logs/sshd.log")"
SSH="ssh -p $SSH_PORT -i $W/ssh/id -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes"
ip netns exec $NS_P $SSH root@$IP_B true 2>"$W/logs/ssh-check.err" \
  || die "ssh $NS_P -> $NS_B failed: $(cat "$W/logs/ssh-check.err")"
REMOTE_SHELL=$(ip netns exec $NS_P $SSH root@$IP_B 'readlink /proc/$$/exe' 2>/dev/null)
log "sshd in $NS_B up; the remote command runs under $REMOTE_SHELL"

# ---------------------------------------------------------------- ha-sync keys and agent
if [ $MODE = net ]; then
  "$HS" keygen --out "$W/keys/client" >"$W/logs/keygen.log" 2>&1 || die "ha-sync keygen failed: $(cat "$W/logs/keygen.log")"
  "$HS" keygen --out "$W/keys/hostkey" >>"$W/logs/keygen.log" 2>&1 || die "ha-sync keygen failed: $(cat "$W/logs/keygen.log")"
  cp "$W/keys/client.pub" "$W/keys/authorized_keys"
  read -r kt kb _ < "$W/keys/hostkey.pub"
  echo "[$IP_B]:$HS_PORT $kt $kb" > "$W/keys/known_hosts"
fi
# The job ends in the backup's live tree (restore, then NOTIFY_SYNC, which a Debian host without
# hotplug-call skips). --staging-only: the agent stops where rsync does, at its destination.
SERVE_EXTRA=()
[ $MODE = net ] && [ $STAGING_ONLY = 1 ] && SERVE_EXTRA=(--staging-only)
start_serve() { # ROOT_B
  ip netns exec $NS_B "$HS" serve --root "$1" --listen $IP_B:$HS_PORT --host-key "$W/keys/hostkey" \
    --authorized-keys "$W/keys/authorized_keys" "${SERVE_EXTRA[@]}" >>"$W/logs/serve.log" 2>&1 &
  SERVE_PID=$!
  wait_listen $NS_B $HS_PORT $SERVE_PID || die "ha-sync serve did not start: $(tail -5 "$W/logs/serve.log")"
}
stop_serve() {
  [ -n "$SERVE_PID" ] || return 0
  kill -TERM "$SERVE_PID" 2>/dev/null
  for _ in $(seq 50); do kill -0 "$SERVE_PID" 2>/dev/null || break; sleep 0.02; done
  kill -KILL "$SERVE_PID" 2>/dev/null
  wait "$SERVE_PID" 2>/dev/null
  SERVE_PID=""
}
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
CLK_TCK=$(getconf CLK_TCK)
proc_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# ---------------------------------------------------------------- measuring helpers
wire() { ip netns exec $NS_P cat /sys/class/net/vp/statistics/tx_bytes /sys/class/net/vp/statistics/rx_bytes | paste -sd' '; }
cpu_sample() { local _c u n s i w q sq st; read -r _c u n s i w q sq st _ < /proc/stat; echo "$((u+n+s+q+sq+st)) $((u+n+s+i+w+q+sq+st))"; }
start_pcap() { # FILE
  TCPDUMP_PID=""
  [ $PCAP = 1 ] || return 0
  # --immediate-mode: without it TPACKET_V3 hands packets over in blocks and the last,
  # partly filled block is lost when tcpdump is stopped right after a short sync
  ip netns exec $NS_P tcpdump -i vp -n -p -s 128 -U -Z root -B 16384 -w "$1" \
    --immediate-mode "tcp and (port $SSH_PORT or port $HS_PORT)" 2>"$1.err" &
  TCPDUMP_PID=$!
  for _ in $(seq 150); do grep -q listening "$1.err" 2>/dev/null && return 0; kill -0 $TCPDUMP_PID 2>/dev/null || break; sleep 0.02; done
  log "WARNING: tcpdump did not start: $(cat "$1.err")"; TCPDUMP_PID=""
}
stop_pcap() {
  [ -n "$TCPDUMP_PID" ] || return 0
  kill -INT $TCPDUMP_PID 2>/dev/null; wait $TCPDUMP_PID 2>/dev/null; TCPDUMP_PID=""
}
compare_trees() { # SRC DST LOGPREFIX -> equal | diff:N | meta:N | dirtime:N (see lib/treecmp.py)
  "$PY" "$HERE/lib/treecmp.py" "$1" "$2" "$3"
}
write_router_config() { # ROOT: the restore list covers the whole of /etc
  mkdir -p "$1/etc/config"
  printf "config peer 'ha_peer'\n\tlist sync_list '/etc'\n" > "$1/etc/config/keepalived"
  : > "$1/etc/sysupgrade.conf"
}
src_root() { case $1 in ha-sync) echo "$SD/hs/A" ;; rsync) echo "$SD/rs/src" ;; rsync-z) echo "$SD/rz/src" ;; esac; }
hs_dst() { if [ $STAGING_ONLY = 1 ]; then echo "$SD/hs/B/usr/share/keepalived/rsync/etc"; else echo "$SD/hs/B/etc"; fi; }
dst_etc() { case $1 in ha-sync) hs_dst ;; rsync) echo "$SD/rs/dst/etc" ;; rsync-z) echo "$SD/rz/dst/etc" ;; esac; }
reset_tool() { # TOOL: fresh source tree from the pristine copy, empty destination
  local d
  case $1 in ha-sync) d=hs ;; rsync) d=rs ;; rsync-z) d=rz ;; esac
  rm -rf "${SD:?}/$d"
  mkdir -p "$(src_root "$1")"
  cp -a "$SD/pristine/etc" "$(src_root "$1")/etc"
  # the backup is a VRRP backup, as keepalived's NOTIFY_BACKUP records it: it restores
  # and has its own cluster config, a per-node file the restore never writes (the same text as
  # the primary's here, so the trees compare equal)
  case $1 in ha-sync) mkdir -p "$SD/hs/B/var/run/ha-sync" "$SD/hs/B/etc/config" && echo backup > "$SD/hs/B/var/run/ha-sync/vrrp_state" \
                        && cp -p "$SD/pristine/etc/config/keepalived" "$SD/hs/B/etc/config/keepalived" ;; *) mkdir -p "$SD/$d/dst/etc" ;; esac
}

CSV_HEADER="scale,round,scenario,tool,mode,rc,wall_s,wire_bytes,tx_bytes,rx_bytes,rt_self,rt_pcap,turns,conns,payload_c2s,payload_s2c,rss_primary_kb,rss_primary_sum_kb,rss_primary_procs,rss_backup_kb,rss_backup_idle_kb,rss_backup_procs,trees,cpu_busy_pct,foreign_cpu_pct,cpu_primary_ms,cpu_backup_ms,load1,self_summary"
CSV="$W/results.csv"; echo "$CSV_HEADER" > "$CSV"

wait_quiet() { # up to QUIET_WAIT s for the machine to be < QUIET_PCT % busy over 0.5 s
  [ "$QUIET_WAIT" -gt 0 ] || return 0
  local end=$((SECONDS + QUIET_WAIT)) a b x y
  while :; do
    read -r a b <<<"$(cpu_sample)"; sleep 0.5; read -r x y <<<"$(cpu_sample)"
    [ $(( 100 * (x - a) )) -lt $(( QUIET_PCT * (y - b + 1) )) ] && return 0
    [ $SECONDS -ge $end ] && { log "machine still busy after ${QUIET_WAIT}s: measuring anyway"; return 0; }
  done
}

measure() { # SCALE ROUND SCENARIO TOOL
  local scale=$1 round=$2 sc=$3 tool=$4 tag="s$1-r$2-$3-$4"
  local src dst out err tv pcap rc t0 t1 w0 w1 c0 c1 e0 e1 cmd=() mode=net
  src=$(src_root "$tool"); dst=$(dst_etc "$tool")
  out="$W/logs/$tag.out"; err="$W/logs/$tag.err"; tv="$W/tmp/$tag.timev"; pcap="$W/cap/$tag.pcap"
  local idle=""
  case $tool in
    ha-sync)
      if [ $MODE = net ]; then
        # The agent runs as under procd: started once per round (a fresh tree), kept across the
        # round's scenarios; its peak RSS is reset for each (clear_refs 5). --fresh-agent: a
        # new agent process for every sync (its first session pays every cold cache).
        if [ $FRESH_AGENT = 1 ] || [ -z "$SERVE_PID" ] || ! kill -0 "$SERVE_PID" 2>/dev/null; then
          stop_serve; start_serve "$SD/hs/B"
        fi
        echo 5 > "/proc/$SERVE_PID/clear_refs" 2>/dev/null
        idle=$(hwm_kb $SERVE_PID); serve_ticks0=$(proc_ticks $SERVE_PID)
        cmd=("$HS" now --root "$src" --peer $IP_B:$HS_PORT --key "$W/keys/client" --known-hosts "$W/keys/known_hosts")
      else
        mode=local
        cmd=("$HS" sync-local --from "$src" --to "$SD/hs/B")
      fi ;;
    rsync)   cmd=(rsync -a --delete --stats -e "$SSH" "$src/etc/" "root@$IP_B:$dst/") ;;
    rsync-z) cmd=(rsync -a -z --delete --stats -e "$SSH" "$src/etc/" "root@$IP_B:$dst/") ;;
  esac
  wait_quiet
  start_pcap "$pcap"
  read -r w0tx w0rx <<<"$(wire)"
  e0=$(stat -c %s "$EXITS")
  c0=$(cpu_sample)
  t0=$EPOCHREALTIME
  ip netns exec $NS_P /usr/bin/time -v -o "$tv" "${cmd[@]}" >"$out" 2>"$err" &
  local cpid=$!
  wait $cpid; rc=$?
  t1=$EPOCHREALTIME
  c1=$(cpu_sample)
  sleep 0.15   # let the last FIN/ACKs and the backup side's exit records arrive
  read -r w1tx w1rx <<<"$(wire)"
  stop_pcap
  local bk_hwm="" spid=""
  if [ $mode = net ] && [ "$tool" = ha-sync ]; then
    spid=$SERVE_PID; bk_hwm=$(hwm_kb $SERVE_PID)
    if [ $FRESH_AGENT = 1 ]; then
      stop_serve   # per-scenario VmHWM; its exit record (CPU time) lands in the window too
    else
      serve_cpu_ms=$(( ($(proc_ticks $SERVE_PID) - serve_ticks0) * 1000 / CLK_TCK ))
    fi
  fi
  sleep 0.05
  e1=$(stat -c %s "$EXITS")

  local wall tx=$((w1tx - w0tx)) rx=$((w1rx - w0rx))
  wall=$(echo "${t1/,/.} - ${t0/,/.}" | bc -l | awk '{printf "%.4f", $1}')
  local rss_p rss_psum="" rss_pprocs="" rss_b="" rss_bprocs="" r cpu_p="" cpu_b=""
  rss_p=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tv" 2>/dev/null); rss_p=${rss_p:-}
  kv() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$2"; }
  if [ $TASKSTATS = 1 ]; then
    r=$("$PY" "$HERE/lib/rssattr.py" "$EXITS" "$e0" "$e1" $cpid --exclude-roots)
    rss_psum=$(kv sum_kb "$r"); rss_pprocs=$(kv procs "$r"); cpu_p=$(kv cpu_ms "$r")
    if [ "$tool" != ha-sync ]; then
      r=$("$PY" "$HERE/lib/rssattr.py" "$EXITS" "$e0" "$e1" $SSHD_PID --exclude-roots)
      rss_b=$(kv sum_kb "$r"); rss_bprocs=$(kv procs "$r"); cpu_b=$(kv cpu_ms "$r")
    elif [ -n "$spid" ] && [ $FRESH_AGENT = 1 ]; then
      r=$("$PY" "$HERE/lib/rssattr.py" "$EXITS" "$e0" "$e1" $spid)
      cpu_b=$(kv cpu_ms "$r"); rss_bprocs="serve-VmHWM;exit-record:$(kv sum_kb "$r")kB"
    elif [ -n "$spid" ]; then
      cpu_b=$serve_cpu_ms; rss_bprocs="serve-VmHWM(running)"
    fi
  fi
  if [ "$tool" = ha-sync ]; then
    if [ $mode = net ]; then rss_b=$bk_hwm; [ -n "$rss_bprocs" ] || rss_bprocs="serve-VmHWM"; else rss_b=""; rss_bprocs="in-process"; fi
  fi
  local rt_self="" summary
  summary=$(cat "$out" "$err" 2>/dev/null)
  rt_self=$(grep -oE 'round_trips=[0-9]+' <<<"$summary" | head -1 | cut -d= -f2)
  [ -n "$rt_self" ] || rt_self=$(grep -oE '[0-9]+ round trips?' <<<"$summary" | head -1 | cut -d' ' -f1)
  [ "$tool" = ha-sync ] || rt_self=""
  local turns="" rt_pcap="" conns="" pc2s="" ps2c=""
  if [ $PCAP = 1 ] && [ -s "$pcap" ]; then
    r=$("$PY" "$HERE/lib/pcaprt.py" "$pcap" $IP_P)
    turns=$(sed -n 's/.*turns=\([0-9]*\).*/\1/p' <<<"$r"); rt_pcap=$(sed -n 's/.* rt=\([0-9]*\).*/\1/p' <<<"$r")
    conns=$(sed -n 's/.*conns=\([0-9]*\).*/\1/p' <<<"$r")
    pc2s=$(sed -n 's/.*c2s=\([0-9]*\).*/\1/p' <<<"$r"); ps2c=$(sed -n 's/.*s2c=\([0-9]*\).*/\1/p' <<<"$r")
    rm -f "$pcap"
  fi
  local trees busy load1 foreign=""
  if [ $rc = 0 ]; then trees=$(compare_trees "$src/etc" "$dst" "$W/logs/$tag"); else trees="failed"; fi
  read -r b0 a0 <<<"$c0"; read -r b1 a1 <<<"$c1"
  busy=$(awk -v b=$((b1 - b0)) -v a=$((a1 - a0)) 'BEGIN{ if (a > 0) printf "%.0f", 100*b/a; else print "" }')
  # CPU burnt by everything else on the machine during the sync, in % of all cores:
  # busy jiffies (USER_HZ=100) minus the measured processes' own CPU time (taskstats)
  if [ -n "$cpu_p" ]; then
    foreign=$(awk -v b=$((b1 - b0)) -v own=$(( cpu_p + ${cpu_b:-0} )) -v w="$wall" -v n="$NCPU" \
      'BEGIN{ f = b * 10 - own; if (f < 0) f = 0; if (w > 0) printf "%.0f", 100 * f / (w * 1000 * n) }')
  fi
  read -r load1 _ < /proc/loadavg
  local one_line
  if [ "$tool" = ha-sync ]; then one_line=$(head -1 "$out"); else one_line=$(grep -m1 '^sent ' "$out"); fi
  one_line=$(tr ',"\n' ';  ' <<<"$one_line" | cut -c1-200)
  [ $rc = 0 ] || one_line="rc=$rc: $(tail -2 "$err" | tr ',"\n' ';  ' | cut -c1-200)"
  echo "$scale,$round,$sc,$tool,$mode,$rc,$wall,$((tx + rx)),$tx,$rx,$rt_self,$rt_pcap,$turns,$conns,$pc2s,$ps2c,$rss_p,$rss_psum,$rss_pprocs,$rss_b,$idle,$rss_bprocs,$trees,$busy,$foreign,${cpu_p},${cpu_b},$load1,\"$one_line\"" >> "$CSV"
  printf "  %-8s %-8s rc=%s wall=%ss wire=%s rt=%s/%s rss=%s/%s kB trees=%s\n" \
    "$sc" "$tool" "$rc" "$wall" "$((tx + rx))" "${rt_self:--}" "${rt_pcap:--}" "${rss_psum:-$rss_p}" "${rss_b:--}" "$trees" >&2
}

# ---------------------------------------------------------------- the run
log "mode=$MODE scales=${SCALES[*]} rounds=$ROUNDS pcap=$PCAP fs=$FS staging_only=$STAGING_ONLY work=$W binary=$BIN"
START=$(date +%s)
for scale in "${SCALES[@]}"; do
  SD="$W/s$scale"
  mkdir -p "$SD/pristine"
  log "scale $scale: generating the tree"
  "$PY" "$HERE/mkdata.py" "$SD/pristine" --scale "$scale" || die "mkdata.py failed"
  write_router_config "$SD/pristine"
  for round in $(seq 1 "$ROUNDS"); do
    log "scale $scale round $round/$ROUNDS"
    stop_serve   # a new round is a new tree: a new agent
    for t in "${TOOLS[@]}"; do reset_tool "$t"; done
    # rotate the tools' order each round so that none always runs first after a mutation
    order=()
    for i in 0 1 2; do order+=("${TOOLS[$(( (i + round - 1) % 3 ))]}"); done
    for sc in "${SCENARIOS[@]}"; do
      for t in "${order[@]}"; do
        case $sc in full|nochange) ;; *) "$PY" "$HERE/mkdata.py" "$(src_root "$t")" --mutate "$sc" || die "mutate $sc" ;; esac
        measure "$scale" "$round" "$sc" "$t"
      done
    done
  done
  rm -rf "${SD:?}"
done
stop_serve

RSYNC_V=$(rsync --version | head -1 | awk '{print $3}')
SSH_V=$(ssh -V 2>&1 | cut -d, -f1 | tr " " "-")
HS_V=$("$HS" --version 2>/dev/null | head -1 | tr " " "-")
GIT_V=$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && [ -n "$(git status --porcelain 2>/dev/null | grep -v '^?? bench/' | head -1)" ] && echo "+dirty")
BIN_KIND=$(file -b "$BIN" | grep -oE 'statically linked|static-pie linked|dynamically linked' | head -1 | tr ' ' '-')
META="date=$(date -u +%FT%TZ) mode=$MODE agent=$([ $FRESH_AGENT = 1 ] && echo fresh-per-sync || echo running) fs=$FS slow=$([ $SLOW = 1 ] && echo 1-core-25pct || echo no) backup=$([ $STAGING_ONLY = 1 ] && echo staging-only || echo live) binary=${BIN_KIND:-unknown} binary_bytes=$(stat -c %s "$BIN") rounds=$ROUNDS scales=${SCALES[*]} pcap=$PCAP taskstats=$TASKSTATS remote_shell=$REMOTE_SHELL kernel=$(uname -r) cpus=$(nproc) rsync=$RSYNC_V ssh=$SSH_V ha_sync=$HS_V binary_built=$(date -u -r "$BIN" +%FT%TZ) tree_now=$GIT_V duration_s=$(( $(date +%s) - START ))"
cp "$CSV" "$OUT/latest.csv"
"$PY" "$HERE/report.py" "$OUT/latest.csv" --meta "$META" > "$OUT/latest.md" || die "report.py failed (raw data kept in $OUT/latest.csv)"
if [ -n "$TAG" ]; then cp "$OUT/latest.csv" "$OUT/$TAG.csv"; cp "$OUT/latest.md" "$OUT/$TAG.md"; fi
cat "$OUT/latest.md"
log "wrote $OUT/latest.md and $OUT/latest.csv"
