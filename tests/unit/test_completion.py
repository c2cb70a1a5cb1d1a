"""Shell completion (runlet.cli.completion): the scripts, where the completers sit in the
argparse tree, and that a completer with nothing to ask returns nothing, silently."""

from __future__ import annotations

import argparse

import pytest

from runlet.cli import build_parser, completion, main


@pytest.mark.parametrize(
    ("shell", "marker"),
    [("bash", "complete -o"), ("zsh", "compdef"), ("fish", "complete --command runlet")],
)
def test_each_shell_gets_its_script(
    capsys: pytest.CaptureFixture[str], shell: str, marker: str
) -> None:
    """`runlet completion SHELL` prints that shell's registration of `runlet`."""
    assert main(["completion", shell]) == 0
    assert marker in capsys.readouterr().out


@pytest.mark.parametrize("shell", ["", "powershell", "bash;rm -rf /", "BASH"])
def test_an_unknown_shell_is_a_usage_error(shell: str) -> None:
    """Anything but bash, zsh or fish: argparse's usage error (exit 2)."""
    with pytest.raises(SystemExit) as info:
        main(["completion", shell])
    assert info.value.code == 2


def _find(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def test_the_completers_sit_on_targets_nodes_and_job_ids() -> None:
    """--on completes targets, node arguments nodes, job ids jobs, in every subcommand."""
    parser = build_parser()
    completion.install_completers(parser)

    def completer(path: tuple[str, ...], dest: str) -> object:
        action = next(a for a in _find(parser, *path)._actions if a.dest == dest)
        return getattr(action, "completer", None)

    assert completer(("run",), "on") is completion.complete_targets
    assert completer(("ping",), "node") is completion.complete_nodes
    assert completer(("jobs",), "node") is completion.complete_nodes
    for command in ("attach", "send", "cancel", "logs", "job"):
        assert completer((command,), "job_id") is completion.complete_jobs


def test_completers_with_no_config_offer_nothing_and_say_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No config anywhere: every dynamic completer returns [] and prints nothing."""
    monkeypatch.delenv("RUNLET_CONFIG", raising=False)
    args = argparse.Namespace(config=None)
    assert completion.complete_nodes("", args) == []
    assert completion.complete_jobs("", args) == []
    assert completion.complete_targets("", args) == ["any", "all"]
    assert completion.complete_targets("a", args) == ["any", "all"]
    assert completion.complete_targets("al", args) == ["all"]
    assert capsys.readouterr() == ("", "")
