"""A small DNS server for tests (dnslib, UDP on 127.0.0.1): TXT and CNAME records on demand.

`funnel doctor` asks it through `FUNNEL_DNS_SERVER=127.0.0.1:PORT`:

    with FakeDNS() as dns:
        dns.txt("healinglight.org", "v=spf1 include:sendgrid.net ~all")
        dns.cname("s1._domainkey.healinglight.org", "s1.domainkey.u123.wl.sendgrid.net")

A name it holds nothing for answers NXDOMAIN; a name with other records answers
no records of the type asked (NOERROR), as a real server does.
"""

from __future__ import annotations

import threading
from typing import Any

from dnslib import CNAME, QTYPE, RCODE, RR, TXT, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, records: dict[tuple[str, str], list[str]], lock: threading.Lock) -> None:
        self.records = records
        self.lock = lock

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        kind = QTYPE[request.q.qtype]
        with self.lock:
            known = {k for (n, k) in self.records if n == name}
            values = list(self.records.get((name, kind), []))
            cname = list(self.records.get((name, "CNAME"), []))
        if not known:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if kind == "TXT" and not values and cname:
            values, kind = cname, "CNAME"  # a CNAME answers every type, as it would for real
        for value in values:
            if kind == "TXT":
                chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [""]
                reply.add_answer(RR(name, QTYPE.TXT, rdata=TXT(chunks), ttl=60))
            elif kind == "CNAME":
                reply.add_answer(RR(name, QTYPE.CNAME, rdata=CNAME(value), ttl=60))
        return reply


class FakeDNS:
    """A DNS server on a free loopback UDP port; `address` is what FUNNEL_DNS_SERVER takes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], list[str]] = {}
        self._server = DNSServer(
            _Resolver(self._records, self._lock),
            address="127.0.0.1",
            port=0,
            logger=DNSLogger(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False),
        )

    def txt(self, name: str, *values: str) -> None:
        with self._lock:
            self._records.setdefault((name.lower(), "TXT"), []).extend(values)

    def cname(self, name: str, target: str) -> None:
        with self._lock:
            self._records[(name.lower(), "CNAME")] = [target]

    @property
    def address(self) -> str:
        host, port = self._server.server.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self) -> FakeDNS:
        self._server.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
        self._server.server.server_close()
