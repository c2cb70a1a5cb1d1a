"""`make demo`: two daemons here; a prompting job started on one, answered from the other.

1. writes two daemon configs (edge-1, edge-2) under .demo/ and one fleet key;
2. starts both daemons (`runlet start`) against the local RabbitMQ;
3. on edge-1, `runlet run --on edge-2 -- <a script that asks "[y/N]">` streams the job live;
4. from edge-2, `runlet send JOB 'y\\r'` answers the prompt, as a user on another device would;
5. shows the output and the exit status (the job exits 3 on purpose), then stops the daemons.

It exits non-zero if anything did not happen as described.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / ".demo"
RUNLET = [sys.executable, "-m", "runlet"]
USER = f"demo{os.getpid()}"
JOB = (
    'echo "deploying build 42 on $(hostname) as $RUNLET_JOB_ID"; '
    'printf "Continue? [y/N] "; read answer; echo "answer=$answer"; '
    '[ "$answer" = y ] && echo "deployed." ; exit 3'
)


def config(node: str) -> Path:
    path = DEMO / f"{node}.toml"
    path.write_text(
        f'role = "daemon"\nuser = "{USER}"\nnode = "{node}"\ndata_dir = "{DEMO / node}"\n'
        'tags = ["demo"]\n[broker]\nurls = ["amqp://guest:guest@127.0.0.1:5672/"]\n'
        f'[jobs]\nmax_parallel = 2\n[crypto]\nkey_file = "{DEMO / "fleet.key"}"\n'
        '[log]\nformat = "json"\n'
    )
    return path


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def wait_ready(log: Path, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited early:\n{log.read_text()}")
        if "broker_ready" in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise SystemExit(f"daemon not ready after {timeout} s:\n{log.read_text()}")


def read_until(
    proc: subprocess.Popen[bytes], pattern: bytes, timeout: float
) -> tuple[bytes, bytes]:
    """Read the job's stdout and stderr until `pattern` shows up in stdout; echo both."""
    assert proc.stdout is not None
    assert proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    out, err = b"", b""
    end = time.monotonic() + timeout
    while pattern not in out and time.monotonic() < end:
        for key, _ in sel.select(0.2):
            chunk = os.read(key.fd, 4096)
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            if key.fileobj is proc.stdout:
                out += chunk
                sys.stdout.buffer.write(chunk)
            else:
                err += chunk
                sys.stderr.buffer.write(chunk)
            sys.stdout.flush()
        if not sel.get_map():
            break
    return out, err


def main() -> int:
    DEMO.mkdir(exist_ok=True)
    edge1, edge2 = config("edge-1"), config("edge-2")
    step("fleet key for both devices")
    subprocess.run([*RUNLET, "-c", str(edge1), "key", "init", "--force"], check=True)
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        step("starting the daemons edge-1 and edge-2")
        for node, cfg in (("edge-1", edge1), ("edge-2", edge2)):
            log = DEMO / f"{node}.log"
            with log.open("wb") as sink:
                proc = subprocess.Popen(
                    [*RUNLET, "-c", str(cfg), "start"], stdout=sink, stderr=sink
                )
            daemons.append(proc)
            wait_ready(log, proc)
            print(f"{node}: running (pid {proc.pid}, log {log.relative_to(ROOT)})")

        step("edge-1: runlet run --on edge-2 -- <a job that asks [y/N]>")
        run = subprocess.Popen(
            [*RUNLET, "-c", str(edge1), "run", "--on", "edge-2", "--", JOB],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = read_until(run, b"[y/N] ", 30)
        found = re.search(rb"job ([0-9a-f]{32})", err)
        if b"[y/N]" not in out or not found:
            raise SystemExit("the prompt never arrived")
        job_id = found.group(1).decode()

        step(f"edge-2: runlet send {job_id} 'y\\r'   (answering from the other device)")
        subprocess.run([*RUNLET, "-c", str(edge2), "send", job_id, "y\\r"], check=True)
        rest, _ = read_until(run, b"\0never\0", 30)
        status = run.wait(30)
        out += rest

        step("result")
        print(f"runlet run exited with status {status} (the job's own exit status)")
        ok = status == 3 and b"answer=y" in out and b"deployed." in out
        print("demo " + ("succeeded" if ok else "FAILED"))
        return 0 if ok else 1
    finally:
        step("stopping the daemons")
        for proc in daemons:
            proc.send_signal(signal.SIGTERM)
        for proc in daemons:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        print("stopped")


if __name__ == "__main__":
    sys.exit(main())
