"""One source for every default: dipsy_ui.config. Nothing else may type a default as a literal."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import dipsy_ui
from dipsy_ui.config import NEGATIVE_MODES, SCHEDULER_NAMES, GenerationConfig, TrainConfig

PACKAGE = Path(dipsy_ui.__file__).parent
# The settings the issue names: guidance weights, scale, temperature, lr, epochs, rank, lambda.
GUARDED = (
    "w_text",
    "w_pos",
    "w_neg",
    "ip_adapter_scale",
    "temperature",
    "lr",
    "epochs",
    "lora_rank",
    "lambda_real",
)
DEFAULTS = {
    f.name: f.default
    for config in (GenerationConfig, TrainConfig)
    for f in fields(config)
    if f.name in GUARDED
}


def _number(node) -> float | None:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _number(node.operand)
        return None if value is None else -value
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    return None


def literal_defaults(source: str) -> list[str]:
    """Where ``source`` types one of the guarded defaults as a number."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = node.args.args + node.args.kwonlyargs
            defaults = [None] * (len(node.args.args) - len(node.args.defaults)) + node.args.defaults
            for argument, default in zip(arguments, defaults + node.args.kw_defaults, strict=True):
                if argument.arg in GUARDED and default is not None and _number(default) is not None:
                    found.append(f"line {node.lineno}: parameter {argument.arg}={_number(default)}")
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name = node.target.id
            if name in GUARDED and _number(node.value) == DEFAULTS[name]:
                found.append(f"line {node.lineno}: field {name} = {DEFAULTS[name]}")
        elif isinstance(node, ast.Call):
            flag = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else None
            flag_name = (
                flag.lstrip("-").replace("-", "_")
                if isinstance(flag, str) and flag.startswith("--")
                else None
            )
            for keyword in node.keywords:
                value = _number(keyword.value)
                if value is None:
                    continue
                if keyword.arg in GUARDED and value == DEFAULTS[keyword.arg]:
                    found.append(f"line {node.lineno}: {keyword.arg}={value}")
                elif keyword.arg == "default" and flag_name in {*GUARDED, "scale", "lambda_real"}:
                    found.append(f"line {node.lineno}: {flag} default={value}")
                elif keyword.arg == "value" and value in DEFAULTS.values() and isinstance(value, float):
                    found.append(f"line {node.lineno}: widget value={value} (a config default)")
    return found


def test_no_default_is_typed_outside_config():
    offenders = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "config.py" and (found := literal_defaults(path.read_text(encoding="utf-8")))
    }
    assert not offenders, offenders


def test_the_scan_finds_each_kind_of_typed_default():
    source = """
import argparse, dataclasses
import gradio as gr
def f(w_text=7.5, *, lr=1e-3): pass
@dataclasses.dataclass
class C:
    temperature: float = 0.4
parser = argparse.ArgumentParser()
parser.add_argument("--w-neg", type=float, default=3.0)
call(lambda_real=0.8)
gr.Slider(0, 2, value=0.6)
"""
    found = literal_defaults(source)
    assert len(found) == 6, found


def test_scheduler_names_are_the_pipelines():
    from dipsy_ui.diffusion.pipeline import SCHEDULERS

    assert tuple(SCHEDULERS) == SCHEDULER_NAMES
    assert GenerationConfig().scheduler in SCHEDULER_NAMES and GenerationConfig().negatives in NEGATIVE_MODES
