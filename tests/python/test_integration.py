"""asyncio's high-level machinery on the loop: streams, servers, pipes,
subprocesses, TLS, sendfile, timeouts.  All of it is asyncio's Python code
driving the loop's readers, writers, timers and callbacks."""

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import sys

import pytest


def test_tcp_echo_server_many_clients(loop):
    async def handle(reader, writer):
        while True:
            data = await reader.read(4096)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def client(port, i):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        payload = (f"client {i} ".encode()) * 1000
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        got = await reader.read()
        writer.close()
        await writer.wait_closed()
        return got == payload

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            results = await asyncio.gather(*(client(port, i)
                                             for i in range(20)))
        return results

    assert loop.run_until_complete(main()) == [True] * 20


def test_stream_large_transfer_with_flow_control(loop):
    size = 8 << 20

    async def main():
        done = loop.create_future()

        async def handle(reader, writer):
            total = 0
            while True:
                chunk = await reader.read(1 << 16)
                if not chunk:
                    break
                total += len(chunk)
                await asyncio.sleep(0)  # a slow reader
            done.set_result(total)
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        block = b"z" * (1 << 20)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        total = await asyncio.wait_for(done, 20)
        server.close()
        await server.wait_closed()
        return total

    assert loop.run_until_complete(main()) == size


def test_unix_socket_streams(loop, tmp_path):
    path = str(tmp_path / "sock")

    async def handle(reader, writer):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_unix_server(handle, path)
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write(b"unix\n")
        line = await reader.readline()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return line

    assert loop.run_until_complete(main()) == b"UNIX\n"


def test_serve_forever_cancelled(loop):
    async def main():
        server = await asyncio.start_server(lambda r, w: w.close(),
                                            "127.0.0.1", 0)
        task = loop.create_task(server.serve_forever())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return server.is_serving()

    assert loop.run_until_complete(main()) is False


def test_read_and_write_pipes(loop):
    async def main():
        r, w = os.pipe()
        reader = asyncio.StreamReader()
        rtr, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb"))
        wtr, _ = await loop.connect_write_pipe(
            asyncio.Protocol, os.fdopen(w, "wb"))
        wtr.write(b"through ")
        wtr.write(b"a pipe")
        wtr.close()
        data = await reader.read()
        rtr.close()
        return data

    assert loop.run_until_complete(main()) == b"through a pipe"


def test_subprocess_exec(loop):
    async def main():
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c",
            "import sys; data = sys.stdin.buffer.read(); "
            "sys.stdout.buffer.write(data[::-1]); sys.exit(3)",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, _ = await proc.communicate(b"x" * 100000 + b"end")
        return out, proc.returncode

    out, rc = loop.run_until_complete(main())
    assert out == b"dne" + b"x" * 100000
    assert rc == 3


def test_subprocess_shell_and_kill(loop):
    async def main():
        proc = await asyncio.create_subprocess_shell(
            "echo started; exec sleep 30", stdout=subprocess.PIPE)
        line = await proc.stdout.readline()
        proc.kill()
        rc = await asyncio.wait_for(proc.wait(), 10)
        return line, rc

    line, rc = loop.run_until_complete(main())
    assert line == b"started\n"
    assert rc == -9


def test_subprocess_many_concurrent(loop):
    async def one(i):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", f"print({i})", stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        return int(out)

    async def main():
        return await asyncio.gather(*(one(i) for i in range(8)))

    assert loop.run_until_complete(main()) == list(range(8))


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("tls")
    key, cert = d / "key.pem", d / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=localhost"],
        check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    return server, client


def test_tls_streams(loop, tls_contexts):
    server_ctx, client_ctx = tls_contexts

    async def handle(reader, writer):
        data = await reader.readexactly(5)
        writer.write(data[::-1])
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0,
                                            ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost")
        writer.write(b"hello")
        got = await reader.read()
        cipher = writer.get_extra_info("cipher")
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass
        server.close()
        await server.wait_closed()
        return got, cipher is not None

    assert loop.run_until_complete(main()) == (b"olleh", True)


def test_start_tls_upgrade(loop, tls_contexts):
    server_ctx, client_ctx = tls_contexts

    async def handle(reader, writer):
        assert await reader.readline() == b"STARTTLS\n"
        writer.write(b"OK\n")
        await writer.drain()
        await writer.start_tls(server_ctx)
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"OK\n"
        transport = writer.transport
        protocol = transport.get_protocol()
        new_transport = await loop.start_tls(
            transport, protocol, client_ctx, server_hostname="localhost")
        writer._transport = new_transport  # what StreamWriter.start_tls does
        new_transport.write(b"secret\n")
        line = await reader.readline()
        new_transport.close()
        server.close()
        await server.wait_closed()
        return line

    if sys.version_info < (3, 11):
        pytest.skip("StreamWriter.start_tls is 3.11+")
    assert loop.run_until_complete(main()) == b"secret\n"


def test_sock_sendfile(loop, tmp_path):
    path = tmp_path / "data"
    payload = os.urandom(1 << 20)
    path.write_bytes(payload)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    try:
        async def reader():
            chunks, total = [], 0
            while total < len(payload):
                chunk = await loop.sock_recv(b, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
            return b"".join(chunks)

        async def main():
            rt = loop.create_task(reader())
            with open(path, "rb") as f:
                sent = await loop.sock_sendfile(a, f)
            return sent, await rt

        sent, got = loop.run_until_complete(main())
        assert sent == len(payload)
        assert got == payload
    finally:
        a.close()
        b.close()


def test_transport_sendfile(loop, tmp_path):
    path = tmp_path / "data"
    payload = os.urandom(300000)
    path.write_bytes(payload)

    async def main():
        got = loop.create_future()

        async def handle(reader, writer):
            got.set_result(await reader.read())
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        with open(path, "rb") as f:
            sent = await loop.sendfile(writer.transport, f)
        writer.close()
        await writer.wait_closed()
        data = await asyncio.wait_for(got, 10)
        server.close()
        await server.wait_closed()
        return sent, data

    sent, data = loop.run_until_complete(main())
    assert sent == len(payload) and data == payload


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.timeout")
def test_timeout_reschedule(loop):
    async def main():
        results = []
        try:
            async with asyncio.timeout(0.01) as cm:
                cm.reschedule(loop.time() + 0.03)
                t0 = loop.time()
                await asyncio.sleep(1)
        except TimeoutError:
            results.append(round(loop.time() - t0, 2) >= 0.02)
        async with asyncio.timeout(None) as cm:
            assert cm.when() is None
            await asyncio.sleep(0)
        async with asyncio.timeout_at(loop.time() + 10):
            await asyncio.sleep(0.001)
        return results

    assert loop.run_until_complete(main()) == [True]


def test_wait_and_as_completed(loop):
    async def value(x):
        await asyncio.sleep(x / 1000)
        return x

    async def main():
        tasks = [loop.create_task(value(x)) for x in (30, 10, 20)]
        done, pending = await asyncio.wait(tasks, timeout=0.015)
        first = sorted(t.result() for t in done)
        order = [await f for f in asyncio.as_completed(tasks)]
        return first, order

    first, order = loop.run_until_complete(main())
    assert first == [10]
    assert sorted(order) == [10, 20, 30]


def test_taskgroup(loop):
    if sys.version_info < (3, 11):
        pytest.skip("TaskGroup is 3.11+")

    async def fail_later():
        await asyncio.sleep(0.005)
        raise ValueError("in group")

    async def sleeper(cancelled):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        cancelled = []
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(fail_later())
                tg.create_task(sleeper(cancelled))
        except ExceptionGroup as eg:  # noqa: F821 (3.11+)
            return [str(e) for e in eg.exceptions], cancelled

    assert loop.run_until_complete(main()) == (["in group"], [True])
