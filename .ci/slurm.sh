#!/usr/bin/env bash
# A single-node Slurm (Debian's slurmctld + slurmd + munge) on this machine, for tests/test_slurm.py.
#
#   .ci/slurm.sh install   install the packages if missing (apt-get; needs root)
#   .ci/slurm.sh start     write slurm.conf for this machine (nproc, memory), start munged, slurmctld and
#                          slurmd directly (no systemd), wait until the node is idle in partition `debug`
#   .ci/slurm.sh stop      stop the daemons this script started (by their pid files)
#   .ci/slurm.sh status    exit 0 when the cluster answers and its node is up
#   .ci/slurm.sh up        install + start (.ci/run calls `install`; the tests' fixture calls `start`/`stop`)
#
# Fail-soft: when apt or a daemon fails it prints one line starting "slurm: unavailable:" and exits 3
# (`install` exits 0 so that CI goes on; the Slurm tests then skip with that reason).
# Everything lives under $SORL_SLURM_DIR (default /var/tmp/sorl-slurm): slurm.conf, state, spool, logs, pids.
# Clients find the cluster with SLURM_CONF=$SORL_SLURM_DIR/slurm.conf (the script also links
# /etc/slurm/slurm.conf to it when that file does not exist, so plain `sinfo` works).
set -uo pipefail

DIR="${SORL_SLURM_DIR:-/var/tmp/sorl-slurm}"
CONF="$DIR/slurm.conf"
MUNGE_PID=/run/munge/sorl-munged.pid # where munged (running as user munge) can write it
export SLURM_CONF="$CONF"
PACKAGES=(slurmctld slurmd slurm-client munge)

unavailable() {
  echo "slurm: unavailable: $*" >&2
  exit 3
}

have_binaries() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null
}

do_install() {
  if have_binaries; then
    echo "slurm: installed ($(sbatch --version 2>/dev/null))"
    return 0
  fi
  if [ "$(id -u)" != 0 ]; then
    echo "slurm: unavailable: not installed and not root (apt-get install ${PACKAGES[*]})" >&2
    return 0
  fi
  local log
  log=$(mktemp)
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}" >"$log" 2>&1; then
    # the package lists may be missing or stale: update them once and try again
    if ! { apt-get update >>"$log" 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}" >>"$log" 2>&1; }; then
      echo "slurm: unavailable: apt-get install ${PACKAGES[*]} failed ($(grep -m1 -E '^E:' "$log" || tail -n1 "$log"))" >&2
      rm -f "$log"
      return 0
    fi
  fi
  rm -f "$log"
  echo "slurm: installed ($(sbatch --version 2>/dev/null))"
}

node_state() {
  timeout 10 sinfo -h -p debug -o %T 2>/dev/null | head -n1
}

is_up() {
  [ -f "$CONF" ] && case "$(node_state)" in idle* | mixed* | allocated* | completing*) return 0 ;; esac
  return 1
}

alive() { # pid file -> running?
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_conf() {
  local host cpus mem node_line def_mem
  host=$(hostname -s)
  # slurmd's own view of the hardware (CPUs, sockets, cores, threads, memory), else nproc and free
  node_line=$(slurmd -C 2>/dev/null | head -n1)
  cpus=$(nproc)
  mem=$(free -m | awk '/^Mem:/ {print $2}')
  if [[ "$node_line" == NodeName=* ]]; then
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    node_line=$(sed -e "s/^NodeName=[^ ]*/NodeName=$host/" -e 's/ RealMemory=[0-9]*//' <<<"$node_line")
  else
    node_line="NodeName=$host CPUs=$cpus"
  fi
  mem=$((mem * 9 / 10)) # leave the rest to the system
  def_mem=$((mem / cpus / 2))
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" 2>/dev/null || return 1
  cat >"$CONF" 2>/dev/null <<EOF || return 1
# written by .ci/slurm.sh for tests/test_slurm.py: one node, partition debug, no cgroups, no accounting
ClusterName=sorl-ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$def_mem
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
KillWait=30
MinJobAge=600
MaxArraySize=1001
$node_line RealMemory=$mem NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  if [ ! -e /etc/slurm/slurm.conf ] && [ -d /etc/slurm ] && [ -w /etc/slurm ]; then
    ln -s "$CONF" /etc/slurm/slurm.conf
  fi
  return 0
}

start_munge() {
  if timeout 5 munge -n </dev/null 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
    return 0
  fi
  [ -s /etc/munge/munge.key ] || {
    mkdir -p /etc/munge
    if command -v mungekey >/dev/null; then
      mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1
    else
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
  }
  if id munge >/dev/null 2>&1; then
    chown munge:munge /etc/munge /etc/munge/munge.key
  fi
  chmod 700 /etc/munge
  chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  if id munge >/dev/null 2>&1; then
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    runuser -u munge -- munged --pid-file="$MUNGE_PID" || return 1
  else
    munged --force --pid-file="$MUNGE_PID" || return 1
  fi
  for _ in $(seq 20); do
    timeout 5 munge -n </dev/null 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  return 1
}

do_start() {
  if is_up; then
    echo "slurm: running ($CONF)"
    return 0
  fi
  have_binaries || unavailable "slurmctld/slurmd/sbatch/munged not installed (run: .ci/slurm.sh install)"
  [ "$(id -u)" = 0 ] || unavailable "starting the daemons needs root"
  write_conf || unavailable "cannot write $CONF"
  start_munge || unavailable "munged did not start (see /var/log/munge/munged.log)"
  if ! alive "$DIR/slurmctld.pid"; then
    slurmctld -c -f "$CONF" || unavailable "slurmctld did not start (see $DIR/log/slurmctld.log)"
  fi
  if ! alive "$DIR/slurmd.pid"; then
    slurmd -f "$CONF" || unavailable "slurmd did not start (see $DIR/log/slurmd.log)"
  fi
  for _ in $(seq 60); do
    case "$(node_state)" in
      idle* | mixed* | allocated*)
        echo "slurm: running ($(sbatch --version), node $(hostname -s): $(nproc) CPUs; SLURM_CONF=$CONF)"
        return 0
        ;;
      down* | drain*)
        scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1
        ;;
    esac
    sleep 1
  done
  unavailable "the node did not become idle in 60 s (sinfo: '$(node_state)'; logs in $DIR/log)"
}

do_stop() {
  local name pid file
  for name in slurmd slurmctld munged; do
    file="$DIR/$name.pid"
    [ "$name" = munged ] && file="$MUNGE_PID"
    if alive "$file"; then
      pid=$(cat "$file")
      kill "$pid" 2>/dev/null
      for _ in $(seq 40); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
      done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$file"
  done
  echo "slurm: stopped"
}

case "${1:-}" in
  install) do_install ;;
  start) do_start ;;
  stop) do_stop ;;
  status) is_up ;;
  up)
    do_install
    do_start
    ;;
  *)
    echo "usage: $0 install|start|stop|status|up" >&2
    exit 2
    ;;
esac
