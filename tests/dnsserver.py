"""A small real DNS server on loopback for the tests: it answers questions from a dict of records.

It speaks DNS over UDP and TCP (dnspython builds and reads the packets), so
a verifier's resolver runs its real code against it: ``resolver()`` returns
a dnspython resolver pointed at it, ``txt()`` the function dkimpy's
``verify(dnsfunc=...)`` takes, and ``nameserver`` is the ``doctor.nameservers``
entry that points ``mailout doctor`` at it.

Records of any type are added in zone-file text (``add("efus.example", "MX",
"10 mx.efus.example.")``); a name with records of other types only, or with
names below it, answers "no records" (NOERROR), any other NXDOMAIN. Faults:
``silent`` drops every question unanswered (a server that times out), and a
name in ``servfail`` is answered SERVFAIL. With ``zone`` set, it is that
zone's authoritative server only: a name outside it is answered REFUSED, or
with ``outside = "refer"`` by a referral to the root (no answer, no AA flag,
name servers in the authority section), as authoritative servers do.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset


class DNSServer:
    """Serve ``records`` (name -> TXT text) on 127.0.0.1, UDP and TCP on one port."""

    def __init__(self) -> None:
        #: (name with its final dot, type) -> records in zone-file text.
        self.records: dict[tuple[str, str], list[str]] = {}
        self.queries: list[str] = []
        #: (name, type) of every question, in order.
        self.questions: list[tuple[str, str]] = []
        self.silent = False
        self.servfail: set[str] = set()
        #: The one zone served (e.g. "efus.example"); None: every name.
        self.zone: str | None = None
        self.outside = "refuse"
        self.host = "127.0.0.1"
        self.port = 0
        self._servers: list[socketserver.BaseServer] = []

    def add_txt(self, name: str, text: str) -> None:
        """Publish ``text`` as the only TXT record of ``name`` (split in strings of 255 bytes)."""
        self.records[(_fqdn(name), "TXT")] = [_txt(text)]

    def add(self, name: str, rdtype: str, *values: str) -> None:
        """Add records of ``rdtype`` to ``name``, in zone-file text (TXT: plain text, quoted here)."""
        texts = [_txt(v) if rdtype == "TXT" else v for v in values]
        self.records.setdefault((_fqdn(name), rdtype), []).extend(texts)

    def remove(self, name: str, rdtype: str) -> None:
        """Take away the records of ``rdtype`` at ``name``."""
        self.records.pop((_fqdn(name), rdtype), None)

    @property
    def nameserver(self) -> str:
        """Return this server as a ``doctor.nameservers`` entry: ``127.0.0.1:PORT``."""
        return f"{self.host}:{self.port}"

    def _exists(self, name: str) -> bool:
        return any(owner == name or owner.endswith("." + name) for owner, _ in self.records)

    def answer(self, wire: bytes) -> bytes | None:
        """Return the wire-format response to one query (None: leave it unanswered)."""
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append(name)
        self.questions.append((name, rdtype))
        if self.silent:
            return None
        response = dns.message.make_response(query)
        zone = _fqdn(self.zone) if self.zone else ""
        if zone and name != zone and not name.endswith("." + zone):
            if self.outside == "refuse":
                response.set_rcode(dns.rcode.REFUSED)
            else:
                root = dns.rrset.from_text(".", 60, "IN", "NS", "a.root-servers.net.")
                response.authority.append(root)
            return response.to_wire()
        response.flags |= dns.flags.AA
        texts = self.records.get((name, rdtype))
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif texts:
            rdatas = [dns.rdata.from_text(dns.rdataclass.IN, question.rdtype, text) for text in texts]
            response.answer.append(dns.rrset.from_rdata_list(question.name, 60, rdatas))
        elif not self._exists(name):
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()

    def start(self) -> None:
        server = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = server.answer(data)
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                size = struct.unpack("!H", self.request.recv(2))[0]
                data = b""
                while len(data) < size:
                    data += self.request.recv(size - len(data))
                reply = server.answer(data)
                if reply is not None:
                    self.request.sendall(struct.pack("!H", len(reply)) + reply)

        # UDP takes a free port; TCP the same number, which another socket (a client's
        # outgoing connection, say) may hold: then both let go and try another port.
        for attempt in range(50):
            udp = socketserver.ThreadingUDPServer((self.host, 0), Udp)
            tcp = socketserver.ThreadingTCPServer(
                (self.host, udp.server_address[1]), Tcp, bind_and_activate=False
            )
            try:
                tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.server_bind()
                tcp.server_activate()
                break
            except OSError:
                udp.server_close()
                tcp.server_close()
                if attempt == 49:
                    raise
        self.port = udp.server_address[1]
        for one in (udp, tcp):
            one.daemon_threads = True
            threading.Thread(target=one.serve_forever, daemon=True).start()
            self._servers.append(one)

    def stop(self) -> None:
        for one in self._servers:
            one.shutdown()
            one.server_close()

    def resolver(self) -> dns.resolver.Resolver:
        """Return a dnspython resolver that asks this server only."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.lifetime = 5
        return resolver

    def txt(self, name: bytes, timeout: float = 5) -> bytes | None:
        """Look a TXT record up as dkimpy's ``dnsfunc`` does: the strings joined, or None."""
        try:
            answer = self.resolver().resolve(name.decode("ascii"), "TXT", lifetime=timeout)
        except dns.resolver.NXDOMAIN:
            return None
        return b"".join(answer[0].strings)  # type: ignore[attr-defined]


def _fqdn(name: str) -> str:
    return name.lower().rstrip(".") + "."


def _txt(text: str) -> str:
    """Return ``text`` as a TXT record's zone-file text: quoted strings of 255 bytes at most."""
    data = text.encode("ascii")
    return " ".join(f'"{data[i : i + 255].decode()}"' for i in range(0, len(data), 255)) or '""'


@contextmanager
def running() -> Iterator[DNSServer]:
    server = DNSServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
