"""The package's layout: the README's module map is the tree, the engine knows nothing of
Gradio and the UI holds no torch."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import dipsy_ui

PACKAGE = Path(dipsy_ui.__file__).parent
README = PACKAGE.parent / "README.md"


def module_map() -> set[str]:
    """The modules the README's layout block names, as paths relative to the package."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"```\n\s*dipsy_ui/\n(.*?)```", text, re.S)
    assert block, "the README has no dipsy_ui/ module map"
    listed, folder = set(), ""
    for line in block.group(1).splitlines():
        words = line.split()
        if not words:
            continue
        if line.startswith("    ") and not line.startswith("     "):  # a new entry at the top level
            folder = words[0] if words[0].endswith("/") else ""
        for word in (word.rstrip(",;:") for word in words):
            if word.endswith(".py") and "/" not in word:
                listed.add(folder + word)
    return listed


def test_the_readme_module_map_is_the_tree():
    tree = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }
    listed = module_map()
    assert len(listed) > 20, listed  # the parse found the map
    assert listed == tree, {
        "in the README only": sorted(listed - tree),
        "in the tree only": sorted(tree - listed),
    }


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_engine_never_imports_gradio_and_the_ui_never_imports_torch():
    engine = [p for p in PACKAGE.rglob("*.py") if "ui" not in p.relative_to(PACKAGE).parts[:1]]
    ui = list((PACKAGE / "ui").rglob("*.py"))
    assert engine and ui
    assert not [str(p) for p in engine if "gradio" in imports(p)]
    assert not [
        str(p) for p in ui if imports(p) & {"torch", "diffusers", "transformers", "open_clip", "numpy"}
    ]


def test_the_readme_lists_every_endpoint_by_its_name_and_each_input_and_output_is_named(tmp_path):
    """The README's API list is the app's: every public endpoint is listed and every listed one
    exists; no parameter or result is anonymous (``param_3``, ``value_85``) and no name was
    taken twice (``model_status_2``)."""
    from dipsy_ui.studio import Studio
    from dipsy_ui.ui.app import build_app

    endpoints = build_app(Studio(None, tmp_path, demo=True)).get_api_info()["named_endpoints"]
    text = README.read_text(encoding="utf-8")
    section = text[text.index("**Programmatic use**") : text.index("every endpoint with its parameters")]
    assert {name.lstrip("/") for name in endpoints} == set(re.findall(r"`/(\w+)", section))
    for name, endpoint in endpoints.items():
        assert not re.search(r"_\d+$", name), name
        inputs = [p["parameter_name"] for p in endpoint["parameters"]]
        outputs = [r["label"] for r in endpoint["returns"]]
        anonymous = [n for n in inputs + outputs if not n or re.fullmatch(r"(param|value)_\d+", n)]
        assert not anonymous, (name, anonymous)
