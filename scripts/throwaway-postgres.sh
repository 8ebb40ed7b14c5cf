# Functions to start and stop a throwaway PostgreSQL server for the tests: a fresh data
# directory under /tmp, listening on 127.0.0.1 on a free port, trust authentication, fsync off
# (the data is thrown away). Sourced by scripts/test and .ci/run.

postgres_bin_dir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

# As root the server runs as the postgres user, which PostgreSQL requires.
as_postgres_user() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi
}

# Sets TEST_DATABASE_URL (exported) and THROWAWAY_POSTGRES_DIR; fails when there is no server.
start_throwaway_postgres() {
  local bin port
  bin=$(postgres_bin_dir) || return 1
  THROWAWAY_POSTGRES_DIR=$(mktemp -d /tmp/authql-postgres.XXXXXX)
  chmod 755 "$THROWAWAY_POSTGRES_DIR"
  [ "$(id -u)" = 0 ] && chown postgres: "$THROWAWAY_POSTGRES_DIR"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_postgres_user "'$bin/initdb' -D '$THROWAWAY_POSTGRES_DIR/data' -U authql --auth=trust -E UTF8 >/dev/null"
  as_postgres_user "'$bin/pg_ctl' -D '$THROWAWAY_POSTGRES_DIR/data' -l '$THROWAWAY_POSTGRES_DIR/log' -w \
    -o \"-p $port -k '$THROWAWAY_POSTGRES_DIR' -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=500\" start >/dev/null"
  export TEST_DATABASE_URL="postgres://authql@127.0.0.1:$port/postgres"
  # The fault tests stop and start this server.
  export TEST_POSTGRES_CTL="$bin/pg_ctl -D $THROWAWAY_POSTGRES_DIR/data"
  echo "== started a throwaway PostgreSQL on 127.0.0.1:$port"
}

stop_throwaway_postgres() {
  local bin
  bin=$(postgres_bin_dir) || return 0
  if [ -n "${THROWAWAY_POSTGRES_DIR:-}" ]; then
    as_postgres_user "'$bin/pg_ctl' -D '$THROWAWAY_POSTGRES_DIR/data' -m immediate stop >/dev/null 2>&1" || true
    rm -rf "$THROWAWAY_POSTGRES_DIR"
  fi
}
