import sys, time
from tests.e2e.conftest import OpenTerminal, Terminal, runlet, runlet_argv
from tests.e2e.test_terminal import start_detached
from tests.support import Fleet

def test_ro(fleet: Fleet, terminal: OpenTerminal) -> None:
    fleet.start_process("edge-2")
    client = fleet.config_file("edge-1", role="client")
    job = start_detached(client, "sh", "-c", "echo ready; while :; do sleep 0.1; done")
    argv = " ".join(runlet_argv(client, "attach", "--read-only", job))
    t = Terminal(["sh", "-c", f'{argv}; echo "status=$?"; read left; echo "left=[$left]"'], 24, 120)
    try:
        t.wait_text("ready")
        t.send(b"rm -rf nothing\r")
        time.sleep(1)
        t.pump()
        print("SCREEN1", t.lines()[:6])
        t.detach()
        t.pump()
        print("SCREEN2", t.lines()[:6])
        print(runlet(client, "cancel", job).stderr)
        t.wait_text("left=")
        print("SCREEN3", t.lines()[:8])
    finally:
        t.close()

def test_lone_detach_with_output(fleet: Fleet, terminal: OpenTerminal) -> None:
    fleet.start_process("edge-2")
    client = fleet.config_file("edge-1", role="client")
    t = terminal(client, "run", "--on", "edge-2", "--", "sh", "-c", "while :; do date +%N; sleep 0.05; done")
    t.wait_raw()
    t.wait_text("\n")
    t.detach(pause=2.0)
    t.pump()
    print("alive after 2s pause:", t.child.isalive())
    t.send(b"a")
    t0 = time.monotonic()
    print("exit", t.wait_exit(), time.monotonic() - t0, t.lines()[-3:])

def test_double_press_gap(fleet: Fleet, terminal: OpenTerminal) -> None:
    fleet.start_process("edge-2")
    client = fleet.config_file("edge-1", role="client")
    reader = "import sys,os,tty; tty.setraw(0); sys.stdout.write('ready\\r\\n'); sys.stdout.flush()\nwhile True: sys.stdout.write(repr(os.read(0, 10)) + '\\r\\n'); sys.stdout.flush()"
    t = terminal(client, "run", "--on", "edge-2", "--", sys.executable, "-c", reader)
    t.wait_text("ready")
    for i in range(10):
        t.send(b"\x1d"); time.sleep(0.15); t.send(b"\x1d")
        try:
            t.wait_until(lambda: t.text().count("x1d") > i, "echo", timeout=3)
        except AssertionError as e:
            print("round", i, "failed:", t.child.isalive(), t.lines()[-4:])
            return
    print("all ok")
