#!/usr/bin/env python3
"""The hostile clients of bench/hostile.sh, on keyward's own listeners, for SECONDS:

  idle       IDLE connections held open and silent (each reopened when keyward closes it)
  slowloris  an HTTP request header, and PostgreSQL / Redis handshakes, one byte per second
  tls        garbage and truncated TLS ClientHellos on a listen_tls port
  oversized  a PostgreSQL startup packet announcing 1 GiB, a RESP bulk header of 2^31-1
  resets     connect-and-reset storms (SO_LINGER 0) on every port

    hostile.py SECONDS IDLE PG_PORT REDIS_PORT HTTP_PORT TLS_PORT

HOSTILE_KINDS (comma-separated; default all) runs only some: idle, slowloris, tls, oversized,
resets — to see which one costs the real clients what.

Prints one JSON line: per kind, connections made and how they ended (closed by keyward with
bytes first, closed silently, refused, still open at the end)."""

import asyncio
import json
import socket
import os
import struct
import sys

SECONDS, IDLE = float(sys.argv[1]), int(sys.argv[2])
PG, REDIS, HTTP, TLS = (int(p) for p in sys.argv[3:7])
KINDS = set(os.environ.get("HOSTILE_KINDS", "idle,slowloris,tls,oversized,resets").split(","))
stats = {}


def count(kind, what):
    stats.setdefault(kind, {}).setdefault(what, 0)
    stats[kind][what] += 1


async def session(kind, port, chunks, pause=0.0, hold=True):
    """Connects, sends `chunks` (pausing between them), then waits for keyward to answer or
    close; records how it ended."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        count(kind, "refused")
        await asyncio.sleep(0.05)
        return
    count(kind, "made")
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        if not hold:
            return
        got = await asyncio.wait_for(reader.read(4096), timeout=SECONDS + 5)
        if got:
            count(kind, "answered_then_closed")
            await reader.read()
        else:
            count(kind, "closed_silently")
    except asyncio.TimeoutError:
        # First: since Python 3.11 this is the builtin TimeoutError, an OSError.
        count(kind, "still_open")
    except (ConnectionError, OSError):
        count(kind, "reset_by_keyward")
    finally:
        writer.close()


async def forever(kind, make, deadline):
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        await make()


async def reset_storm(port, deadline):
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        s = socket.socket()
        s.setblocking(False)
        try:
            await loop.sock_connect(s, ("127.0.0.1", port))
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            count("resets", "made")
        except OSError:
            count("resets", "refused")
        s.close()
        await asyncio.sleep(0.002)


async def main():
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SECONDS
    startup = struct.pack("!ii", 8 + 14 + 13, 196608) + b"user\0app\0database\0app\0\0"
    tasks = []
    # Idle: hold IDLE connections spread over the database ports (silent after connecting).
    for i in range(IDLE if "idle" in KINDS else 0):
        port = (PG, REDIS)[i % 2]
        tasks.append(forever("idle", lambda port=port: session("idle", port, [b""]), deadline))
    # Slowloris: 20 of each, one byte per second.
    header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n"
    redis_cmd = b"*1\r\n$4\r\nPING\r\n"
    for _ in range(20 if "slowloris" in KINDS else 0):
        for kind, port, data in (("slowloris_http", HTTP, header), ("slowloris_pg", PG, startup),
                                 ("slowloris_redis", REDIS, redis_cmd)):
            tasks.append(forever(kind, lambda port=port, data=data, kind=kind: session(
                kind, port, [data[i:i + 1] for i in range(len(data))], pause=1.0), deadline))
    # TLS garbage and truncated ClientHellos.
    hello_head = bytes([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03]) + b"\x11" * 32
    for _ in range(10 if "tls" in KINDS else 0):
        tasks.append(forever("tls_garbage", lambda: session("tls_garbage", TLS, [b"\x16\x03\x01\xff\xff" + b"\xee" * 300]), deadline))
        tasks.append(forever("tls_truncated", lambda: session("tls_truncated", TLS, [hello_head], hold=True), deadline))
    # Oversized: a startup packet announcing 1 GiB, a RESP bulk of 2^31-1.
    for _ in range(10 if "oversized" in KINDS else 0):
        tasks.append(forever("oversized_pg", lambda: session("oversized_pg", PG, [struct.pack("!ii", 1 << 30, 196608) + b"x" * 1000]), deadline))
        tasks.append(forever("oversized_redis", lambda: session("oversized_redis", REDIS, [b"*1\r\n$2147483647\r\n" + b"x" * 1000]), deadline))
    for port in (PG, REDIS, HTTP, TLS) if "resets" in KINDS else ():
        tasks.append(reset_storm(port, deadline))
    await asyncio.wait([asyncio.ensure_future(t) for t in tasks], timeout=SECONDS + 30)


asyncio.run(main())
print(json.dumps(stats, sort_keys=True))
