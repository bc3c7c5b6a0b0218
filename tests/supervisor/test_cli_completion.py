"""`llm-supervisor completion bash|zsh`: scripts generated from the parser, completing in a real bash and zsh."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from supervisor.cli import completion
from supervisor.cli import main as cli

WAIT = 20.0


def _script(shell: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(["completion", shell]) == 0
    return capsys.readouterr().out


def _bash_complete(script: Path, *words: str) -> list[str]:
    """What bash's completion function offers for the command line `words` (the last one being completed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _llm_supervisor; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "--norc", "-c", program], capture_output=True, text=True, timeout=WAIT, check=True)
    return [x for x in done.stdout.splitlines() if x]


@pytest.fixture
def bash_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    path = tmp_path / "llm-supervisor.bash"
    path.write_text(_script("bash", capsys))
    return path


def test_bash_completes_re_to_reload_restart_recover(bash_script: Path) -> None:
    """Sourced in a real bash, `llm-supervisor re<TAB>` offers exactly reload, restart and recover."""
    assert sorted(_bash_complete(bash_script, "llm-supervisor", "re")) == ["recover", "reload", "restart"]


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (("llm-supervisor", "stop", "qwen", "--f"), ["--force"]),
        (("llm-supervisor", "completion", ""), ["bash", "zsh"]),
        (("llm-supervisor", "events", "qwen", "--fo"), ["--follow"]),
        (("llm-supervisor", "check", "--url", ""), []),
    ],
)
def test_bash_completes_options_and_choices(bash_script: Path, words: tuple[str, ...], expected: list[str]) -> None:
    """A subcommand's options and a positional's choices complete; an option's free value gets no guesses."""
    assert _bash_complete(bash_script, *words) == expected


def test_bash_completes_config_to_file_names(bash_script: Path, tmp_path: Path) -> None:
    """`run -c <TAB>` completes file names."""
    (tmp_path / "fleet.yaml").write_text("")
    found = _bash_complete(bash_script, "llm-supervisor", "run", "-c", f"{tmp_path}/fle")
    assert found == [f"{tmp_path}/fleet.yaml"]


def test_every_subcommand_and_option_is_in_both_scripts(capsys: pytest.CaptureFixture[str]) -> None:
    """Both scripts come from the parser: every subcommand and every option string is in them."""
    cmds = completion.commands(cli._parser())
    assert {"check", "recover", "reload", "monitor", "completion", "events"} <= {c.name for c in cmds}
    for shell in ("bash", "zsh"):
        text = _script(shell, capsys)
        for c in cmds:
            assert c.name in text
            for o in c.options:
                for name in o.names:
                    assert name in text, (shell, c.name, name)


def _read_until(fd: int, wanted: list[str]) -> str:
    seen, deadline = "", time.monotonic() + WAIT
    while not all(w in seen for w in wanted):
        left = deadline - time.monotonic()
        assert left > 0, f"never saw {wanted}; got {seen!r}"
        if select.select([fd], [], [], left)[0]:
            seen += os.read(fd, 65536).decode(errors="replace")
    return seen


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completes_re_to_reload_restart_recover(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """In a real interactive zsh (compinit, the script on $fpath), `llm-supervisor re<TAB>` lists the three."""
    (tmp_path / "_llm-supervisor").write_text(_script("zsh", capsys))
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover (the child becomes zsh)
        os.execvpe("zsh", ["zsh", "-f", "-i"], {"PATH": os.environ["PATH"], "TERM": "dumb", "HOME": str(tmp_path)})
    try:
        os.write(fd, f"fpath=({tmp_path} $fpath); autoload -Uz compinit; compinit -u -D; echo READY\n".encode())
        _read_until(fd, ["READY\r\n"])
        os.write(fd, b"llm-supervisor re\t")
        shown = _read_until(fd, ["recover", "reload", "restart"])
        assert "recovery pass" in shown  # the subcommand's help, from the parser
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(fd)
