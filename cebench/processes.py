"""Stages as child processes: their output streamed to the terminal and to run.log at once."""

import codecs
import contextlib
import os
import subprocess
import sys
from pathlib import Path

from cebench.files import write_error

REPO = Path(__file__).resolve().parents[1]


class Tee:
    """Everything printed goes to the terminal and to run.log (progress bars kept at their last state)."""

    def __init__(self, log_path=None):
        try:
            self.log = open(log_path, "a", encoding="utf-8") if log_path else None
        except OSError as err:
            raise write_error(log_path, err) from None
        self._partial = ""

    def write(self, text):
        sys.stdout.write(text)
        sys.stdout.flush()
        if self.log is None:
            return
        *lines, self._partial = (self._partial + text).split("\n")
        try:
            for line in lines:
                self.log.write(line.rstrip("\r").rsplit("\r", 1)[-1] + "\n")
            self.log.flush()
        except OSError as err:
            log, self.log = self.log, None  # the terminal keeps the output; close() must not write again
            with contextlib.suppress(OSError):
                log.close()
            raise write_error(log.name, err) from None
        if "\r" in self._partial.rstrip("\r"):
            self._partial = self._partial.rstrip("\r").rsplit("\r", 1)[-1]

    def print(self, *parts):
        self.write(" ".join(str(p) for p in parts) + "\n")

    def close(self):
        if self.log:
            self.write("" if not self._partial else "\n")
            self.log.close()


def child_env():
    """Unbuffered children that import this checkout even when it is not pip-installed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def run_process(argv, tee, env):
    """Run `python argv...` from the checkout, streaming its output through the tee; returns the exit status."""
    proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
    try:
        while chunk := os.read(proc.stdout.fileno(), 1 << 16):
            tee.write(decode(chunk))
        return proc.wait()
    finally:
        if proc.poll() is None:  # interrupted: give the child (which got the same Ctrl-C) time to save
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.stdout.close()
