"""`--help` of every command and subcommand: a one-line description, defaults, two or more
examples, and no references to files the repository does not ship or to issue numbers."""

import os
import re
import subprocess
import sys

import pytest

from tests.train_helpers import REPO

COMMANDS = [("convert.py",), ("data.py",), ("data.py", "inspect"), ("data.py", "check"),
            ("demo.py",), ("generate.py",), ("generate.py", "chat"), ("generate.py", "run"),
            ("generate.py", "caption"), ("train.py",), ("plan.py",)]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_describes_the_command_with_examples_and_defaults(command):
    script, *sub = command
    result = subprocess.run([sys.executable, os.path.join(REPO, "launch", script), *sub, "--help"],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr
    text = result.stdout
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    description = next(p for p in paragraphs if not p.startswith("usage:"))
    assert description.endswith((".", "?")), description  # a whole sentence, not cut
    assert "examples:" in text
    examples = [line for line in text.splitlines() if line.strip().startswith("python launch/")]
    assert len(examples) >= 2, text
    subcommands = [c[1] for c in COMMANDS if c[0] == script and len(c) > 1]
    if sub or not subcommands:
        assert "(default: " in text
    for name in subcommands if not sub else ():  # each listed with its one-line summary
        assert re.search(rf"^    {name} +\w", text, re.MULTILINE), (name, text)
    assert not re.search(r"§|issue \d|\(issue", text), text
