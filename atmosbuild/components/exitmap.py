"""Run a command and map its exit codes: `exitmap.py CODEFILE OK,... -- ARGV...`.

`terraform plan -detailed-exitcode` exits 2 when there are changes, which is
an answer, not a failure: this runs ARGV, writes its exit code to CODEFILE,
and exits 0 when the code is one of OK (else with the code itself). It stays
in the action's process group, so a stop reaches the command as it reaches
us. Run as a script with `python -S -E`: it imports nothing of atmosbuild.
"""

import os
import signal
import subprocess
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.stderr.write("usage: exitmap.py CODEFILE OK,... -- COMMAND [ARG...]\n")
        return 2
    codefile, ok, command = argv[0], {int(c) for c in argv[1].split(",")}, argv[3:]
    # The group gets the signal: let the command act on it and report.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    try:
        proc = subprocess.Popen(command, restore_signals=True,
                                preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL)
                                                    for s in (signal.SIGINT, signal.SIGTERM)])
    except OSError as exc:
        sys.stderr.write(f"cannot run {command[0]}: {exc.strerror or exc}\n")
        return 127
    code = proc.wait()
    if code < 0:
        return 128 - code
    with open(codefile + ".tmp", "w") as fh:
        fh.write(str(code))
    os.replace(codefile + ".tmp", codefile)
    return 0 if code in ok else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
