"""The error family: user-fixable errors are DipsyErrors with their message shown as it is;
anything else is a bug, reported with its traceback (CLI) or logged (app)."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import gradio as gr
import pytest

import dipsy_ui
from dipsy_ui import cli, errors
from dipsy_ui.errors import DipsyError, UsageError
from dipsy_ui.ui.common import INTERNAL, readable_errors

PACKAGE = Path(dipsy_ui.__file__).parent


def test_every_exception_class_of_the_package_is_in_the_family():
    defined = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                defined[node.name] = path.relative_to(PACKAGE)
    assert set(defined) - {"DipsyError"}, "no error classes found: the scan is broken"
    assert all(path == Path("errors.py") for path in defined.values()), defined
    for name in defined:
        assert issubclass(getattr(errors, name), DipsyError), name


def test_the_cli_prints_a_user_error_on_one_line(tmp_path, capsys):
    assert cli.main(["make-demo-data", str(tmp_path), "--shots", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "shots" in err and "\n" not in err and "Traceback" not in err


def test_the_cli_lets_a_bug_propagate_with_its_traceback(monkeypatch):
    def bug(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli.setup, "cmd_make_demo_data", bug)
    with pytest.raises(ZeroDivisionError):
        cli.main(["make-demo-data", "unused"])


def test_the_app_shows_a_user_error_as_written():
    @readable_errors
    def action():
        raise UsageError("no data yet: add classes in the Data tab <b>")

    with pytest.raises(gr.Error) as raised:
        action()
    assert raised.value.message == "no data yet: add classes in the Data tab &lt;b&gt;"


@pytest.mark.parametrize("kind", ["function", "generator"])
def test_the_app_reports_a_bug_as_internal_and_logs_its_traceback(kind, caplog):
    def failing():
        raise KeyError("secret internals")

    def failing_stream():
        yield 1
        failing()

    action = readable_errors(failing if kind == "function" else failing_stream)
    with caplog.at_level(logging.ERROR, logger="dipsy_ui"), pytest.raises(gr.Error) as raised:
        list(action()) if kind == "generator" else action()
    assert raised.value.message == INTERNAL and "secret" not in raised.value.message
    assert "KeyError: 'secret internals'" in caplog.text and "Traceback" in caplog.text
