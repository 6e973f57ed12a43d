"""``edgeprune load-test`` as a user runs it: help, one-line errors with exit 2. (A real run through the
command: tests/serving/test_loadgen.py, which shares the served set's session fixture.)"""

from __future__ import annotations

import pytest

from tests.cli.test_cli import error_line, run


def test_help(capsys):
    code, out, _ = run(["load-test", "--help"], capsys)
    assert code == 0 and "--fault-at" in out and "--variants" in out


@pytest.mark.parametrize("argv, message", [
    (["--variants", "batch"], "--variants expects NAME:MAX_BATCHxINSTANCES"),
    (["--frame-size", "96"], "--frame-size expects WIDTHxHEIGHT"),
    (["--protocols", "udp"], "--protocols expects http and/or grpc"),
    (["--fps-steps", "2,x"], "--fps-steps expects comma-separated numbers"),
    (["--url", "localhost:8000"], "--url expects HOST:HTTP_PORT,HOST:GRPC_PORT"),
    (["--set", "/nonexistent/set"], "does not exist"),
])
def test_bad_input_is_one_line_exit_2(argv, message, capsys):
    code, _, err = run(["load-test", *argv], capsys)
    assert code == 2 and message in error_line(err)
