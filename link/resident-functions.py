"""Prints the functions of BINARY whose code lies on a page of its text that process PID has
resident (/proc/PID/pagemap; the present bit needs no privilege). Those are the functions the
process may have run: the kernel maps text in windows of 64 KiB and more around each fault, so
this is a superset, which link/first-calls.py then narrows to what ran, in order.

    python3 link/resident-functions.py PID BINARY
"""

import os
import struct
import subprocess
import sys

PAGE = 4096
pid, binary = int(sys.argv[1]), os.path.realpath(sys.argv[2])

# Where the binary's text is mapped, and its load address (a PIE: the mapping at file offset 0;
# runtime address = load address + ELF address).
low = base = None
for line in open(f"/proc/{pid}/maps"):
    fields = line.split()
    if len(fields) < 6 or fields[5] != binary:
        continue
    if int(fields[2], 16) == 0:
        base = int(fields[0].split("-")[0], 16)
    if fields[1] == "r-xp":
        low, high = (int(x, 16) for x in fields[0].split("-"))
if low is None or base is None:
    sys.exit(f"{binary} has no text mapping in process {pid}")

resident = set()
with open(f"/proc/{pid}/pagemap", "rb") as pagemap:
    pagemap.seek(low // PAGE * 8)
    entries = pagemap.read((high - low) // PAGE * 8)
for i in range((high - low) // PAGE):
    (entry,) = struct.unpack_from("<Q", entries, i * 8)
    if entry >> 63:
        resident.add((low - base) // PAGE + i)

symbols = subprocess.run(
    ["nm", "--defined-only", "-S", binary], capture_output=True, text=True, check=True
).stdout
for line in symbols.splitlines():
    fields = line.split()
    if len(fields) == 4 and fields[2] in "tTwW":
        start, size = int(fields[0], 16), max(int(fields[1], 16), 1)
        if any(p in resident for p in range(start // PAGE, (start + size - 1) // PAGE + 1)):
            print(fields[3])
