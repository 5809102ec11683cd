"""Make every attempt to reach beyond loopback fail loudly during tests.

``install_loopback_guard()`` patches ``socket.socket.connect`` / ``connect_ex`` (which
``ssl.SSLSocket``, ``http.client``, urllib3/requests and asyncio's ``loop.create_connection`` /
``sock_connect`` all end up calling), ``socket.create_connection`` and ``socket.getaddrinfo``
(so a DNS lookup of a real host name, which is what aiohttp and requests do first, fails at once
instead of timing out).  Allowed: 127.0.0.0/8, ::1, IPv4-mapped loopback, ``localhost``,
unix sockets and non-IP families.  Anything else raises
``RuntimeError("non-loopback connection attempted: ...")`` (``NonLoopbackConnectionError``).
It returns an ``uninstall`` callable; ``uninstall_loopback_guard()`` removes it unconditionally.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "NonLoopbackConnectionError",
    "install_loopback_guard",
    "is_loopback_host",
    "loopback_guard_installed",
    "uninstall_loopback_guard",
]


class NonLoopbackConnectionError(RuntimeError):
    """Raised for a connection or name lookup that would leave this machine."""


_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_lock = threading.Lock()
_installed: dict[str, Any] = {}
_allowed: set[str] = set()


def is_loopback_host(host: object) -> bool:
    """True for a loopback IP literal or a local name (``localhost``, ``*.localhost``, allowed)."""
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    if not isinstance(host, str) or not host:
        return False
    name = host.lower().rstrip(".")
    if name in _LOCAL_NAMES or name.endswith(".localhost") or name in _allowed:
        return True
    try:
        ip = ipaddress.ip_address(name.split("%", 1)[0].strip("[]"))
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def _refuse(what: str) -> NonLoopbackConnectionError:
    return NonLoopbackConnectionError(f"non-loopback connection attempted: {what}")


def _check_address(family: int, address: Any) -> None:
    if family not in (socket.AF_INET, socket.AF_INET6):
        return  # AF_UNIX paths, netlink, ...: never leave the machine
    host = address[0] if isinstance(address, tuple) and address else address
    if not is_loopback_host(host):
        raise _refuse(repr(address))


def install_loopback_guard(allow_hosts: Iterable[str] = ()) -> Callable[[], None]:
    """Patch the socket layer so only loopback is reachable; returns a function that undoes it.

    ``allow_hosts`` adds host names or addresses that are also allowed.  If the guard is already
    installed this only extends ``allow_hosts`` and returns a no-op, so a nested user cannot
    remove a guard someone else (e.g. conftest) installed."""
    with _lock:
        _allowed.update(h.lower() for h in allow_hosts)
        if _installed:
            return lambda: None
        sock_cls = socket.socket
        real_connect = sock_cls.connect
        real_connect_ex = sock_cls.connect_ex
        real_create_connection = socket.create_connection
        real_getaddrinfo = socket.getaddrinfo
        own_name = socket.gethostname().lower()

        def connect(self: socket.socket, address: Any) -> None:
            _check_address(self.family, address)
            return real_connect(self, address)

        def connect_ex(self: socket.socket, address: Any) -> int:
            _check_address(self.family, address)
            return real_connect_ex(self, address)

        def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
            if not is_loopback_host(address[0]):
                raise _refuse(f"create_connection({address!r})")
            return real_create_connection(address, *args, **kwargs)

        def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
            text = host.decode(errors="replace") if isinstance(host, bytes) else host
            if text and not is_loopback_host(text) and text.lower() != own_name:
                try:
                    ipaddress.ip_address(str(text).split("%", 1)[0])
                except ValueError:
                    raise _refuse(f"DNS lookup of {text!r}") from None
                # a non-loopback IP literal resolves to itself; connect() will refuse it
            return real_getaddrinfo(host, *args, **kwargs)

        _installed.update(
            had_connect="connect" in sock_cls.__dict__,
            had_connect_ex="connect_ex" in sock_cls.__dict__,
            connect=real_connect,
            connect_ex=real_connect_ex,
            create_connection=real_create_connection,
            getaddrinfo=real_getaddrinfo,
        )
        sock_cls.connect = connect  # type: ignore[method-assign,assignment]
        sock_cls.connect_ex = connect_ex  # type: ignore[method-assign,assignment]
        socket.create_connection = create_connection  # type: ignore[assignment]
        socket.getaddrinfo = getaddrinfo
        return uninstall_loopback_guard


def loopback_guard_installed() -> bool:
    return bool(_installed)


def uninstall_loopback_guard() -> None:
    """Restore the original socket functions (no-op if the guard is not installed)."""
    with _lock:
        if not _installed:
            return
        sock_cls = socket.socket
        for name in ("connect", "connect_ex"):
            if _installed[f"had_{name}"]:
                setattr(sock_cls, name, _installed[name])
            else:
                delattr(sock_cls, name)
        socket.create_connection = _installed["create_connection"]
        socket.getaddrinfo = _installed["getaddrinfo"]
        _installed.clear()
        _allowed.clear()
