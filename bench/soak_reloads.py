#!/usr/bin/env python3
"""The reload driver of bench/soak.sh: rewrites keyward's config and the files it names, one
change at a time, and waits for keyward to act on each (its reload counters on /metrics move)
before the next. A cycle of ten changes: CA bundle rollover (old + new CA) and back, Redis
client certificate rotations (key first, then certificate), Redis password and API key
rotations (both values valid upstream), a resource added and removed, a config-only change,
and a broken config (must be refused) followed by the good one again.

    soak_reloads.py DIR ADMIN_PORT SECONDS MIN_RELOADS

DIR holds keyward.yaml's template (keyward.yaml.in), ca.pem/ca.key and the files. Prints one
JSON line at the end: reloads applied and refused, steps, and seconds taken."""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

DIR, ADMIN, SECONDS, MIN_RELOADS = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])


def path(name):
    return os.path.join(DIR, name)


def write(name, text):
    """Write-then-rename, as a secret or certificate manager does."""
    tmp = path(name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path(name))


def counters():
    body = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics", timeout=5).read().decode()
    found = dict(re.findall(r'keyward_config_reloads_total\{result="(\w+)"\} (\d+)', body))
    return int(found.get("success", 0)), int(found.get("error", 0))


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def new_ca(n):
    openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-keyout", path(f"extra-ca-{n}.key"), "-out", path(f"extra-ca-{n}.pem"), "-days", "2",
            "-subj", f"/CN=soak-extra-ca-{n}", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign")
    with open(path(f"extra-ca-{n}.pem")) as f:
        text = f.read()
    for suffix in ("pem", "key"):
        os.remove(path(f"extra-ca-{n}.{suffix}"))
    return text


def new_client(n):
    key, csr, crt = path(f"c{n}.key"), path(f"c{n}.csr"), path(f"c{n}.pem")
    openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-keyout", key, "-out", csr, "-subj", f"/CN=soak-client-{n}")
    with open(path("client.ext"), "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", csr, "-CA", path("ca.pem"), "-CAkey", path("ca.key"), "-CAcreateserial",
            "-days", "2", "-extfile", path("client.ext"), "-out", crt)
    texts = []
    for p in (key, crt):
        with open(p) as f:
            texts.append(f.read())
    for p in (key, csr, crt):
        os.remove(p)
    return texts


with open(path("keyward.yaml.in")) as f:
    TEMPLATE = f.read()
with open(path("ca.pem")) as f:
    CA = f.read()


def config(extra=False, note=0):
    text = TEMPLATE + f"# config change {note}\n"
    if extra:
        text += EXTRA
    return text


EXTRA = open(path("extra.yaml")).read()

start = time.monotonic()
base = counters()
steps = 0
refused_wanted = 0
with_extra = False
note = 0
while True:
    elapsed = time.monotonic() - start
    applied, refused = (a - b for a, b in zip(counters(), base))
    if applied + refused >= MIN_RELOADS and elapsed >= SECONDS:
        break
    if elapsed >= SECONDS * 3:  # keyward too slow to reach MIN_RELOADS: stop anyway
        break
    kind = steps % 10
    before = counters()
    expect_error = False
    if kind == 0:
        write("upstream-ca.pem", CA + new_ca(steps))
    elif kind in (1, 8):
        key, crt = new_client(steps)
        write("client.key", key)
        write("client.pem", crt)
    elif kind == 2:
        write("redis-pw", "pw-a\n" if (steps // 10) % 2 else "pw-b\n")
    elif kind == 3:
        write("api-key", "key-a\n" if (steps // 10) % 2 else "key-b\n")
    elif kind == 4:
        with_extra = True
        write("keyward.yaml", config(with_extra, note))
    elif kind == 5:
        with_extra = False
        write("keyward.yaml", config(with_extra, note))
    elif kind == 6:
        note += 1
        write("keyward.yaml", config(with_extra, note))
    elif kind == 7:
        write("upstream-ca.pem", CA)
    elif kind == 9:
        write("keyward.yaml", config(with_extra, note) + "resources: [this is not valid\n")
        expect_error = True
    # Wait for keyward to act on the change (a rename may be seen as two events: a second
    # reload of the same content is counted too).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        s, e = counters()
        if (e > before[1]) if expect_error else (s > before[0] or e > before[1]):
            break
        time.sleep(0.02)
    else:
        print(json.dumps({"stalled_at_step": steps, "kind": kind}), file=sys.stderr)
    if expect_error:
        refused_wanted += 1
        before = counters()
        write("keyward.yaml", config(with_extra, note))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and counters()[0] <= before[0]:
            time.sleep(0.02)
    steps += 1

applied, refused = (a - b for a, b in zip(counters(), base))
print(json.dumps({
    "steps": steps,
    "reloads_applied": applied,
    "reloads_refused": refused,
    "broken_configs_written": refused_wanted,
    "seconds": round(time.monotonic() - start, 1),
}))
