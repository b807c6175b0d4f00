"""Which addresses our peer connections offer, and which STUN/TURN servers they and their
clients use, from ``StreamSettings``.

aiortc has no setting for the host addresses ICE offers: aioice gathers one host
candidate per interface address (leaving out loopback) through the module function
``aioice.ice.get_host_addresses``. Tests must stay on 127.0.0.1, and a server with
several interfaces should offer only the ones viewers can reach. The least global
way found:

* ``install_host_address_hook`` replaces that function, once per process, with a
  dispatcher that reads a ``ContextVar``; while the variable is unset it calls
  aioice's own function, so any other aiortc user in the process is unaffected;
* ``IcePolicy.scope()`` sets the variable around one negotiation (the candidates are
  gathered inside ``setLocalDescription``, in the awaiting task or tasks it spawns,
  which inherit the context). Two sessions with different policies, even two apps
  in one process, do not see each other's setting.

The public address behind NAT (``ice_public_address``) is added to the answer as a
server-reflexive candidate on the same port as each host candidate, as MediaMTX's
``webrtcAdditionalHosts`` does: the NAT forwards that port to the host socket.

With an empty ``ice_servers`` the peer connection gets ``iceServers=[]``; aiortc
would otherwise add a public Google STUN server by itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator
from contextvars import ContextVar

import aioice.ice
from aioice.candidate import candidate_priority
from aiortc import RTCConfiguration, RTCIceServer

from stream.settings import IceServer, StreamSettings

# Context variables belong at module level (their value is per context, not global):
# None means "no restriction, aioice decides".
_HOST_ADDRESSES: ContextVar[tuple[str, ...] | None] = ContextVar(
    "origincast_ice_host_addresses", default=None
)
# aioice's own function, captured before anything replaces it.
_AIOICE_GET_HOST_ADDRESSES = aioice.ice.get_host_addresses


def _scoped_get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    allowed = _HOST_ADDRESSES.get()
    if allowed is None:
        return _AIOICE_GET_HOST_ADDRESSES(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    return [a for a in allowed if (use_ipv6 if ":" in a else use_ipv4)]


def install_host_address_hook() -> None:
    """Idempotent; call at app start (``IcePolicy.scope`` also calls it)."""
    if aioice.ice.get_host_addresses is not _scoped_get_host_addresses:
        aioice.ice.get_host_addresses = _scoped_get_host_addresses


@contextlib.contextmanager
def host_addresses(addresses: tuple[str, ...] | None) -> Iterator[None]:
    """Offer only ``addresses`` in peer connections negotiated inside this block (None:
    aioice's default). Also for test clients, which must stay on loopback too."""
    install_host_address_hook()
    token = _HOST_ADDRESSES.set(addresses)
    try:
        yield
    finally:
        _HOST_ADDRESSES.reset(token)


class IcePolicy:
    """The ICE side of StreamSettings, for our peer connections and for HTTP clients."""

    def __init__(self, settings: StreamSettings) -> None:
        for a in settings.ice_host_addresses:
            ipaddress.ip_address(a)  # a typo here would silently offer nothing
        if settings.ice_public_address is not None:
            ipaddress.ip_address(settings.ice_public_address)
        self._hosts = tuple(settings.ice_host_addresses) or None
        self._public = settings.ice_public_address
        self._servers = settings.ice_servers

    @property
    def restricted(self) -> bool:
        return self._hosts is not None

    def scope(self) -> contextlib.AbstractContextManager[None]:
        return host_addresses(self._hosts)

    def rtc_configuration(self) -> RTCConfiguration:
        return RTCConfiguration(iceServers=[_rtc_ice_server(s) for s in self._servers])

    def link_headers(self) -> list[str]:
        """``Link: <url>; rel="ice-server"`` values (RFC 9725 4.6) for WHIP/WHEP clients."""
        out = []
        for server in self._servers:
            for url in server.urls:
                value = f'<{url}>; rel="ice-server"'
                if server.username is not None:
                    value += f'; username="{_quote(server.username)}"'
                if server.credential is not None:
                    value += f'; credential="{_quote(server.credential)}"; credential-type="password"'
                out.append(value)
        return out

    def announce(self, sdp: str) -> str:
        """The SDP with the public address added next to each IPv4 host candidate."""
        if self._public is None:
            return sdp
        out = []
        for line in sdp.splitlines():
            out.append(line)
            if not line.startswith("a=candidate:"):
                continue
            parts = line[len("a=candidate:") :].split()
            # foundation component transport priority address port "typ" type ...
            if len(parts) < 8 or parts[7] != "host" or ":" in parts[4] or parts[4] == self._public:
                continue
            component = int(parts[1])
            priority = candidate_priority(component, "srflx")
            out.append(
                f"a=candidate:p{parts[0][:31]} {component} {parts[2]} {priority} {self._public} {parts[5]}"
                f" typ srflx raddr {parts[4]} rport {parts[5]}"
            )
        return "\r\n".join(out) + "\r\n"


def _rtc_ice_server(server: IceServer) -> RTCIceServer:
    return RTCIceServer(urls=list(server.urls), username=server.username, credential=server.credential)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')
