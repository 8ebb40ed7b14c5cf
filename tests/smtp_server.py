"""A real SMTP server for authql's tests: aiosmtpd (PyPI), keeping every message it accepts.

    python smtp_server.py --maildir DIR [--port N] [--tls-cert PEM --tls-key PEM] [--auth USER:PASS]
                          [--reject-prefix PREFIX]

Prints `LISTENING <port>` once it accepts connections, then serves until stdin closes or it
is killed. Each accepted message is written to DIR as `<n>.eml` (the bytes received, as sent
by the client) with `<n>.json` beside it (the envelope: `mail_from`, `rcpt_tos`, the
`smtputf8` flag, whether it came over TLS and after AUTH; and the message as Python's email
package reads it: `subject`, `text`, `html`), the JSON last, so that a reader that finds the
JSON finds the whole message.

--tls-cert/--tls-key: offer STARTTLS and require it before AUTH and MAIL.
--auth: require AUTH (PLAIN or LOGIN) with these credentials before MAIL.
--reject-prefix: answer `550` to RCPT TO for addresses starting with it (a permanent refusal),
counting each refusal in DIR/rejected.count.
--discard: accept every message and keep nothing (a sink for the benchmark).
"""

import argparse
import email
import email.policy
import json
import os
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Keeper:
    def __init__(self, maildir, reject_prefix, discard):
        self.maildir = maildir
        self.reject_prefix = reject_prefix
        self.discard = discard
        self.lock = threading.Lock()
        self.count = len([name for name in os.listdir(maildir) if name.endswith(".json")])
        self.rejected = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject_prefix and address.lower().startswith(self.reject_prefix.lower()):
            with self.lock:
                self.rejected += 1
                write_atomically(
                    os.path.join(self.maildir, "rejected.count"), str(self.rejected).encode()
                )
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.discard:
            return "250 Message accepted for delivery"
        with self.lock:
            self.count += 1
            number = self.count
        base = os.path.join(self.maildir, f"{number:06d}")
        raw = envelope.original_content or envelope.content
        write_atomically(base + ".eml", raw)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        text = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        meta = {
            "subject": str(message.get("subject", "")),
            "text": text.get_content() if text is not None else "",
            "html": html.get_content() if html is not None else "",
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "smtputf8": envelope.smtp_utf8,
            "tls": session.ssl is not None,
            "authenticated": bool(session.authenticated),
        }
        write_atomically(base + ".json", json.dumps(meta).encode())
        return "250 Message accepted for delivery"


def write_atomically(path, data):
    partial = path + ".partial"
    with open(partial, "wb") as file:
        file.write(data)
    os.replace(partial, path)


def authenticator_for(user, password):
    def authenticate(server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = auth_data.login.decode() == user and auth_data.password.decode() == password
        return AuthResult(success=ok)

    return authenticate


def free_port():
    # The Controller checks that it serves by connecting to its port, so it needs the number
    # before it binds: ask the kernel for one.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--maildir", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--auth")
    parser.add_argument("--reject-prefix")
    parser.add_argument("--discard", action="store_true")
    args = parser.parse_args()
    os.makedirs(args.maildir, exist_ok=True)

    options = {"enable_SMTPUTF8": True}
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        options.update(tls_context=context, require_starttls=True)
    if args.auth:
        user, password = args.auth.split(":", 1)
        options.update(
            authenticator=authenticator_for(user, password),
            auth_required=True,
            auth_require_tls=bool(args.tls_cert),
        )
    elif args.tls_cert is None:
        options.update(auth_require_tls=False)

    port = args.port or free_port()
    controller = Controller(
        Keeper(args.maildir, args.reject_prefix, args.discard),
        hostname="127.0.0.1",
        port=port,
        ready_timeout=10,
        **options,
    )
    controller.start()
    print(f"LISTENING {port}", flush=True)
    try:
        # Until the test lets go of stdin (or kills the process).
        sys.stdin.read()
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
