"""A loopback SMTP server for the email notification tests (aiosmtpd).

It binds 127.0.0.1 on a port the OS picks, prints {"port": N} as its first line, then one
JSON line per message it receives: {"login", "mail_from", "rcpt_tos", "data"} (with
"deferred": true for one it answered 451 under `--defer-first`). It offers no
STARTTLS (no TLS context), which the tests use to prove that a profile requiring STARTTLS
refuses such a server. With `--auth USER:PASSWORD` it requires AUTH (over plain text: a
test-only server) with exactly these credentials, and records the login, never the
password. It exits when its stdin closes, so it never outlives the test.
"""

import argparse
import asyncio
import json
import logging
import socket
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Recorder:
    def __init__(self, defer_first):
        self.defer = defer_first

    async def handle_DATA(self, server, session, envelope):
        record = {
            "login": session.auth_data if session.authenticated else None,
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", errors="replace"),
        }
        if self.defer:
            self.defer = False
            print(json.dumps(dict(record, deferred=True)), flush=True)
            return "451 4.3.0 Try again later"
        print(json.dumps(record), flush=True)
        return "250 2.0.0 Message accepted for delivery"


def authenticator_for(expected):
    user, _, password = expected.partition(":")

    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == user
            and auth_data.password.decode() == password
        )
        # handled=False: aiosmtpd then answers a failure with 535 itself.
        return AuthResult(success=ok, handled=False, auth_data=user if ok else None)

    return authenticate


async def main():
    # aiosmtpd warns about AUTH without TLS: intended here, and noise in test output.
    warnings.simplefilter("ignore")
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)
    parser = argparse.ArgumentParser()
    parser.add_argument("--auth", help="USER:PASSWORD the client must log in with")
    parser.add_argument(
        "--defer-first",
        action="store_true",
        help="answer the first message with 451 (a transient failure)",
    )
    args = parser.parse_args()
    options = {"hostname": "sink.test"}
    if args.auth:
        options.update(
            authenticator=authenticator_for(args.auth),
            auth_required=True,
            auth_require_tls=False,
        )
    recorder = Recorder(args.defer_first)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(recorder, **options), sock=sock
    )
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    asyncio.run(main())
