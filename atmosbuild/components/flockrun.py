"""Run a command holding file locks: `flockrun.py [sh:]LOCKFILE... -- ARGV...`
(exclusive locks; `sh:` before a path takes a shared one).

Terraform's plugin cache is not safe for concurrent writers, so every
`terraform init` that may write to a shared cache runs through this: it
takes `fcntl.flock` on each LOCKFILE in the order given (callers sort them,
so two holders never wait on each other in a cycle), waiting for holders,
then *execs* the command with the locks' descriptors inherited, so they are held exactly as
long as the command runs and is released by the kernel when it exits, even
on SIGKILL. Portable to macOS (flock(2) is BSD's). Run as a script with
`python -S -E`: it imports nothing of atmosbuild and starts in ~10 ms.
"""

import fcntl
import os
import sys


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") == 0 or argv.index("--") == len(argv) - 1:
        sys.stderr.write("usage: flockrun.py LOCKFILE... -- COMMAND [ARG...]\n")
        return 2
    split = argv.index("--")
    locks, command = argv[:split], argv[split + 1:]
    for lock in locks:
        mode = fcntl.LOCK_EX
        if lock.startswith("sh:"):
            lock, mode = lock[3:], fcntl.LOCK_SH
        os.makedirs(os.path.dirname(os.path.abspath(lock)), exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, mode)
        os.set_inheritable(fd, True)
    try:
        os.execvp(command[0], command)
    except OSError as exc:
        sys.stderr.write(f"cannot run {command[0]}: {exc.strerror or exc}\n")
        return 127
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
