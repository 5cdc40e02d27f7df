"""getaddrinfo / getnameinfo: the results of socket's, through the loop."""

import socket

import pytest


def gai(loop, *args, **kwargs):
    return loop.run_until_complete(loop.getaddrinfo(*args, **kwargs))


@pytest.mark.parametrize("host,port", [
    ("127.0.0.1", 80),
    ("127.0.0.1", "80"),
    ("127.0.0.1", b"80"),
    ("127.0.0.1", None),
    ("127.0.0.1", 0),
    (b"127.0.0.1", 443),
    ("::1", 8080),
    ("0.0.0.0", 1),
    ("::", 0),
    ("::ffff:127.0.0.1", 5),
    ("localhost", 80),
    (None, 80),
])
def test_getaddrinfo_like_socket(loop, host, port):
    if host in ("::1", "::", "::ffff:127.0.0.1") and not socket.has_ipv6:
        pytest.skip("no IPv6")
    expected = socket.getaddrinfo(host, port)
    assert gai(loop, host, port) == expected
    expected = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    assert gai(loop, host, port, type=socket.SOCK_STREAM) == expected


@pytest.mark.parametrize("kwargs", [
    dict(family=socket.AF_INET),
    dict(type=socket.SOCK_DGRAM),
    dict(proto=socket.IPPROTO_TCP),
    dict(flags=socket.AI_PASSIVE),
    dict(flags=socket.AI_NUMERICHOST | socket.AI_CANONNAME),
])
def test_getaddrinfo_arguments(loop, kwargs):
    expected = socket.getaddrinfo("127.0.0.1", 80, **kwargs)
    assert gai(loop, "127.0.0.1", 80, **kwargs) == expected


@pytest.mark.parametrize("host,port,kwargs", [
    ("::1", 80, dict(family=socket.AF_INET)),
    ("127.0.0.1", "http-not-a-service", {}),
    ("not a host name!", 80, dict(flags=socket.AI_NUMERICHOST)),
    ("127.0.0.1", 1.5, {}),
])
def test_getaddrinfo_errors_like_socket(loop, host, port, kwargs):
    with pytest.raises(Exception) as expected:
        socket.getaddrinfo(host, port, **kwargs)
    with pytest.raises(type(expected.value)) as got:
        gai(loop, host, port, **kwargs)
    assert got.value.args == expected.value.args


def test_getaddrinfo_ipv6_zone_id(loop):
    try:
        index = socket.if_nametoindex("lo")
        expected = socket.getaddrinfo("fe80::1%lo", 80,
                                      type=socket.SOCK_STREAM)
    except OSError:
        pytest.skip("no link-local IPv6 with a zone on this machine")
    got = gai(loop, "fe80::1%lo", 80, type=socket.SOCK_STREAM)
    assert got == expected
    assert got[0][4][3] == index
    assert got[0][4][0].startswith("fe80::1")


def test_getaddrinfo_ipv6_numeric_zone_id(loop):
    try:
        index = socket.if_nametoindex("lo")
        expected = socket.getaddrinfo(f"fe80::1%{index}", 80,
                                      type=socket.SOCK_STREAM)
    except OSError:
        pytest.skip("no link-local IPv6 with a zone on this machine")
    got = gai(loop, f"fe80::1%{index}", 80, type=socket.SOCK_STREAM)
    assert got == expected
    assert got[0][4][3] == index


@pytest.mark.parametrize("sockaddr,flags", [
    (("127.0.0.1", 80), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
    (("127.0.0.1", 80), socket.NI_NUMERICHOST),
    (("::1", 443, 0, 0), socket.NI_NUMERICHOST | socket.NI_NUMERICSERV),
    (("127.0.0.1", 22), 0),
])
def test_getnameinfo(loop, sockaddr, flags):
    if ":" in sockaddr[0] and not socket.has_ipv6:
        pytest.skip("no IPv6")
    expected = socket.getnameinfo(sockaddr, flags)
    got = loop.run_until_complete(loop.getnameinfo(sockaddr, flags))
    assert got == expected


def test_getaddrinfo_in_debug_mode(loop):
    loop.set_debug(True)
    assert gai(loop, "127.0.0.1", 80) == socket.getaddrinfo("127.0.0.1", 80)


def test_open_connection_by_name(loop):
    """create_connection resolves through the loop's getaddrinfo."""
    import asyncio

    async def main():
        server = await asyncio.start_server(
            lambda r, w: w.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("localhost", port,
                                                       family=socket.AF_INET)
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    loop.run_until_complete(main())
