# Functions to start and stop a throwaway highly-available PostgreSQL cluster for the failover
# tests: one etcd (v3 API), three PostgreSQL nodes managed by Patroni (synchronous_mode and
# synchronous_mode_strict, pg_rewind so a crashed primary rejoins as a replica) and HAProxy
# routing one frontend port to the current primary by Patroni's REST health check. Everything listens on 127.0.0.1 on free
# ports, lives in a fresh folder under /tmp, uses trust authentication and fsync off (the data
# is thrown away), and is removed on stop. Needs the Debian packages patroni, etcd-server and
# haproxy, and a PostgreSQL under /usr/lib/postgresql/*/bin. To be sourced.
#
# AUTHQL_PATRONI_REPLICATION=asynchronous starts the cluster without synchronous_mode, to show
# what a failover loses then (README, "High availability"); synchronous is the default.

PATRONI_SCOPE=authql

# postgres_bin_dir and as_postgres_user (PostgreSQL, so Patroni, runs as the postgres user).
# shellcheck source=scripts/throwaway-postgres.sh
source "$(dirname "${BASH_SOURCE[0]}")/throwaway-postgres.sh"

# Prints N distinct free loopback ports, one a line.
patroni_free_ports() {
  python3 -c '
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
for s in socks: print(s.getsockname()[1])' "$1"
}

# Prints the index (1-based) of node NAME in PATRONI_NODE_NAMES.
patroni_node_index() {
  local i=1 name
  for name in $PATRONI_NODE_NAMES; do
    [ "$name" = "$1" ] && { echo "$i"; return 0; }
    i=$((i + 1))
  done
  echo "no Patroni node named '$1'" >&2
  return 1
}

# Prints GET /cluster (JSON) from the first node whose REST API answers.
patroni_cluster_json() {
  local port
  for port in $PATRONI_REST_PORTS; do
    curl -sf --max-time 2 "http://127.0.0.1:$port/cluster" && return 0
  done
  return 1
}

# Prints the cluster as one line a member: name role state timeline lag.
patroni_cluster() {
  patroni_cluster_json | python3 -c '
import json, sys
for m in json.load(sys.stdin).get("members", []):
    print(m.get("name"), m.get("role"), m.get("state"), m.get("timeline", "-"), m.get("lag", "-"))'
}

# Prints the current leader node's name; fails when there is none.
patroni_leader() {
  patroni_cluster_json | python3 -c '
import json, sys
leaders = [m["name"] for m in json.load(sys.stdin).get("members", []) if m.get("role") == "leader"]
print(leaders[0]) if leaders else sys.exit(1)'
}

# Whether the cluster replicates synchronously (AUTHQL_PATRONI_REPLICATION).
patroni_synchronous() {
  [ "${AUTHQL_PATRONI_REPLICATION:-synchronous}" != asynchronous ]
}

# Succeeds when the cluster can lose its leader without losing a commit it acknowledged (a
# running synchronous standby), or, when asynchronous, when every replica is running.
patroni_failover_ready() {
  if patroni_synchronous; then
    patroni_has_sync_standby
  else
    patroni_cluster_json | python3 -c '
import json, sys
members = json.load(sys.stdin).get("members", [])
replicas = [m for m in members if m.get("role") != "leader"]
ok = len(members) == 3 and all(m.get("state") in ("running", "streaming") for m in replicas)
sys.exit(0 if ok else 1)'
  fi
}

# Succeeds when some member is reported as a running synchronous standby.
patroni_has_sync_standby() {
  patroni_cluster_json | python3 -c '
import json, sys
ok = any(m.get("role") == "sync_standby" and m.get("state") in ("running", "streaming")
         for m in json.load(sys.stdin).get("members", []))
sys.exit(0 if ok else 1)'
}

# Prints pg_is_in_recovery() of the node HAProxy routes a new connection to ("f" on a primary).
patroni_haproxy_recovery() {
  PGCONNECT_TIMEOUT=2 "$(postgres_bin_dir)/psql" "$TEST_DATABASE_URL" -XAtqc 'select pg_is_in_recovery()' 2>/dev/null
}

# Starts node NAME's Patroni in the background (its pid in the node's folder).
patroni_start_node() {
  local i node
  i=$(patroni_node_index "$1") || return 1
  node="$THROWAWAY_PATRONI_DIR/$1"
  # Patroni reads PATRONI_* variables as configuration (PATRONI_REST_PORTS would become a section).
  rm -f "$node/patroni.pid"
  as_postgres_user "cd '$node' || exit 1; setsid bash -c 'echo \$\$ >patroni.pid; exec env \
    -u PATRONI_REST_PORTS -u PATRONI_NODE_NAMES /usr/bin/patroni patroni.yml' >>patroni.log 2>&1 </dev/null &"
  for _ in $(seq 1 50); do
    [ -s "$node/patroni.pid" ] && return 0
    sleep 0.1
  done
  echo "Patroni node $1 did not start" >&2
  return 1
}

# Sets TEST_DATABASE_URL (exported, through HAProxy), THROWAWAY_PATRONI_DIR, PATRONI_REST_PORTS
# and PATRONI_NODE_NAMES (exported, node order); fails when the cluster does not come up.
start_throwaway_patroni() {
  local bin ports etcd_port etcd_peer_port haproxy_port i name node pg_port rest_port servers=""
  local synchronous_mode=true
  patroni_synchronous || synchronous_mode=false
  bin=$(postgres_bin_dir) || return 1
  command -v patroni >/dev/null && command -v etcd >/dev/null && command -v haproxy >/dev/null || {
    echo "patroni, etcd and haproxy are needed" >&2
    return 1
  }
  THROWAWAY_PATRONI_DIR=$(mktemp -d /tmp/authql-patroni.XXXXXX)
  export THROWAWAY_PATRONI_DIR
  chmod 755 "$THROWAWAY_PATRONI_DIR"
  [ "$(id -u)" = 0 ] && chown postgres: "$THROWAWAY_PATRONI_DIR"
  ports=($(patroni_free_ports 9))
  etcd_port=${ports[0]} etcd_peer_port=${ports[1]} haproxy_port=${ports[2]}
  export PATRONI_NODE_NAMES="node1 node2 node3"
  export PATRONI_REST_PORTS="${ports[6]} ${ports[7]} ${ports[8]}"

  etcd --name etcd1 --data-dir "$THROWAWAY_PATRONI_DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "etcd1=http://127.0.0.1:$etcd_peer_port" \
    --heartbeat-interval 100 --election-timeout 500 --snapshot-count 10000 \
    --logger zap --log-level warn >"$THROWAWAY_PATRONI_DIR/etcd.log" 2>&1 </dev/null &
  echo $! >"$THROWAWAY_PATRONI_DIR/etcd.pid"
  for i in $(seq 1 101); do
    curl -sf --max-time 1 "http://127.0.0.1:$etcd_port/health" 2>/dev/null | grep -q '"health":"true"' && break
    sleep 0.1
  done
  if [ "$i" = 101 ]; then
    echo "etcd did not start:" >&2
    tail -n 20 "$THROWAWAY_PATRONI_DIR/etcd.log" >&2
    stop_throwaway_patroni
    return 1
  fi

  for i in 1 2 3; do
    name=node$i node="$THROWAWAY_PATRONI_DIR/node$i"
    pg_port=${ports[$((i + 2))]} rest_port=${ports[$((i + 5))]}
    mkdir -p "$node"
    cat >"$node/patroni.yml" <<EOF
scope: $PATRONI_SCOPE
name: $name
log:
  level: INFO
restapi:
  listen: 127.0.0.1:$rest_port
  connect_address: 127.0.0.1:$rest_port
etcd3:
  hosts: 127.0.0.1:$etcd_port
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 5
    maximum_lag_on_failover: 16777216
    synchronous_mode: $synchronous_mode
    synchronous_mode_strict: $synchronous_mode
    postgresql:
      use_pg_rewind: true
      use_slots: true
      remove_data_directory_on_rewind_failure: true
      remove_data_directory_on_diverged_timelines: true
      parameters:
        wal_log_hints: 'on'
        max_connections: 500
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 256MB
        hot_standby: 'on'
  initdb:
    - encoding: UTF8
    - auth: trust
postgresql:
  listen: 127.0.0.1:$pg_port
  connect_address: 127.0.0.1:$pg_port
  data_dir: $node/data
  bin_dir: $bin
  pgpass: $node/pgpass
  authentication:
    superuser:
      username: authql
    replication:
      username: authql
    rewind:
      username: authql
  parameters:
    unix_socket_directories: '$node'
    fsync: 'off'
    synchronous_commit: 'on'
    full_page_writes: 'on'
    shared_buffers: 32MB
  pg_hba:
    - local all all trust
    - host all all 127.0.0.1/32 trust
    - host replication all 127.0.0.1/32 trust
EOF
    servers+="  server $name 127.0.0.1:$pg_port check port $rest_port"$'\n'
  done

  cat >"$THROWAWAY_PATRONI_DIR/haproxy.cfg" <<EOF
global
  maxconn 2000
  stats socket $THROWAWAY_PATRONI_DIR/haproxy.sock mode 600 level admin
defaults
  mode tcp
  timeout connect 2s
  timeout client 1h
  timeout server 1h
  timeout check 1s
listen primary
  bind 127.0.0.1:$haproxy_port
  option httpchk GET /primary
  http-check expect status 200
  default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
$servers
EOF
  [ "$(id -u)" = 0 ] && chown -R postgres: "$THROWAWAY_PATRONI_DIR"/node*
  haproxy -c -q -f "$THROWAWAY_PATRONI_DIR/haproxy.cfg" || {
    stop_throwaway_patroni
    return 1
  }
  haproxy -db -f "$THROWAWAY_PATRONI_DIR/haproxy.cfg" >"$THROWAWAY_PATRONI_DIR/haproxy.log" 2>&1 </dev/null &
  echo $! >"$THROWAWAY_PATRONI_DIR/haproxy.pid"
  export TEST_DATABASE_URL="postgres://authql@127.0.0.1:$haproxy_port/postgres"

  # node1 bootstraps (initdb) alone, then the others clone it with pg_basebackup.
  if patroni_start_node node1; then
    for _ in $(seq 1 600); do
      [ "$(patroni_leader 2>/dev/null)" = node1 ] && break
      patroni_node_pid node1 >/dev/null || break
      sleep 0.2
    done
    patroni_start_node node2 && patroni_start_node node3 || true
  fi
  for _ in $(seq 1 900); do
    if patroni_leader >/dev/null 2>&1 && patroni_failover_ready && [ "$(patroni_haproxy_recovery)" = f ]; then
      echo "== started a throwaway Patroni cluster ($PATRONI_NODE_NAMES, leader $(patroni_leader)," \
        "${AUTHQL_PATRONI_REPLICATION:-synchronous} replication," \
        "etcd on 127.0.0.1:$etcd_port) behind HAProxy on 127.0.0.1:$haproxy_port"
      return 0
    fi
    for name in $PATRONI_NODE_NAMES; do patroni_node_pid "$name" >/dev/null && break; done || break
    sleep 0.2
  done
  echo "the throwaway Patroni cluster did not come up:" >&2
  patroni_cluster >&2 || true
  tail -n 20 "$THROWAWAY_PATRONI_DIR"/etcd.log "$THROWAWAY_PATRONI_DIR"/node*/patroni.log >&2
  stop_throwaway_patroni
  return 1
}

# Prints the pid of node NAME's postmaster, when it runs.
patroni_postmaster_pid() {
  local pid
  pid=$(head -n 1 "$THROWAWAY_PATRONI_DIR/$1/data/postmaster.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# Prints the pid of node NAME's Patroni, when it runs.
patroni_node_pid() {
  local pid
  pid=$(cat "$THROWAWAY_PATRONI_DIR/$1/patroni.pid" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# Prints PID and its descendants, one a line.
patroni_process_tree() {
  local child
  echo "$1"
  for child in $(ps -o pid= --ppid "$1" 2>/dev/null || true); do
    patroni_process_tree "$child"
  done
}

# Waits up to 5 seconds for all of the given pids to be gone.
patroni_wait_gone() {
  local pid alive
  for _ in $(seq 1 50); do
    alive=""
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && return 0
    sleep 0.1
  done
  return 1
}

# Crashes node NAME: kill -9 of its Patroni (with whatever it runs, e.g. pg_rewind), its
# postmaster and the postmaster's children, all at once.
kill_patroni_node() {
  local pids="" pid
  patroni_node_index "$1" >/dev/null || return 1
  if pid=$(patroni_node_pid "$1"); then pids+=" $(patroni_process_tree "$pid")"; fi
  if pid=$(patroni_postmaster_pid "$1"); then pids+=" $(patroni_process_tree "$pid")"; fi
  pids=$(echo $pids | tr ' ' '\n' | sort -un | tr '\n' ' ')
  if [ -z "${pids// /}" ]; then
    echo "Patroni node $1 is not running" >&2
    return 1
  fi
  kill -9 $pids 2>/dev/null || true
  patroni_wait_gone $pids || true
  echo "== killed Patroni node $1 (kill -9 of pids ${pids% })"
}

# Prints the pids of the leader's WAL senders, one a line.
patroni_wal_senders() {
  local leader postmaster
  leader=$(patroni_leader) || return 1
  postmaster=$(patroni_postmaster_pid "$leader") || return 1
  ps -o pid=,args= --ppid "$postmaster" | awk '/walsender/ { print $1 }'
}

# Stops (SIGSTOP) the leader's WAL senders, as a network that holds the replication stream back
# would: an asynchronous primary goes on acknowledging commits the replicas never get; a
# synchronous one makes them wait for its standby. resume_patroni_replication lets them go on
# (a kill -9 of the leader ends them as well).
stall_patroni_replication() {
  local pids
  pids=$(patroni_wal_senders) || return 1
  if [ -z "$pids" ]; then
    echo "no WAL sender is running" >&2
    return 1
  fi
  kill -STOP $pids
  echo $pids >"$THROWAWAY_PATRONI_DIR/stalled"
  echo "== stalled the leader's WAL senders (pids $(echo $pids))"
}

# Stops (SIGSTOP) the leader's client backends (every connection but replication), while the
# WAL senders go on: a commit a backend had written is still streamed to the standbys, and its
# answer never leaves. Killing the leader then loses the answers of commits the new primary has:
# what a client sees when the primary dies between its commit and its reply.
freeze_patroni_backends() {
  local leader postmaster pids
  leader=$(patroni_leader) || return 1
  postmaster=$(patroni_postmaster_pid "$leader") || return 1
  pids=$(ps -o pid=,args= --ppid "$postmaster" | awk '/127\.0\.0\.1\(/ && !/walsender/ { print $1 }')
  if [ -z "$pids" ]; then
    echo "no client backend is running" >&2
    return 1
  fi
  kill -STOP $pids
  echo "== froze the leader's client backends (pids $(echo $pids))"
}

# Makes commits whose answers the kill of the leader will lose, while the standbys get them:
# replication stalled for a second (a synchronous leader's commits wait for the standby, each
# already written to the leader's WAL), the client backends frozen, replication resumed (the
# standby receives and confirms the waiting commits; their backends cannot answer).
lose_patroni_answers() {
  stall_patroni_replication || return 1
  sleep 1
  freeze_patroni_backends || { resume_patroni_replication; return 1; }
  resume_patroni_replication
  sleep 1
}

resume_patroni_replication() {
  local pids
  pids=$(cat "$THROWAWAY_PATRONI_DIR/stalled" 2>/dev/null) || return 0
  kill -CONT $pids 2>/dev/null || true
  rm -f "$THROWAWAY_PATRONI_DIR/stalled"
}

# Starts node NAME's Patroni again: it rejoins as a replica (with pg_rewind when needed).
restart_patroni_node() {
  patroni_node_index "$1" >/dev/null || return 1
  if patroni_node_pid "$1" >/dev/null; then
    echo "Patroni node $1 is still running" >&2
    return 1
  fi
  patroni_start_node "$1" || return 1
  echo "== restarted Patroni node $1"
}

stop_throwaway_patroni() {
  local bin dir="${THROWAWAY_PATRONI_DIR:-}" pid name pids=""
  [ -n "$dir" ] && [ -d "$dir" ] || return 0
  resume_patroni_replication
  bin=$(postgres_bin_dir) || true
  pid=$(cat "$dir/haproxy.pid" 2>/dev/null) || true
  [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; pids+=" $pid"; }
  # Patroni first (kill -9, so that it neither fails over nor restarts PostgreSQL), then an
  # immediate stop of each PostgreSQL, which also frees its shared memory, then whatever is left
  # (a pg_basebackup or pg_rewind that Patroni ran, a postmaster's children).
  for name in ${PATRONI_NODE_NAMES:-node1 node2 node3}; do
    if pid=$(patroni_node_pid "$name"); then
      pids+=" $(patroni_process_tree "$pid")"
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  for name in ${PATRONI_NODE_NAMES:-node1 node2 node3}; do
    if pid=$(patroni_postmaster_pid "$name"); then
      pids+=" $(patroni_process_tree "$pid")"
      [ -n "$bin" ] && as_postgres_user \
        "'$bin/pg_ctl' -D '$dir/$name/data' -m immediate stop >/dev/null 2>&1" || true
    fi
  done
  [ -n "${pids// /}" ] && { kill -9 $pids 2>/dev/null || true; }
  pid=$(cat "$dir/etcd.pid" 2>/dev/null) || true
  [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; pids+=" $pid"; }
  patroni_wait_gone $pids || true
  rm -rf "$dir"
  unset THROWAWAY_PATRONI_DIR
  return 0
}
