#!/usr/bin/env bash
# A shared MLflow tracking server on PostgreSQL, as a research group runs it: PostgreSQL in <folder>/pg (a
# database and a role of its own), `mlflow server` on it serving the runs' artifacts from <folder>/artifacts.
# Both listen on 127.0.0.1 only; others reach the server through an SSH tunnel (README: a shared tracking server).
#
#   pipeline/cluster/mlflow-server.sh install            # Debian's postgresql (apt-get; idempotent)
#   pipeline/cluster/mlflow-server.sh start  <folder>    # prints the tracking.uri to use; idempotent
#   pipeline/cluster/mlflow-server.sh stop   <folder>    # idempotent
#   pipeline/cluster/mlflow-server.sh status <folder>    # prints the tracking.uri, exit 1 when not running
#
# Environment:
#   FLEXHEADS_PG_PASSWORD   the database role's password; unset: one is generated into <folder>/pg-password (0600)
#   FLEXHEADS_MLFLOW_PORT   the server's port; unset: the port of the last start in <folder>, else a free one
#   FLEXHEADS_PG_PORT       PostgreSQL's port; unset: likewise
# Nothing here is a credential in git: the password lives in the environment or in <folder> (keep it out of git).
set -euo pipefail
umask 077  # the folder holds the password, the database and the artifacts: the user's alone

usage() {
    echo "usage: $0 install | start <folder> | stop <folder> | status <folder>" >&2
    exit 2
}

say() { echo "mlflow-server: $*" >&2; }
die() { say "$*"; exit 1; }

ROLE=flexheads
DATABASE=mlflow

pg_bindir() {
    # Debian keeps the server binaries out of PATH, under /usr/lib/postgresql/<version>/bin: take the newest.
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$dir" ] && [ -x "$dir/initdb" ]; then
        echo "$dir"
    elif command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
        dirname "$(command -v initdb)"
    else
        return 1
    fi
}

cmd_install() {
    if pg_bindir >/dev/null; then
        say "PostgreSQL already installed ($(pg_bindir))"
    elif ! command -v apt-get >/dev/null; then
        die "no apt-get on this machine: install PostgreSQL (initdb, pg_ctl, psql) another way"
    elif [ "$(id -u)" -ne 0 ]; then
        die "installing Debian's postgresql needs root: sudo $0 install"
    else
        say "installing Debian's postgresql with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
        say "PostgreSQL installed ($(pg_bindir))"
    fi
    python3 -c "import psycopg2" 2>/dev/null \
        || die "the server needs psycopg2 in this Python: pip install 'flexheads[cluster]' (or psycopg2-binary)"
    command -v mlflow >/dev/null || die "no mlflow on PATH: pip install flexheads"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# port <name> <env value>: the environment's value, else the one saved by the last start, else a free port; saved.
port() {
    local file="$FOLDER/$1.port" value="$2"
    if [ -z "$value" ] && [ -s "$file" ]; then
        value=$(cat "$file")
    fi
    [ -n "$value" ] || value=$(free_port)
    echo "$value" >"$file"
    echo "$value"
}

# as_owner <command...>: PostgreSQL refuses to run as root, so as root the cluster belongs to the postgres user.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u "$PG_USER" -- "$@"
    else
        "$@"
    fi
}

password() {
    if [ -n "${FLEXHEADS_PG_PASSWORD:-}" ]; then
        printf '%s' "$FLEXHEADS_PG_PASSWORD"
        return
    fi
    local file="$FOLDER/pg-password"
    if [ ! -s "$file" ]; then
        (umask 077 && openssl rand -hex 24 >"$file")
    fi
    chmod 600 "$file"
    tr -d '\n' <"$file"
}

server_running() {
    [ -s "$FOLDER/mlflow.pid" ] && kill -0 "$(cat "$FOLDER/mlflow.pid")" 2>/dev/null
}

start_postgres() {
    local bin pg_port
    bin=$(pg_bindir) || die "PostgreSQL not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): run $0 install"
    PG_USER=$(id -un)
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || die "running as root needs the postgres user (Debian's postgresql creates it)"
        PG_USER=postgres
    fi
    mkdir -p "$FOLDER/pg" "$FOLDER/run"
    if [ "$PG_USER" != "$(id -un)" ]; then
        chown "$PG_USER" "$FOLDER/pg" "$FOLDER/run"
        chmod 711 "$FOLDER"  # postgres may pass through to its folders, not list or read the others
        runuser -u "$PG_USER" -- test -x "$FOLDER/pg" \
            || die "the $PG_USER user cannot reach $FOLDER/pg (a parent folder is closed to it): pick a folder under /srv or /tmp"
    fi
    if [ ! -s "$FOLDER/pg/PG_VERSION" ]; then
        # local connections (the socket in <folder>/run) by OS user only; TCP by password only
        as_owner "$bin/initdb" -D "$FOLDER/pg" -U "$PG_USER" --auth-local=peer --auth-host=scram-sha-256 \
            -E UTF8 --locale=C.UTF-8 >"$FOLDER/initdb.log" 2>&1 || die "initdb failed: see $FOLDER/initdb.log"
    fi
    pg_port=$(port pg "${FLEXHEADS_PG_PORT:-}")
    if ! as_owner "$bin/pg_ctl" -D "$FOLDER/pg" status >/dev/null 2>&1; then
        touch "$FOLDER/pg.log"
        [ "$PG_USER" = "$(id -un)" ] || chown "$PG_USER" "$FOLDER/pg.log"
        as_owner "$bin/pg_ctl" -D "$FOLDER/pg" -l "$FOLDER/pg.log" -w -t 60 \
            -o "-c listen_addresses=127.0.0.1 -p $pg_port -k $FOLDER/run" start >/dev/null \
            || die "PostgreSQL did not start: see $FOLDER/pg.log"
    fi
    pg_port=$(cat "$FOLDER/pg.port")
    local pass=${1//\'/\'\'}  # a quote in the password, doubled for SQL
    # The password travels on stdin, never on a command line other users can read in ps.
    as_owner "$bin/psql" -q -X -v ON_ERROR_STOP=1 -h "$FOLDER/run" -p "$pg_port" -d postgres <<SQL >/dev/null \
        || die "could not create the role $ROLE and the database $DATABASE: see $FOLDER/pg.log"
SELECT format('CREATE ROLE %I LOGIN', '$ROLE') WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE')\gexec
ALTER ROLE $ROLE PASSWORD '$pass';
SELECT format('CREATE DATABASE %I OWNER %I', '$DATABASE', '$ROLE')
    WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$DATABASE')\gexec
SQL
}

cmd_start() {
    if server_running; then
        say "already running (pid $(cat "$FOLDER/mlflow.pid"), log $FOLDER/mlflow.log)"
        echo "tracking.uri: http://127.0.0.1:$(cat "$FOLDER/mlflow.port")"
        return
    fi
    command -v mlflow >/dev/null || die "no mlflow on PATH: pip install flexheads"
    python3 -c "import psycopg2" 2>/dev/null \
        || die "mlflow server needs psycopg2 to talk to PostgreSQL: pip install 'flexheads[cluster]'"
    local pass mlflow_port pg_port
    pass=$(password)
    start_postgres "$pass"
    pg_port=$(cat "$FOLDER/pg.port")
    mlflow_port=$(port mlflow "${FLEXHEADS_MLFLOW_PORT:-}")
    mkdir -p "$FOLDER/artifacts"
    # PGPASSWORD (libpq reads it) keeps the password out of the server's command line; two workers are plenty
    # for a group's trainings and leave the cores to them.
    PGPASSWORD=$pass setsid mlflow server \
        --backend-store-uri "postgresql://$ROLE@127.0.0.1:$pg_port/$DATABASE" \
        --artifacts-destination "$FOLDER/artifacts" \
        --host 127.0.0.1 --port "$mlflow_port" --workers 2 \
        >"$FOLDER/mlflow.log" 2>&1 </dev/null &
    echo $! >"$FOLDER/mlflow.pid"
    local url="http://127.0.0.1:$mlflow_port"
    for _ in $(seq 180); do  # the first start creates MLflow's tables: a minute on a busy machine
        if curl -fsS -m 2 "$url/health" >/dev/null 2>&1; then
            say "running (pid $(cat "$FOLDER/mlflow.pid"), PostgreSQL on 127.0.0.1:$pg_port, log $FOLDER/mlflow.log)"
            echo "tracking.uri: $url"
            return
        fi
        server_running || die "mlflow server exited: last lines of $FOLDER/mlflow.log: $(tail -n 3 "$FOLDER/mlflow.log" | tr '\n' ' ')"
        sleep 1
    done
    die "mlflow server did not answer $url/health within 180 s: see $FOLDER/mlflow.log"
}

cmd_stop() {
    if server_running; then
        local pid
        pid=$(cat "$FOLDER/mlflow.pid")
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"  # setsid: the server and its workers are one group
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
        say "mlflow server stopped"
    fi
    rm -f "$FOLDER/mlflow.pid"
    if [ -s "$FOLDER/pg/PG_VERSION" ] && bin=$(pg_bindir); then
        PG_USER=$(stat -c %U "$FOLDER/pg")
        if as_owner "$bin/pg_ctl" -D "$FOLDER/pg" status >/dev/null 2>&1; then
            as_owner "$bin/pg_ctl" -D "$FOLDER/pg" -m fast -w stop >/dev/null
            say "PostgreSQL stopped"
        fi
    fi
}

cmd_status() {
    server_running || die "not running (no live server in $FOLDER)"
    echo "tracking.uri: http://127.0.0.1:$(cat "$FOLDER/mlflow.port")"
}

[ $# -ge 1 ] || usage
case "$1" in
    install) [ $# -eq 1 ] || usage; cmd_install ;;
    start | stop | status)
        [ $# -eq 2 ] || usage
        mkdir -p "$2"
        FOLDER=$(cd "$2" && pwd)
        "cmd_$1"
        ;;
    *) usage ;;
esac
