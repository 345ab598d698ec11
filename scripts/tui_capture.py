#!/usr/bin/env python3
"""Runs the mwtop UI in a pseudo-terminal (no terminal emulator needed on the
machine), presses keys on a schedule and saves every byte it drew, for
`cargo run --example render_screen` to turn into text elsewhere.
Usage: python3 scripts/tui_capture.py OUT.raw ROWS COLS "key@seconds,..." -- mwtop ARGS...
"""
import fcntl
import os
import pty
import select
import struct
import sys
import termios
import time


def main():
    out, rows, cols, schedule = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    cmd = sys.argv[sys.argv.index("--") + 1:]
    keys = []
    for item in schedule.split(","):
        k, at = item.rsplit("@", 1)
        keys.append((float(at), {"TAB": "\t", "ESC": "\x1b"}.get(k, k).encode()))
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["TERM"] = "xterm-256color"
        os.execvp(cmd[0], cmd)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    start = time.time()
    data = bytearray()
    end = max(at for at, _ in keys) + 2
    while time.time() - start < end:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                data += os.read(fd, 65536)
            except OSError:
                break
        while keys and time.time() - start >= keys[0][0]:
            os.write(fd, keys.pop(0)[1])
    with open(out, "wb") as f:
        f.write(bytes(data))
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    main()
