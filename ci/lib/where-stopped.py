#!/usr/bin/env python3
"""Where a test bed's stopped kernel stands: asks QEMU's monitor (its Unix
socket) for the vCPUs' state, registers and next instructions twice, a few
seconds apart: a vCPU that spins moves, one that waits for an interrupt
that never comes is halted. (Debian's package has no real System.map; its
-dbg package names a bed kernel's addresses, and the bed runs with nokaslr.
An address outside the bed kernel's text is a level-2 guest's.)

    where-stopped.py MONITOR-SOCKET
"""
import re
import socket
import sys
import time

PROMPT = b"(qemu) "
ESCAPES = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")
KEPT = ("RAX", "RSI", "R8 ", "R12", "RIP", "ES ", "CS ", "SS ", "CR0", "EFER")


def read_to_prompt(sock):
    data = b""
    while not data.endswith(PROMPT):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return ESCAPES.sub(b"", data).decode(errors="replace").removesuffix("(qemu) ")


def ask(sock, command):
    sock.sendall(command.encode() + b"\n")
    # The monitor echoes the command line first.
    return read_to_prompt(sock).split("\n", 1)[-1]


def main():
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(10)
    sock.connect(sys.argv[1])
    read_to_prompt(sock)
    for sample in (1, 2):
        if sample == 2:
            time.sleep(3)
        print(f"--- sample {sample}")
        print(ask(sock, "info cpus").strip())
        for line in ask(sock, "info registers").splitlines():
            if line.startswith(KEPT):
                print(line.strip())
        print(ask(sock, "x/6i $pc").strip())


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        print(f"where-stopped: cannot ask QEMU's monitor: {e}")
