"""libpq 17's cancel API (PQcancelCreate / PQcancelBlocking: psycopg's cancel_safe()) through a
keyward listener, used by tests/it/inbound.rs. The cancel travels as its connection did, so on
an sslmode=verify-full connection it goes inside TLS.

usage: pg_cancel.py LIBPQ CONNINFO
       pg_cancel.py psycopg CONNINFO     (psycopg 3's cancel_safe(), with its own libpq)
Prints 'cancel: ok' or 'cancel: FAILED: ...', then the query's error; exit 0 when the cancel
reported success and the query was canceled."""

import ctypes
import sys
import time

if sys.argv[1] == "psycopg":
    import threading

    import psycopg

    conn = psycopg.connect(sys.argv[2])
    print("libpq", psycopg.pq.version())
    outcome = {}

    def cancel():
        time.sleep(0.5)
        try:
            conn.cancel_safe(timeout=10)
            outcome["cancel"] = "ok"
        except Exception as e:  # the failure this test looks for
            outcome["cancel"] = f"FAILED: {e}"

    t = threading.Thread(target=cancel)
    t.start()
    try:
        conn.execute("SELECT pg_sleep(30)")
        error = "not canceled"
    except psycopg.errors.QueryCanceled as e:
        error = str(e)
    t.join()
    print("cancel:", outcome["cancel"])
    print("query:", error)
    sys.exit(0 if outcome["cancel"] == "ok" and "canceling statement" in error else 1)

lib = ctypes.CDLL(sys.argv[1])
lib.PQconnectdb.restype = ctypes.c_void_p
lib.PQconnectdb.argtypes = [ctypes.c_char_p]
lib.PQstatus.argtypes = [ctypes.c_void_p]
lib.PQerrorMessage.restype = ctypes.c_char_p
lib.PQerrorMessage.argtypes = [ctypes.c_void_p]
lib.PQsendQuery.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.PQgetResult.restype = ctypes.c_void_p
lib.PQgetResult.argtypes = [ctypes.c_void_p]
lib.PQresultErrorMessage.restype = ctypes.c_char_p
lib.PQresultErrorMessage.argtypes = [ctypes.c_void_p]
lib.PQclear.argtypes = [ctypes.c_void_p]
lib.PQfinish.argtypes = [ctypes.c_void_p]
lib.PQcancelCreate.restype = ctypes.c_void_p
lib.PQcancelCreate.argtypes = [ctypes.c_void_p]
lib.PQcancelBlocking.argtypes = [ctypes.c_void_p]
lib.PQcancelErrorMessage.restype = ctypes.c_char_p
lib.PQcancelErrorMessage.argtypes = [ctypes.c_void_p]
lib.PQcancelFinish.argtypes = [ctypes.c_void_p]

conn = lib.PQconnectdb(sys.argv[2].encode())
if lib.PQstatus(conn) != 0:
    print("connect: FAILED:", lib.PQerrorMessage(conn).decode().strip())
    sys.exit(2)
if not lib.PQsendQuery(conn, b"SELECT pg_sleep(30)"):
    print("query: FAILED:", lib.PQerrorMessage(conn).decode().strip())
    sys.exit(2)
time.sleep(0.5)
cancel = lib.PQcancelCreate(conn)
ok = lib.PQcancelBlocking(cancel) == 1
if ok:
    print("cancel: ok")
else:
    print("cancel: FAILED:", lib.PQcancelErrorMessage(cancel).decode().strip())
lib.PQcancelFinish(cancel)
errors = []
while True:
    res = lib.PQgetResult(conn)
    if not res:
        break
    errors.append(lib.PQresultErrorMessage(res).decode().strip())
    lib.PQclear(res)
print("query:", " ".join(errors))
lib.PQfinish(conn)
sys.exit(0 if ok and any("canceling statement" in e for e in errors) else 1)
