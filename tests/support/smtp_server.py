#!/usr/bin/python3
"""An SMTP server on loopback for the notification specs (aiosmtpd's Controller).

    smtp_server.py DIR [--tls CERT KEY] [--auth USER PASSWORD] [--reject-rcpt] [--hang-after-data]

Listens on a free port of 127.0.0.1 and writes it to DIR/port once it accepts connections.
Every message received is written to DIR/mail-N.eml (the bytes as received) and
DIR/mail-N.json (envelope: mail_from, rcpt_tos, tls, auth user). Every command that reached
a handler is appended to DIR/commands.log (EHLO, MAIL, RCPT, DATA, AUTH ok/failed), so a
spec can tell that nothing was sent. --tls offers STARTTLS with this certificate; --auth
requires that user and password (AUTH is offered only over TLS, aiosmtpd's default);
--reject-rcpt answers every RCPT with 550; --hang-after-data records the message, then never
answers the end of DATA (a server gone silent). Stops on SIGTERM.
"""
import asyncio
import json
import os
import signal
import socket
import ssl
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Recorder:
    def __init__(self, directory, reject_rcpt, hang=False):
        self.dir = directory
        self.reject_rcpt = reject_rcpt
        self.hang = hang
        self.count = 0
        self.lock = threading.Lock()

    def note(self, line):
        with self.lock, open(os.path.join(self.dir, "commands.log"), "a") as f:
            f.write(line + "\n")

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.note("EHLO " + hostname)
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.note("MAIL " + address)
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.note("RCPT " + address)
        if self.reject_rcpt:
            return "550 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            n = self.count
        base = os.path.join(self.dir, "mail-%d" % n)
        with open(base + ".eml.tmp", "wb") as f:
            f.write(envelope.original_content or envelope.content)
        meta = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "auth": session.auth_data.decode() if isinstance(session.auth_data, bytes) else session.auth_data,
        }
        with open(base + ".json", "w") as f:
            json.dump(meta, f)
        os.rename(base + ".eml.tmp", base + ".eml")
        self.note("DATA %d" % n)
        if self.hang:
            await asyncio.sleep(3600)
        return "250 Message accepted"


def main():
    args = sys.argv[1:]
    directory = args.pop(0)
    kwargs = {}
    reject = False
    hang = False
    auth = None
    while args:
        a = args.pop(0)
        if a == "--tls":
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(args.pop(0), args.pop(0))
            kwargs["tls_context"] = ctx
        elif a == "--auth":
            auth = (args.pop(0), args.pop(0))
        elif a == "--reject-rcpt":
            reject = True
        elif a == "--hang-after-data":
            hang = True
        else:
            sys.exit("smtp_server.py: unknown option " + a)
    recorder = Recorder(directory, reject, hang)
    if auth is not None:
        def authenticator(server, session, envelope, mechanism, data):
            ok = data.login.decode() == auth[0] and data.password.decode() == auth[1]
            recorder.note("AUTH %s %s" % (mechanism, "ok" if ok else "failed"))
            return AuthResult(success=ok, auth_data=data.login if ok else None)
        kwargs["authenticator"] = authenticator
        kwargs["auth_required"] = True
    port = free_port()
    controller = Controller(recorder, hostname="127.0.0.1", port=port, server_hostname="mail.test", **kwargs)
    controller.start()
    with open(os.path.join(directory, "port.tmp"), "w") as f:
        f.write("%d\n" % port)
    os.rename(os.path.join(directory, "port.tmp"), os.path.join(directory, "port"))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
