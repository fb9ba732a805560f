"""An SMTP backend for the mail forwarder tests, on Debian's aiosmtpd.

    python3 smtp_backend.py NAME IP SUBMISSION_PORT MX_PORT OUT_DIR USERS_JSON [CERT KEY [proxy]]

- SUBMISSION_PORT: requires AUTH (PLAIN, LOGIN) with the passwords in
  USERS_JSON ({"user": "password"}).
- MX_PORT: no AUTH; accepts recipients whose local part is a key of
  USERS_JSON, 550 5.1.1 for others.
- Both offer XCLIENT (ADDR PORT HELO PROTO), as Postfix does for
  smtpd_authorized_xclient_hosts, and record what it said.
- With CERT and KEY, both offer STARTTLS; with `proxy`, both expect a
  PROXY protocol header and record the address it gave.
- Each message is written to OUT_DIR/<n>.json with the envelope, the raw
  data, the XCLIENT attributes and the backend's name.
"""
import asyncio
import itertools
import json
import os
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword, syntax

name, ip, sub_port, mx_port, out_dir, users_json = sys.argv[1:7]
extra = {}
if len(sys.argv) > 8:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[7], sys.argv[8])
    extra["tls_context"] = context
if len(sys.argv) > 9 and sys.argv[9] == "proxy":
    extra["proxy_protocol_timeout"] = 5
users = json.loads(users_json)
counter = itertools.count(1)


def xtext_decode(value):
    out, i = bytearray(), 0
    while i < len(value):
        if value[i] == "+":
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out += value[i].encode()
            i += 1
    return out.decode("utf-8", "replace")


class XclientSMTP(SMTP):
    @syntax("XCLIENT attribute=value ...")
    async def smtp_XCLIENT(self, arg):
        attrs = {}
        for pair in (arg or "").split():
            key, _, value = pair.partition("=")
            attrs[key.upper()] = xtext_decode(value)
        self.session.xclient = attrs
        # Postfix restarts the session after XCLIENT: greet again, forget HELO.
        self.session.host_name = None
        self.session.extended_smtp = False
        await self.push("220 %s ESMTP after XCLIENT" % self.hostname)


class Handler:
    def __init__(self, mx):
        self.mx = mx

    async def handle_PROXY(self, server, session, envelope, proxy_data):
        # Kept on the connection: STARTTLS starts a new session object.
        server.proxy_seen = [str(proxy_data.src_addr), proxy_data.src_port]
        return True

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return responses[:-1] + ["250-XCLIENT ADDR PORT HELO PROTO"] + responses[-1:]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.mx and address.split("@")[0].split("+")[0].lower() not in users:
            return "550 5.1.1 <%s>: user unknown on %s" % (address, name)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok on %s" % name

    async def handle_DATA(self, server, session, envelope):
        n = next(counter)
        record = {
            "backend": name,
            "port": "mx" if self.mx else "submission",
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "data": envelope.original_content.decode("utf-8", "replace"),
            "xclient": getattr(session, "xclient", None),
            "proxy": getattr(server, "proxy_seen", None),
            "tls": session.ssl is not None,
            "login": session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None,
        }
        path = os.path.join(out_dir, "%s-%d.json" % (name, n))
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 2.0.0 Ok: queued as %s-%d" % (name, n)


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (
        isinstance(auth_data, LoginPassword)
        and users.get(auth_data.login.decode()) == auth_data.password.decode()
    )
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


class XController(Controller):
    def factory(self):
        return XclientSMTP(self.handler, **self.SMTP_kwargs)


sub = XController(
    Handler(False),
    hostname=ip,
    port=int(sub_port),
    server_hostname=name,
    authenticator=authenticator,
    auth_required=True,
    auth_require_tls=False,
    decode_data=False,
    **extra,
)
mx = XController(Handler(True), hostname=ip, port=int(mx_port), server_hostname=name, decode_data=False, **extra)
sub.start()
mx.start()
print("ready", flush=True)
try:
    if os.environ.get("SMTP_BACKEND_FOREVER"):
        import signal

        signal.pause()  # until killed (scripts/demo-mail.sh stop)
    else:
        sys.stdin.read()  # until the test closes stdin (or kills it)
finally:
    sub.stop()
    mx.stop()
