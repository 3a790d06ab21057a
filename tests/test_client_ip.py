"""Whose address a request counts as, behind trusted proxies."""

from __future__ import annotations

import ipaddress
from typing import cast
from unittest import mock

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from kindrobots.security.client_ip import client_ip

PROXIES = (ipaddress.ip_network("10.0.0.0/8"),)


def _request(remote: str, *forwarded: str) -> web.BaseRequest:
    headers = CIMultiDict(("X-Forwarded-For", value) for value in forwarded)
    request = make_mocked_request("GET", "/", headers=headers)
    return cast(web.BaseRequest, mock.Mock(remote=remote, headers=request.headers))


def test_an_untrusted_peer_is_its_own_address_whatever_it_claims() -> None:
    assert client_ip(_request("203.0.113.9", "198.51.100.1"), PROXIES) == "203.0.113.9"


def test_the_first_untrusted_hop_from_our_side_counts() -> None:
    request = _request("10.0.0.2", "1.1.1.1, 198.51.100.7, 10.0.0.5")
    assert client_ip(request, PROXIES) == "198.51.100.7"


def test_a_proxy_that_adds_its_own_line_is_read_after_the_clients_line() -> None:
    """HAProxy-style: the client's spoofed header line stays first, the proxy's comes last."""
    request = _request("10.0.0.2", "6.6.6.6", "198.51.100.7")
    assert client_ip(request, PROXIES) == "198.51.100.7"


def test_ports_are_dropped_and_unreadable_hops_are_not_believed() -> None:
    assert client_ip(_request("10.0.0.2", "198.51.100.7:4431"), PROXIES) == "198.51.100.7"
    assert client_ip(_request("10.0.0.2", "[2001:db8::5]:443"), PROXIES) == "2001:db8::5"
    assert client_ip(_request("10.0.0.2", "unknown"), PROXIES) == "10.0.0.2"
