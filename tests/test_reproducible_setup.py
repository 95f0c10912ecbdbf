"""`make test` runs on pinned versions and compares runtimes at an explicit precision
(issue 13, item 10): checks over the repository's own files."""

import ast
import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement line (PEP 503)."""
    name = re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", name).lower()


def _lines(path: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in path.read_text().splitlines()
            if line.split("#")[0].strip()]  # fmt: skip


def _pins() -> dict[str, str]:
    pins = {}
    for line in _lines(ROOT / "constraints.txt"):
        assert "==" in line, f"constraints.txt must pin exact versions: {line!r}"
        name, version = line.split("==")
        pins[_name(name)] = version
    return pins


def test_make_installs_with_the_constraints_file():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"pip install .*-r requirements-test\.txt -c constraints\.txt", makefile)


def test_every_test_requirement_is_pinned_and_agrees_with_its_pin():
    pins = _pins()
    for line in _lines(ROOT / "requirements-test.txt"):
        name = _name(line)
        assert name in pins, f"{name} is not pinned in constraints.txt"
        if "==" in line:
            assert line.split("==")[1] == pins[name], f"{name}: two different pins"


def test_pyproject_extras_and_test_requirements_name_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        declared |= {_name(r) for r in extra}
    required = {_name(line) for line in _lines(ROOT / "requirements-test.txt")}
    assert declared == required, (
        f"only in pyproject: {sorted(declared - required)}; "
        f"only in requirements-test.txt: {sorted(required - declared)}"
    )
    assert declared <= set(_pins())


def _calls(name: str) -> list[tuple[str, ast.Call]]:
    """Every call of ``name`` (a function or method) in the package, tests and benchmarks."""
    found = []
    for folder in ("src", "tests", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                func = getattr(node, "func", None)
                called = getattr(func, "attr", getattr(func, "id", None))
                if isinstance(node, ast.Call) and called == name:
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return found


def test_every_openvino_compile_sets_f32():
    # OpenVINO picks bf16 by itself on CPUs that have it, and results then differ
    calls = _calls("compile_model")
    assert calls  # the check looks at something
    assert [where for where, call in calls
            if '"INFERENCE_PRECISION_HINT": "f32"' not in ast.unparse(call).replace("'", '"')
            ] == []  # fmt: skip


def test_every_onnxruntime_session_runs_on_the_cpu_provider():
    # The CPU provider runs a float32 model in float32; others (CUDA, TensorRT) may not
    calls = _calls("InferenceSession")
    assert calls
    assert [where for where, call in calls
            if "providers=['CPUExecutionProvider']" not in ast.unparse(call)] == []  # fmt: skip


def test_each_docstring_example_is_skipped_whole_or_not_at_all():
    """``# doctest: +SKIP`` applies to its own line: an example skipped on its first line
    only ran the rest under doctest, and failed (``NameError: small``)."""
    partly = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        block: list[str] = []
        for number, line in enumerate([*path.read_text().splitlines(), ""], 1):
            text = line.strip()
            if text.startswith(">>>"):
                block.append(text)
            elif not text.startswith("...") and block:
                skipped = ["+SKIP" in b for b in block]
                if any(skipped) and not all(skipped):
                    partly.append(f"{path.relative_to(ROOT)}:{number - len(block)}")
                block = []
    assert partly == []
