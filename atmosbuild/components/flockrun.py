"""Run a command holding an exclusive file lock: `flockrun.py LOCKFILE -- ARGV...`.

Terraform's plugin cache is not safe for concurrent writers, so every
`terraform init` that may write to a shared cache runs through this: it
takes `fcntl.flock` on LOCKFILE (waiting for the holder), then *execs* the
command with the lock's descriptor inherited, so the lock is held exactly as
long as the command runs and is released by the kernel when it exits, even
on SIGKILL. Portable to macOS (flock(2) is BSD's). Run as a script with
`python -S -E`: it imports nothing of atmosbuild and starts in ~10 ms.
"""

import fcntl
import os
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: flockrun.py LOCKFILE -- COMMAND [ARG...]\n")
        return 2
    lock, command = argv[0], argv[2:]
    os.makedirs(os.path.dirname(os.path.abspath(lock)), exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.set_inheritable(fd, True)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.stderr.write(f"cannot run {command[0]}: {exc.strerror or exc}\n")
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
