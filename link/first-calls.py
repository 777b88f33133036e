# gdb script (`gdb -batch -x link/first-calls.py --args BINARY ARGS...`): runs BINARY natively and
# writes to $FIRST_CALLS_OUT the functions of BINARY's own text in the order they first run, one
# name per line. Used by link/hot-symbols.sh.
#
# Every function of the binary (or each named in $FIRST_CALLS_ONLY) gets a one-shot breakpoint
# before the program's first instruction; each hit writes the function's names (aliases share
# an address) and the breakpoint goes away, so a function costs one stop however often it
# runs. Native execution matters: what runs depends on the CPU (ring's assembly takes ADX,
# VAES, SHA-NI paths where the CPU has them), which an emulator such as valgrind does not
# reproduce.
import os
import subprocess

import gdb

BINARY = gdb.current_progspace().filename
OUT = open(os.environ["FIRST_CALLS_OUT"], "w")

# FIRST_CALLS_ONLY: a file of names to watch (link/resident-functions.py's); all functions
# without it (slow: gdb takes minutes to set ~30,000 breakpoints).
only = None
if os.environ.get("FIRST_CALLS_ONLY"):
    only = set(open(os.environ["FIRST_CALLS_ONLY"]).read().split())
names_at = {}
for line in subprocess.run(
    ["nm", "--defined-only", BINARY], capture_output=True, text=True, check=True
).stdout.splitlines():
    parts = line.split()
    if len(parts) == 3 and parts[1] in "tTwW" and (only is None or parts[2] in only):
        names_at.setdefault(int(parts[0], 16), []).append(parts[2])

for command in [
    "set pagination off",
    "set confirm off",
    "set print thread-events off",
    "set breakpoint always-inserted on",
    # The program's own signals (SIGINT stops keyward; SIGPIPE on a closed socket) go to it.
    "handle SIGINT nostop noprint pass",
    "handle SIGTERM nostop noprint pass",
    "handle SIGPIPE nostop noprint pass",
    "handle SIGHUP nostop noprint pass",
    "starti",
]:
    gdb.execute(command, to_string=True)

# A PIE: the load address is that of the binary's first mapping (offset 0).
pid = gdb.selected_inferior().pid
real = os.path.realpath(BINARY)
base = next(
    int(line.split("-")[0], 16)
    for line in open(f"/proc/{pid}/maps")
    if line.split()[-1] == real and line.split()[2] == "00000000"
)
runtime = {}
for address, names in names_at.items():
    runtime[base + address] = names
    breakpoint = gdb.Breakpoint(f"*{base + address:#x}", internal=True, temporary=True)
    breakpoint.silent = True


def first_call(event):
    if isinstance(event, gdb.BreakpointEvent):
        names = runtime.get(int(gdb.selected_frame().pc()), [])
        OUT.write("".join(f"{name}\n" for name in names))


gdb.events.stop.connect(first_call)
while gdb.selected_inferior().pid:
    try:
        gdb.execute("continue", to_string=True)
    except gdb.error:
        break
OUT.close()
