"""Refuse network connections beyond loopback in every Python process the tests start.

The tests put this folder on PYTHONPATH, so Snakemake and its jobs load it at start-up too: an
accidental download (a model hub, a dataset URL) fails loudly instead of hanging or succeeding.
"""

import ipaddress
import socket

_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


class NetworkBlocked(OSError):
    pass


def _allowed(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS: refuse


def _guard(address):
    if not _allowed(address):
        raise NetworkBlocked(f"network access blocked by the test suite: {address!r}")


def connect(self, address):
    _guard(address)
    return _connect(self, address)


def connect_ex(self, address):
    _guard(address)
    return _connect_ex(self, address)


_getaddrinfo = socket.getaddrinfo


def getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost") and not _is_ip(host):
        raise NetworkBlocked(f"name resolution blocked by the test suite: {host!r}")
    return _getaddrinfo(host, *args, **kwargs)


def _is_ip(host) -> bool:
    try:
        ipaddress.ip_address(str(host).split("%")[0])
        return True
    except ValueError:
        return False


socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
socket.getaddrinfo = getaddrinfo
