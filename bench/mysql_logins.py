"""Login latency (the MySQL analogue of `pgbench -C`), used by bench/mysql.sh MODE=connect.

Each login is what an app that connects per request pays: connect until PyMySQL holds a usable
session (greeting, TLS if asked, authentication, OK), then one `SELECT 1` and COM_QUIT; only
the connect is timed. Targets are given as NAME=HOST:PORT:USER:PASSWORD[:CA[:reuse]] (an empty
password sends none; a CA turns on verified TLS, with a context made per login as PyMySQL makes
its own, or made once and reused with `:reuse`, the cheapest a direct client can do) and measured in interleaved rounds, so all see the same
machine. Prints p50 / p99 login latency and logins per second per target.

usage: mysql_logins.py LOGINS NAME=HOST:PORT:USER:PASSWORD[:CA[:reuse]] ...
"""

import ssl
import statistics
import sys
import time

import pymysql

logins = int(sys.argv[1])
targets = []
for spec in sys.argv[2:]:
    name, rest = spec.split("=", 1)
    host, port, user, password, *tls = rest.split(":")
    ca = tls[0] if tls else None
    reused = ssl.create_default_context(cafile=ca) if tls[1:] == ["reuse"] else None
    targets.append((name, host, int(port), user, password, ca, reused))

def login(host, port, user, password, ca, reused):
    started = time.perf_counter()
    if ca:
        # A context with the CA: made per connection (as PyMySQL does with ssl_ca), or reused.
        tls = reused or ssl.create_default_context(cafile=ca)
        conn = pymysql.connect(host=host, port=port, user=user, password=password, ssl=tls)
    else:
        # keyward's plaintext loopback listener (README: PyMySQL needs ssl_disabled=True, or
        # it builds a default TLS context with the system store for every connection).
        conn = pymysql.connect(host=host, port=port, user=user, password=password, ssl_disabled=True)
    took = time.perf_counter() - started
    with conn.cursor() as c:
        c.execute("SELECT 1")
        assert c.fetchone() == (1,)
    conn.close()
    return took

times = {t[0]: [] for t in targets}
rounds = 10
for _ in range(rounds):
    for name, *args in targets:
        login(*args)  # warm: the server's thread cache, keyward's first connect
        for _ in range(logins // rounds):
            times[name].append(login(*args))

for name, t in times.items():
    t.sort()
    p50 = statistics.median(t)
    p99 = t[min(len(t) - 1, int(len(t) * 0.99))]
    print(f"{name} p50_ms={p50 * 1000:.2f} p99_ms={p99 * 1000:.2f} logins_per_s={len(t) / sum(t):.0f}")
