"""HTTP sessions whose connections go only to addresses the SSRF guard has vetted.

``check_url`` resolves a webhook's host and refuses internal addresses, but ``requests``
would resolve the name again when it connects: a DNS answer that changes in between
(rebinding) could still reach an internal service. Here the connection itself resolves
the host once, vets every address and connects to a vetted one; TLS still verifies the
certificate against the host name.
"""

from __future__ import annotations

import socket
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from webhooks import ssrf


class _VettedConnect:
    """Connection mixin: resolve, vet, then connect to the vetted address itself."""

    allow_private = False
    _dns_host: str
    port: int

    def _new_conn(self) -> socket.socket:
        addresses = ssrf.vetted_addresses(self._dns_host, self.port,
                                          allow_private=self.allow_private)
        name, error = self._dns_host, None
        for address in addresses:
            self._dns_host = address
            try:
                return super()._new_conn()
            except (NewConnectionError, ConnectTimeoutError) as exc:  # try the next address
                error = exc
            finally:
                self._dns_host = name
        raise error or ssrf.UnsafeUrl(f"{name} resolves to no address")


def _pool_classes(allow_private: bool) -> dict[str, type[HTTPConnectionPool]]:
    """urllib3 pool classes for both schemes whose connections vet their addresses."""
    pools: dict[str, type[HTTPConnectionPool]] = {}
    for scheme, pool, connection in (("http", HTTPConnectionPool, HTTPConnection),
                                     ("https", HTTPSConnectionPool, HTTPSConnection)):
        vetted = type(f"Vetted{connection.__name__}", (_VettedConnect, connection),
                      {"allow_private": allow_private})
        pools[scheme] = type(f"Vetted{pool.__name__}", (pool,), {"ConnectionCls": vetted})
    return pools


POOL_CLASSES = {allow: _pool_classes(allow) for allow in (False, True)}


class _VettedAdapter(HTTPAdapter):
    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = POOL_CLASSES[self.allow_private]


def vetted_session(*, allow_private: bool) -> requests.Session:
    """A session for webhook deliveries: no proxies from the environment, vetted sockets."""
    http = requests.Session()
    http.trust_env = False  # no proxies from the environment: the SSRF guard decides
    adapter = _VettedAdapter(allow_private=allow_private)
    http.mount("http://", adapter)
    http.mount("https://", adapter)
    return http
