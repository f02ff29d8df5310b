"""Every sub-command's --help ends with an example, and the example parses."""
import shlex

import pytest

from deepshrink.cli import COMMANDS, EXAMPLES, build_parser


@pytest.mark.parametrize("name", COMMANDS)
def test_every_help_has_an_example_that_parses(name, capsys):
    assert name in EXAMPLES
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args([name, "--help"])
    assert "example: deepshrink " + name in " ".join(capsys.readouterr().out.split())
    parser.parse_args(shlex.split(EXAMPLES[name])[1:])  # raises SystemExit(2) on a stale example
