"""A small real DNS server on loopback for the tests: it answers TXT questions from a dict.

It speaks DNS over UDP and TCP (dnspython builds and reads the packets), so
a verifier's resolver runs its real code against it: ``resolver()`` returns
a dnspython resolver pointed at it, ``txt()`` the function dkimpy's
``verify(dnsfunc=...)`` takes.
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
        self.records: dict[str, str] = {}
        self.queries: list[str] = []
        self.host = "127.0.0.1"
        self.port = 0
        self._servers: list[socketserver.BaseServer] = []

    def add_txt(self, name: str, text: str) -> None:
        """Publish ``text`` as the TXT record of ``name`` (split in strings of 255 bytes)."""
        self.records[name.lower().rstrip(".") + "."] = text

    def answer(self, wire: bytes) -> bytes:
        """Return the wire-format response to one query."""
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower()
        self.queries.append(name)
        text = self.records.get(name)
        if text is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.TXT:
            data = text.encode("ascii")
            strings = " ".join(f'"{data[i : i + 255].decode()}"' for i in range(0, len(data), 255))
            rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, strings)
            response.answer.append(dns.rrset.from_rdata(question.name, 60, rdata))
        return response.to_wire()

    def start(self) -> None:
        server = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                sock.sendto(server.answer(data), self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                size = struct.unpack("!H", self.request.recv(2))[0]
                data = b""
                while len(data) < size:
                    data += self.request.recv(size - len(data))
                reply = server.answer(data)
                self.request.sendall(struct.pack("!H", len(reply)) + reply)

        udp = socketserver.ThreadingUDPServer((self.host, 0), Udp)
        self.port = udp.server_address[1]
        tcp = socketserver.ThreadingTCPServer((self.host, self.port), Tcp, bind_and_activate=False)
        tcp.allow_reuse_address = True
        tcp.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        tcp.server_bind()
        tcp.server_activate()
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


@contextmanager
def running() -> Iterator[DNSServer]:
    server = DNSServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
