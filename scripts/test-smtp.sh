# The real SMTP server the tests deliver to: aiosmtpd from PyPI, installed into a virtual
# environment kept outside the clone. Each test that mails starts its own server from
# tests/smtp_server.py with this Python, on a free port. Sourced by scripts/test.

AIOSMTPD_VERSION=1.4.6

# Sets AUTHQL_TEST_SMTP_PYTHON (exported): a Python that has aiosmtpd, installed on first use.
install_aiosmtpd() {
  local venv="${AUTHQL_AIOSMTPD_VENV:-$HOME/.cache/authql-aiosmtpd-$AIOSMTPD_VERSION}"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import aiosmtpd' 2>/dev/null; then
    echo "== installing aiosmtpd $AIOSMTPD_VERSION from PyPI into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || return 1
    "$venv/bin/pip" install --quiet --disable-pip-version-check "aiosmtpd==$AIOSMTPD_VERSION" || return 1
  fi
  export AUTHQL_TEST_SMTP_PYTHON="$venv/bin/python"
}
