"""sink.py - an independent SMTP server (python3-aiosmtpd) that plays an MX
host for integration tests: it accepts, temporarily fails (4xx), rejects
(5xx) or stalls, and records what it received and how many connections it
saw.

    from sink import Sink
    mx = Sink("127.0.0.11", port, tls=(leaf.chain, leaf.key)).start()
    ...
    mx.wait_messages(1)
    msg = mx.messages[0]      # .mail_from, .rcpt_tos, .content (bytes), .tls
    mx.connections            # TCP connections accepted
    mx.stop()

Behaviour, given as data:
  tls=(cert, key)     offer STARTTLS with that certificate chain and key
  pipelining=True     announce PIPELINING (aiosmtpd reads commands in order,
                      so pipelined groups are answered correctly)
  smtputf8=True       announce SMTPUTF8
  tempfail_first=N    answer the first N RCPT commands with 451 4.3.0
  reject=("bad",)     RCPT addresses containing one of these get 550 5.1.1
  reject_all=False    every RCPT gets 550 5.7.1
  greeting_code=None  e.g. 421 or 554: greet with that code and close
  stall=None          "greeting": never send the banner; "data": never answer
                      the final dot; "rcpt": never answer RCPT
  data_delay=0        seconds to wait before answering the final dot (to make
                      sessions overlap); .max_active counts the most sessions
                      open at once, .transactions the RCPTs of each message
The content recorded is what the client sent between DATA and the final dot,
dot-unstuffed, with its CRLFs: it must equal what was submitted, byte for
byte.
"""

import asyncio
import logging
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


# aiosmtpd logs a traceback when a client refuses our certificate, which is
# what some tests want: keep the test output readable.
logging.getLogger("mail.log").setLevel(logging.CRITICAL)


@dataclass
class Message:
    mail_from: str
    rcpt_tos: List[str]
    content: bytes
    tls: bool
    mail_options: List[str] = field(default_factory=list)


class _Handler:
    def __init__(self, sink):
        self.sink = sink

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        out = list(responses)
        if self.sink.pipelining:
            out.insert(1, "250-PIPELINING")
        if not self.sink.smtputf8:
            out = [r for r in out if "SMTPUTF8" not in r]
        # AUTH is not wanted on an MX.
        out = [r for r in out if not r[4:].startswith("AUTH")]
        # The last line must use "250 ".
        out = [r.replace("250 ", "250-", 1) for r in out]
        out[-1] = "250 " + out[-1][4:]
        return out

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        # PIPELINING (RFC 2920): were RCPT and DATA already sent with MAIL?
        pending = bytes(getattr(server._reader, "_buffer", b""))
        if b"DATA" in pending.upper() and b"RCPT" in pending.upper():
            with self.sink.lock:
                self.sink.pipelined_groups += 1
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        s = self.sink
        if s.stall == "rcpt":
            await asyncio.sleep(3600)
        with s.lock:
            s.rcpt_commands += 1
            if s.tempfail_left > 0:
                s.tempfail_left -= 1
                return "451 4.3.0 Temporary failure, try again later"
        if s.reject_all:
            return "550 5.7.1 Delivery not authorized"
        if any(r in address for r in s.reject):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        s = self.sink
        if s.stall == "data":
            await asyncio.sleep(3600)
        if s.data_delay:
            await asyncio.sleep(s.data_delay)
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from
        msg = Message(sender, list(envelope.rcpt_tos), envelope.original_content or
                      envelope.content, bool(session.ssl), list(envelope.mail_options))
        with s.lock:
            s.messages.append(msg)
            s.arrivals.append(time.time())
            n = len(s.messages)
        return "250 2.0.0 Ok: queued as S%d" % n


class _SMTP(SMTP):
    def __init__(self, sink, *args, **kw):
        super().__init__(*args, **kw)
        self.sink = sink

    def connection_made(self, transport):
        with self.sink.lock:
            self.sink.connections += 1
            self.sink.active += 1
            self.sink.max_active = max(self.sink.max_active, self.sink.active)
        super().connection_made(transport)

    def connection_lost(self, exc):
        with self.sink.lock:
            self.sink.active -= 1
        super().connection_lost(exc)

    async def _handle_client(self):
        s = self.sink
        if s.stall == "greeting":
            await asyncio.sleep(3600)
            return
        if s.greeting_code:
            await self.push("%d 4.3.2 Service not available, closing" % s.greeting_code
                            if s.greeting_code < 500 else
                            "%d 5.3.2 No SMTP service here" % s.greeting_code)
            self.transport.close()
            return
        await super()._handle_client()

    async def smtp_STARTTLS(self, arg):
        with self.sink.lock:
            self.sink.starttls += 1
        return await super().smtp_STARTTLS(arg)


class _Controller(Controller):
    def __init__(self, sink, handler, **kw):
        self.sink = sink
        super().__init__(handler, **kw)

    def factory(self):
        return _SMTP(self.sink, self.handler, **self.SMTP_kwargs)


class Sink:
    def __init__(self, host: str, port: int, *, tls: Optional[Tuple[str, str]] = None,
                 pipelining: bool = True, smtputf8: bool = True, tempfail_first: int = 0,
                 reject: Sequence[str] = (), reject_all: bool = False,
                 greeting_code: Optional[int] = None, stall: Optional[str] = None,
                 hostname: str = "mx.test", data_delay: float = 0):
        self.host = host
        self.port = port
        self.tls = tls
        self.pipelining = pipelining
        self.smtputf8 = smtputf8
        self.tempfail_left = tempfail_first
        self.reject = tuple(reject)
        self.reject_all = reject_all
        self.greeting_code = greeting_code
        self.stall = stall
        self.hostname = hostname
        self.data_delay = data_delay
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.messages: List[Message] = []
        self.arrivals: List[float] = []  # time.time() of each message's DATA
        self.connections = 0
        self.starttls = 0
        self.rcpt_commands = 0
        self.pipelined_groups = 0
        self._ctl = None

    def start(self):
        kw = dict(hostname=self.host, port=self.port, server_hostname=self.hostname,
                  decode_data=False, enable_SMTPUTF8=self.smtputf8, data_size_limit=0,
                  ready_timeout=10)
        if self.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self.tls[0], self.tls[1])
            kw["tls_context"] = ctx
            kw["require_starttls"] = False
        self._ctl = _Controller(self, _Handler(self), **kw)
        # The controller checks readiness by connecting itself: that first
        # connection is not a client's.
        self._ctl.start()
        time.sleep(0.1)
        with self.lock:
            self.connections = 0
            self.max_active = self.active
        return self

    def stop(self):
        if self._ctl:
            try:
                self._ctl.stop()
            except Exception:
                pass
            self._ctl = None

    def wait_messages(self, n: int, timeout: float = 30) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    return True
            time.sleep(0.05)
        return False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
