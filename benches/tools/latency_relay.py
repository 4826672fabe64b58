#!/usr/bin/env python3
"""A TCP relay that adds network latency on loopback, for benches/scripts.sh.

    latency_relay.py LISTEN_PORT TARGET_PORT ONE_WAY_MS [LOG_FILE]

Every chunk read from either side is delivered to the other side ONE_WAY_MS after it was
read, in order (each direction has its own queue and timer, so a slow direction never
holds up the other). The kernel here has no netem, and a user-space relay cannot delay
the kernel's SYN/SYN-ACK, so the TCP handshake is modelled by holding the connection's
first client bytes one extra round trip (2 x ONE_WAY_MS): a client pays connect + data
as it would on a link with that round-trip time (its `connect()` returns at once, and the
round trip shows up in its first answer instead). With ONE_WAY_MS = 0 the relay adds
only its own overhead, which scripts.sh measures and reports.

Written on asyncio's transports and protocols (no stream tasks): a chunk is one
`data_received` call and one timer callback, so the relay adds little beyond the delay.

LOG_FILE, when given, gets one line per accepted connection ("conn <n>").
"""

import asyncio
import collections
import socket
import sys


class Direction:
    """Chunks on their way to one transport, each written when its time has come."""

    def __init__(self, loop, delay):
        self.loop = loop
        self.delay = delay
        self.queue = collections.deque()
        self.timer = None
        self.last_due = 0.0
        self.out = None  # the transport written to, once connected

    def push(self, chunk, extra=0.0):
        # Never earlier than the chunk before: the link keeps order.
        due = max(self.loop.time() + self.delay + extra, self.last_due)
        self.last_due = due
        self.queue.append((due, chunk))
        if self.timer is None and self.out is not None:
            self.flush()

    def flush(self):
        self.timer = None
        now = self.loop.time()
        while self.queue and self.queue[0][0] <= now:
            _, chunk = self.queue.popleft()
            if self.out.is_closing():
                self.queue.clear()
                return
            if chunk is None:
                if self.out.can_write_eof():
                    self.out.write_eof()
                else:
                    self.out.close()
            else:
                self.out.write(chunk)
        if self.queue:
            self.timer = self.loop.call_at(self.queue[0][0], self.flush)

    def attach(self, transport):
        self.out = transport
        if self.queue and self.timer is None:
            self.flush()


class Side(asyncio.Protocol):
    """One end of a relayed connection: what it reads goes to `forward`."""

    def __init__(self, forward, backward, first_extra, on_lost):
        self.forward = forward  # what this side reads goes here
        self.backward = backward  # what this side is sent comes from here
        self.extra = first_extra
        self.on_lost = on_lost
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.backward.attach(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data):
        self.forward.push(data, self.extra)
        self.extra = 0.0

    def eof_received(self):
        self.forward.push(None)
        return True  # keep the other direction open (half close)

    def connection_lost(self, exc):
        self.on_lost(self)


def main():
    listen_port, target_port, one_way_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    log = open(sys.argv[4], "a", buffering=1) if len(sys.argv) > 4 else None
    delay = one_way_ms / 1000.0
    loop = asyncio.new_event_loop()
    count = 0

    def accepted():
        nonlocal count
        count += 1
        if log:
            log.write(f"conn {count}\n")
        to_upstream, to_client = Direction(loop, delay), Direction(loop, delay)
        sides = []

        def lost(side):
            # Either end gone for good: close the other once its queue is written.
            for other in sides:
                if other is not side and other.transport is not None and not other.transport.is_closing():
                    other.backward.push(None)
                    loop.call_at(other.backward.last_due + 0.001, other.transport.close)

        # The handshake's round trip: the client's first bytes leave one RTT late.
        client = Side(to_upstream, to_client, 2 * delay, lost)
        sides.append(client)

        async def connect_upstream():
            try:
                _, up = await loop.create_connection(
                    lambda: Side(to_client, to_upstream, 0.0, lost), "127.0.0.1", target_port
                )
            except OSError:
                if client.transport is not None:
                    client.transport.close()
                return
            sides.append(up)
            if client.transport is not None and client.transport.is_closing():
                lost(client)

        loop.create_task(connect_upstream())
        return client

    server = loop.run_until_complete(loop.create_server(accepted, "127.0.0.1", listen_port, backlog=1024))
    try:
        loop.run_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()
