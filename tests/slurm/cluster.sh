#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, started by hand (no systemd), for the sweep tests.
#
#   tests/slurm/cluster.sh install   # Debian's munge slurmctld slurmd slurm-client (needs root)
#   tests/slurm/cluster.sh up        # start munged (if not running), slurmctld and slurmd; wait until idle
#   tests/slurm/cluster.sh down      # stop only the processes this script started
#   tests/slurm/cluster.sh status
#
# Idempotent. State, spool, logs and slurm.conf live in $SLURM_LOCAL_DIR (default
# /tmp/plasticity-slurm); clients find the cluster with SLURM_CONF=$SLURM_LOCAL_DIR/slurm.conf
# (`up` prints the export line).
set -euo pipefail
DIR=${SLURM_LOCAL_DIR:-/tmp/plasticity-slurm}
CONF=$DIR/slurm.conf
PIDS=$DIR/started.pids

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q munge slurmctld slurmd slurm-client >/dev/null
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
  cat >"$CONF" <<EOF
ClusterName=plasticity
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MinJobAge=300
KillWait=10
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

up() {
  command -v slurmctld >/dev/null || { echo "Slurm is not installed: run '$0 install' (as root)" >&2; exit 2; }
  write_conf
  touch "$PIDS"
  if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    [ -f /etc/munge/munge.key ] || { mungekey --create && chown munge:munge /etc/munge/munge.key; }
    su -s /bin/sh munge -c "/usr/sbin/munged"
    sleep 0.5
    echo "munged $(pgrep -x -u munge munged | head -1)" >>"$PIDS"
  fi
  if ! running "$DIR/slurmctld.pid"; then
    SLURM_CONF=$CONF setsid slurmctld -D -f "$CONF" >>"$DIR/log/slurmctld.out" 2>&1 < /dev/null &
    echo "slurmctld $!" >>"$PIDS"
  fi
  if ! running "$DIR/slurmd.pid"; then
    SLURM_CONF=$CONF setsid slurmd -D -f "$CONF" >>"$DIR/log/slurmd.out" 2>&1 < /dev/null &
    echo "slurmd $!" >>"$PIDS"
  fi
  for _ in $(seq 1 60); do
    if SLURM_CONF=$CONF sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 0.5
  done
  echo "Slurm did not become idle; see $DIR/log" >&2
  exit 1
}

down() {
  [ -f "$PIDS" ] || return 0
  while read -r name pid; do
    [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  done <"$PIDS"
  rm -f "$PIDS"
}

status() {
  SLURM_CONF=$CONF sinfo 2>&1 || true
}

case "${1:-}" in
  install) install ;;
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 install|up|down|status" >&2; exit 2 ;;
esac
