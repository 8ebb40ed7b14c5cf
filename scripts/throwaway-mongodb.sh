# Functions to start and stop a throwaway MongoDB-wire server for the tests: SecantusDB, a
# MongoDB-compatible server on WiredTiger from PyPI, installed into a virtual environment kept
# outside the clone, listening on 127.0.0.1 on a free port with a fresh data directory under
# /tmp. It runs as a single-node replica set (so multi-document transactions work); the tests
# that need a standalone server or fail points start their own from $TEST_SECANTUSD.
# Sourced by scripts/test.

SECANTUSDB_VERSION=0.7.0b3

# Sets TEST_SECANTUSD (exported): the server's launcher, installed on first use.
install_secantusdb() {
  local venv="${AUTHQL_SECANTUSDB_VENV:-$HOME/.cache/authql-secantusdb-$SECANTUSDB_VERSION}"
  if [ ! -x "$venv/bin/secantusd-py" ]; then
    echo "== installing SecantusDB $SECANTUSDB_VERSION from PyPI into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install --quiet --disable-pip-version-check "secantusdb==$SECANTUSDB_VERSION" || return 1
  fi
  export TEST_SECANTUSD="$venv/bin/secantusd-py"
}

# Sets TEST_DATABASE_URL (exported) and THROWAWAY_MONGODB_DIR; fails when the server cannot
# be installed or does not start.
start_throwaway_mongodb() {
  local port
  install_secantusdb || return 1
  THROWAWAY_MONGODB_DIR=$(mktemp -d /tmp/authql-mongodb.XXXXXX)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$TEST_SECANTUSD" --host 127.0.0.1 --port "$port" --storage-path "$THROWAWAY_MONGODB_DIR/data" \
    --log-level WARNING >"$THROWAWAY_MONGODB_DIR/log" 2>&1 &
  THROWAWAY_MONGODB_PID=$!
  for _ in $(seq 1 300); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null; then
      export TEST_DATABASE_URL="mongodb://127.0.0.1:$port/authql"
      echo "== started a throwaway SecantusDB (MongoDB wire protocol) on 127.0.0.1:$port"
      return 0
    fi
    kill -0 "$THROWAWAY_MONGODB_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$THROWAWAY_MONGODB_DIR/log" >&2
  stop_throwaway_mongodb
  return 1
}

stop_throwaway_mongodb() {
  if [ -n "${THROWAWAY_MONGODB_PID:-}" ]; then
    kill "$THROWAWAY_MONGODB_PID" 2>/dev/null || true
    wait "$THROWAWAY_MONGODB_PID" 2>/dev/null || true
  fi
  [ -n "${THROWAWAY_MONGODB_DIR:-}" ] && rm -rf "$THROWAWAY_MONGODB_DIR"
  return 0
}
