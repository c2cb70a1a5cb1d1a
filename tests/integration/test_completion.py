"""Shell completion in a real bash: the script `runlet completion bash` prints is sourced and
asked as bash asks at a TAB; node names and job ids come from the real server, and a broker
that is away gives the static choices only, silently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runlet.protocol.messages import Query
from tests.integration.test_server import (
    ServerUnderTest,
    answer_eventually,
    free_port,
    run_job,
)
from tests.integration.test_server import schema as schema  # noqa: PLC0414 - a fixture
from tests.support import REPO, Fleet

# What bash does at a TAB, spelled out: the words so far, the cursor, then the function that
# `complete -F` registered; its COMPREPLY is what bash would offer.
ASK = r"""
source <(runlet completion bash) || exit 3
line="$1"
COMP_LINE="$line"; COMP_POINT=${#line}; COMP_TYPE=9
read -ra COMP_WORDS <<< "$line"
[[ "$line" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
_python_argcomplete runlet "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def complete(line: str, config: Path) -> tuple[list[str], str]:
    """What bash offers after `line`, and what was printed on stderr meanwhile."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNLET_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RUNLET_CONFIG"] = str(config)
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", ASK, "bash", line],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [word.strip() for word in done.stdout.splitlines() if word.strip()], done.stderr


def test_bash_completes_commands_options_and_online_nodes(fleet: Fleet, schema: str) -> None:
    """`runlet pa<TAB>` → pair; `run --on <TAB>` → the online nodes, any, all and their
    tags; `jobs --node e<TAB>` → the node; `attach <TAB>` → the recent job ids."""
    server = ServerUnderTest(fleet, schema)
    server.start()
    try:
        fleet.start_daemon("edge-1", tags=("arm",))
        job = run_job(fleet, "true")
        answer_eventually(fleet, Query("jobs"), lambda rows: len(rows) == 1)
        answer_eventually(fleet, Query("nodes"), lambda rows: [r["online"] for r in rows] == [True])
        config = fleet.config_file("laptop", role="client")
        assert complete("runlet pa", config)[0] == ["pair"]
        assert "--on" in complete("runlet run --", config)[0]
        offered, _ = complete("runlet run --on ", config)
        assert offered == ["edge-1", "any", "all", "tag:arm"]
        assert complete("runlet jobs --node e", config)[0] == ["edge-1"]
        assert complete("runlet attach ", config)[0] == [job]
    finally:
        server.stop()


def test_completion_with_the_broker_away_is_static_and_silent(fleet: Fleet) -> None:
    """No broker on the configured port: `--on` offers any and all, `attach` nothing, and
    nothing is printed on stderr."""
    config = fleet.config_file("laptop", role="client", urls=(f"amqp://127.0.0.1:{free_port()}/",))
    offered, errors = complete("runlet run --on ", config)
    assert (offered, errors) == (["any", "all"], "")
    assert complete("runlet attach ", config) == ([], "")
