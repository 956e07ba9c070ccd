#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, to run the pipeline's Slurm profile (pipeline/profiles/slurm) against real
# Slurm: munged, MariaDB + slurmdbd (the executor plugin asks `sacct` for job states, and `sacct` reads slurmdbd),
# slurmctld and slurmd. State, logs, the munge key and the database password live under STATE_DIR; the Slurm clients
# (sbatch, squeue, sacct, and srun inside jobs, which sees no SLURM_CONF) read /etc/slurm/slurm.conf, a link to
# STATE_DIR/etc/slurm.conf. Partition `local` (default), account `flexheads` (the user running `start` is in it).
set -euo pipefail

usage="usage: $0 install|start|stop|status [STATE_DIR]   (STATE_DIR default: /tmp/flexheads-slurm)"
[[ $# -ge 1 && $# -le 2 ]] || { echo "$usage" >&2; exit 2; }
command=$1
state=$(realpath -m "${2:-/tmp/flexheads-slurm}")
cluster=flexheads
account=flexheads
packages=(slurm-wlm slurmdbd munge mariadb-server)
system_conf=/etc/slurm/slurm.conf
marker="# Written by pipeline/cluster/local-slurm.sh"

die() { echo "local-slurm: $*" >&2; exit 1; }

need_root() {
  [[ $(id -u) -eq 0 ]] || die "$1 needs root (the daemons switch users and slurmd runs jobs as their owner)"
}

install() {
  need_root install
  local installed
  installed=$(dpkg-query -W -f='${db:Status-Status}\n' "${packages[@]}" 2>/dev/null | grep -cx installed || true)
  if [[ $installed -ne ${#packages[@]} ]]; then
    command -v apt-get >/dev/null || die "install needs apt-get (Debian/Ubuntu) for ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  fi
  echo "local-slurm: ${packages[*]} installed"
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until timeout 10 "$@" >/dev/null 2>&1; do
    [[ $SECONDS -lt $deadline ]] || die "$what did not come up within ${seconds}s (logs: $state/log)"
    sleep 0.25
  done
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

write_config() {
  local cpus memory_mb
  cpus=$(nproc)
  memory_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
  mkdir -p "$state"/{etc,log,munge,ctld,slurmd,db}
  # slurmctld and slurmdbd run as the slurm user: they write their state and logs
  chown slurm:slurm "$state/ctld" "$state/log"
  cat > "$state/etc/slurm.conf" <<EOF
$marker: one node, this machine ($(hostname -s)).
ClusterName=$cluster
SlurmctldHost=$(hostname -s)(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
AuthInfo=socket=$state/munge/munge.socket
CredType=cred/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/slurmd
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
# cgroups need systemd or a writable cgroup tree, which containers and CI runners often lack
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
MpiDefault=none
JobAcctGatherType=jobacct_gather/linux
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
# sacct then shows the plugin's --comment: the rule each job ran
AccountingStoreFlags=job_comment
# for slurmdbd connections this names munged's socket (AuthInfo covers the other connections)
AccountingStoragePass=$state/munge/munge.socket
ReturnToService=2
NodeName=$(hostname -s) NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory_mb State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat > "$state/etc/slurmdbd.conf" <<EOF
$marker (0600: it holds the database password of this cluster only).
AuthType=auth/munge
AuthInfo=socket=$state/munge/munge.socket
DbdHost=$(hostname -s)
DbdAddr=127.0.0.1
SlurmUser=slurm
PidFile=$state/slurmdbd.pid
LogFile=$state/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$(cat "$state/db/port")
StorageUser=slurm
StoragePass=$(cat "$state/db/password")
StorageLoc=slurm_acct_db
EOF
  chown slurm:slurm "$state/etc/slurmdbd.conf"
  chmod 600 "$state/etc/slurmdbd.conf"
}

check_machine() {
  # The clients, and srun inside each job (the jobstep plugin drops SLURM_* variables, SLURM_CONF included), read
  # the system path, and Slurm's ports are the machine's: one such cluster per machine, and never over a real Slurm.
  if [[ -e $system_conf ]] && ! head -1 "$system_conf" | grep -q "^$marker"; then
    die "$system_conf was not written by this script: this machine has a Slurm of its own"
  fi
  local other
  other=$(dirname "$(dirname "$(readlink -m "$system_conf")")")
  if [[ $other != "$state" ]] && pid_alive "$other/slurmctld.pid"; then
    die "a local cluster from $other is running: stop it first ($0 stop $other)"
  fi
  mkdir -p "$state/log" "$state/db"
  chmod 755 "$state"
  runuser -u slurm -- test -x "$state" ||
    die "$state is out of reach of the daemons' users (slurm, munge, mysql): choose a STATE_DIR under a searchable folder"
}

start_munge() {
  pid_alive "$state/munge/munged.pid" && return
  if [[ ! -f $state/munge/munge.key ]]; then
    dd if=/dev/urandom of="$state/munge/munge.key" bs=1024 count=1 status=none
  fi
  chown -R munge:munge "$state/munge"
  # every user's processes (slurmd, the jobs' srun) reach munged's socket in this folder: munged insists on o+x
  chmod 711 "$state/munge"
  chmod 400 "$state/munge/munge.key"
  runuser -u munge -- munged --key-file="$state/munge/munge.key" --socket="$state/munge/munge.socket" \
    --pid-file="$state/munge/munged.pid" --log-file="$state/munge/munged.log" --seed-file="$state/munge/munged.seed"
}

start_database() {
  local db=$state/db
  pid_alive "$db/mariadbd.pid" && return
  if [[ ! -d $db/data/mysql ]]; then
    mkdir -p "$db/data"
    chown mysql:mysql "$db/data"
    mariadb-install-db --no-defaults --user=mysql --datadir="$db/data" --auth-root-authentication-method=socket \
      --skip-test-db >"$state/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed: $state/log/mariadb-install.log"
  fi
  [[ -f $db/password ]] || (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$db/password")
  free_port > "$db/port"
  chown mysql:mysql "$db"
  setsid mariadbd --no-defaults --user=mysql --datadir="$db/data" --socket="$db/mariadbd.sock" \
    --bind-address=127.0.0.1 --port="$(cat "$db/port")" --pid-file="$db/mariadbd.pid" \
    --log-error="$db/mariadb.log" --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
  wait_for 60 MariaDB mariadb --no-defaults -S "$db/mariadbd.sock" -u root -e 'SELECT 1'
  mariadb --no-defaults -S "$db/mariadbd.sock" -u root <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$(cat "$db/password")';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$(cat "$db/password")';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

start_slurm() {
  pid_alive "$state/slurmdbd.pid" || SLURM_CONF=$state/etc/slurm.conf slurmdbd
  wait_for 60 slurmdbd sacctmgr -n list cluster
  # the cluster and its account must exist before slurmctld registers and `sbatch -A flexheads` is accepted
  sacctmgr -n list cluster format=cluster | grep -qw "$cluster" || sacctmgr -i add cluster "$cluster" >/dev/null
  sacctmgr -n list account format=account | grep -qw "$account" ||
    sacctmgr -i add account "$account" cluster="$cluster" description=flexheads organization=flexheads >/dev/null
  for user in $(id -un) ${SUDO_USER:-}; do
    sacctmgr -n list association user="$user" account="$account" format=user | grep -qw "$user" ||
      sacctmgr -i add user "$user" account="$account" cluster="$cluster" >/dev/null
  done
  pid_alive "$state/slurmctld.pid" || slurmctld
  wait_for 60 slurmctld scontrol ping
  pid_alive "$state/slurmd.pid" || slurmd
  wait_for 60 "the node" bash -c 'sinfo -h -N -o %t | grep -qx idle'
}

start() {
  need_root start
  local missing=()
  for binary in munged mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct; do
    command -v "$binary" >/dev/null || missing+=("$binary")
  done
  [[ ${#missing[@]} -eq 0 ]] || die "missing ${missing[*]}: run '$0 install' first"
  check_machine
  start_database
  write_config
  mkdir -p /etc/slurm
  ln -sfn "$state/etc/slurm.conf" "$system_conf"
  start_munge
  start_slurm
  echo "local-slurm: cluster '$cluster' up (node $(hostname -s): $(nproc) CPUs; partition local; account $account)"
}

stop_daemons() {  # stop_daemons PIDFILE...: TERM them together, then wait until each has exited
  local pidfile pids=()
  for pidfile in "$@"; do
    if pid_alive "$pidfile"; then pids+=("$(cat "$pidfile")"); fi
  done
  [[ ${#pids[@]} -gt 0 ]] || return 0
  kill "${pids[@]}"
  local deadline=$((SECONDS + 30))
  while kill -0 "${pids[@]}" 2>/dev/null; do
    [[ $SECONDS -lt $deadline ]] || die "pids ${pids[*]} did not stop within 30s"
    sleep 0.25
  done
}

stop() {
  need_root stop
  # jobs first, so that no step is left running on the node once slurmd is gone; slurmctld reports to slurmdbd as
  # it stops, and slurmdbd needs its database and every daemon munged
  if pid_alive "$state/slurmctld.pid"; then scancel --full --state=RUNNING,PENDING --user="$(id -un)" 2>/dev/null || true; fi
  stop_daemons "$state/slurmd.pid" "$state/slurmctld.pid"
  stop_daemons "$state/slurmdbd.pid"
  stop_daemons "$state/db/mariadbd.pid" "$state/munge/munged.pid"
  if [[ -L $system_conf && $(readlink "$system_conf") == "$state/etc/slurm.conf" ]]; then rm -f "$system_conf"; fi
  echo "local-slurm: stopped (state kept in $state)"
}

status() {  # exit status 0 only when every daemon runs
  local down=0 pidfile
  for pidfile in munge/munged db/mariadbd slurmdbd slurmctld slurmd; do
    if pid_alive "$state/$pidfile.pid"; then
      echo "${pidfile#*/}: running (pid $(cat "$state/$pidfile.pid"))"
    else
      echo "${pidfile#*/}: stopped"; down=1
    fi
  done
  if [[ $down -eq 0 ]]; then sinfo; fi
  return $down
}

case $command in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
