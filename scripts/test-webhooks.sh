# The webhook receiver the tests deliver to: tests/webhook_receiver.py, which verifies every
# delivery with the `standardwebhooks` library from PyPI, installed into a virtual environment
# kept outside the clone. Sourced by scripts/test.

STANDARDWEBHOOKS_VERSION=1.0.0

# Sets AUTHQL_TEST_WEBHOOK_PYTHON (exported): a Python that has standardwebhooks, installed on
# first use.
install_standardwebhooks() {
  local venv="${AUTHQL_STANDARDWEBHOOKS_VENV:-$HOME/.cache/authql-standardwebhooks-$STANDARDWEBHOOKS_VERSION}"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import standardwebhooks' 2>/dev/null; then
    echo "== installing standardwebhooks $STANDARDWEBHOOKS_VERSION from PyPI into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install --quiet --disable-pip-version-check "standardwebhooks==$STANDARDWEBHOOKS_VERSION" || return 1
  fi
  export AUTHQL_TEST_WEBHOOK_PYTHON="$venv/bin/python"
}
