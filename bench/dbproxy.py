"""A TCP proxy between cx-connector and its database that can cut the database off.

Used by tests/test_db_outage.py and usable by any benchmark (bench/load.py): point
``database_url`` at the proxy's port instead of the database's, then cut it.

Two ways of going away, as databases do:

``reset``
    Every open connection is reset (RST) and new ones are refused the same way: a
    server restart, a failover, a crashed proxy. Clients notice at once.
``hang``
    Every open connection is reset, and new ones are accepted but never answered: a
    host that is down or unreachable. Clients notice only through their own connect
    timeout (libpq's ``connect_timeout``, which cx-connector sets).

As a module::

    from dbproxy import TcpProxy
    proxy = TcpProxy(("127.0.0.1", 5432))       # listens on 127.0.0.1:<proxy.port>
    proxy.cut("reset"); ...; proxy.restore(); proxy.close()

As a script (prints ``listening on HOST:PORT``, then one line per cut and restore)::

    python bench/dbproxy.py --target 127.0.0.1:5432 --listen 127.0.0.1:6432 \\
        --cut-after 20 --cut-for 10 --mode reset

``--mode both`` resets for the first half of the cut and hangs for the second.
"""

from __future__ import annotations

import argparse
import contextlib
import select
import socket
import struct
import sys
import threading
import time


def _rst_close(sock: socket.socket) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a dead server's host would answer."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    """Forwards ``listen`` to ``target`` until cut; see the module docstring."""

    def __init__(self, target: tuple[str, int], listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.target = target
        self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(listen)
        self.server.listen(256)
        self.host, self.port = self.server.getsockname()[:2]
        self.state = "up"
        self.connections = 0  #: forwarded connections so far
        self.refused = 0  #: connections reset or held while cut
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._held: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="dbproxy", daemon=True)
        self._thread.start()

    # -- control ---------------------------------------------------------------------

    def cut(self, mode: str = "reset") -> None:
        """The database goes away (``reset`` or ``hang``, see the module docstring)."""
        if mode not in ("reset", "hang"):
            raise ValueError("mode is reset or hang")
        with self._lock:
            self.state = mode
            doomed, self._open = list(self._open), set()
        for s in doomed:
            _rst_close(s)

    def restore(self) -> None:
        """The database is back: new connections are forwarded again."""
        with self._lock:
            self.state = "up"
            held, self._held = self._held, []
        for s in held:
            _rst_close(s)

    def close(self) -> None:
        self._closed = True
        self.restore()
        with self._lock:
            doomed, self._open = list(self._open), set()
        for s in doomed:
            _rst_close(s)
        with contextlib.suppress(OSError):
            self.server.close()
        self._thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- forwarding ------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._closed:
            try:
                ready, _, _ = select.select([self.server], [], [], 0.2)
                if not ready:
                    continue
                client, _ = self.server.accept()
            except OSError:
                return
            with self._lock:
                state = self.state
                if state == "hang":
                    self._held.append(client)
                    self.refused += 1
                    continue
            if state == "reset":
                self.refused += 1
                _rst_close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _rst_close(client)
                continue
            with self._lock:
                self._open |= {client, upstream}
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        return
                    peers[s].sendall(data)
        except (OSError, ValueError):  # reset by cut(), or closed under us
            return
        finally:
            with self._lock:
                self._open -= {a, b}
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", type=_address, required=True, help="the database, HOST:PORT")
    p.add_argument("--listen", type=_address, default=("127.0.0.1", 0), help="HOST:PORT (default: any)")
    p.add_argument("--cut-after", type=float, default=None, help="seconds before the cut")
    p.add_argument("--cut-for", type=float, default=10.0, help="seconds the database is away")
    p.add_argument("--mode", choices=("reset", "hang", "both"), default="reset")
    args = p.parse_args()
    with TcpProxy(args.target, args.listen) as proxy:
        print(f"listening on {proxy.host}:{proxy.port}", flush=True)
        try:
            if args.cut_after is None:
                threading.Event().wait()
            time.sleep(args.cut_after)
            if args.mode == "both":
                proxy.cut("reset")
                print("cut (reset)", flush=True)
                time.sleep(args.cut_for / 2)
                proxy.cut("hang")
                print("cut (hang)", flush=True)
                time.sleep(args.cut_for / 2)
            else:
                proxy.cut(args.mode)
                print(f"cut ({args.mode})", flush=True)
                time.sleep(args.cut_for)
            proxy.restore()
            print("restored", flush=True)
            threading.Event().wait()
        except KeyboardInterrupt:
            sys.exit(130)


if __name__ == "__main__":
    main()
