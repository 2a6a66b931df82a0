"""The import rules of docs/ARCHITECTURE.md ("Imports flow one way"), checked statically over every .py file.

Imports are read with `ast` (no module is imported): `import a.b`, `from a import b` (also inside functions and
`if TYPE_CHECKING:`), relative imports resolved against the file's package, `importlib.import_module("a.b")` with
a literal name, and the lazy re-export tables (`_EXPORTS = {"Name": "pkg.module"}`) that `zoo.lazy` resolves.
"""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Folders that hold no project source: environments, caches, and the run outputs that .gitignore lists.
SKIP_DIRS = {".git", ".venv", "venv", "__pycache__", ".ruff_cache", ".pytest_cache", ".benchmarks", "node_modules"}
SKIP_TOP = {"data", "outputs", "exports", "exports_torchscript", "model_repository", "runs"}


@dataclass(frozen=True)
class Rule:
    """Modules under any of `sources` (and not under `exempt`) must not import anything under `forbidden`."""

    text: str
    sources: tuple[str, ...]
    forbidden: tuple[str, ...]
    exempt: tuple[str, ...] = ()

    def applies_to(self, module: str) -> bool:
        return any(_under(module, s) for s in self.sources) and not any(_under(module, e) for e in self.exempt)

    def breaks(self, target: str) -> bool:
        return any(_under(target, f) for f in self.forbidden)


ALL = ("",)  # a source prefix that every module is under
# The one module of zoo allowed to import triton_repo: the viewer's `--triton` backend (it imports it inside the
# backend, so `import zoo.viewer.*` never loads the gRPC client; test_viewer_imports_no_triton checks that).
VIEWER_TRITON = ("zoo.viewer.triton_backend",)

RULES: tuple[Rule, ...] = (
    Rule("zoo never imports export, triton_repo or bench", ("zoo",), ("export", "triton_repo", "bench"),
         exempt=VIEWER_TRITON),
    Rule("zoo.viewer's Triton backend imports triton_repo only", VIEWER_TRITON, ("export", "bench")),
    Rule("nothing in zoo outside zoo.viewer imports zoo.viewer", ("zoo",), ("zoo.viewer",), exempt=("zoo.viewer",)),
    Rule("export never imports triton_repo", ("export",), ("triton_repo",)),
    Rule("nothing outside bench imports bench", ALL, ("bench",), exempt=("bench",)),
    Rule("zoo.data never imports zoo.models", ("zoo.data",), ("zoo.models",)),
    Rule("zoo.models never imports zoo.data", ("zoo.models",), ("zoo.data",)),
    Rule("zoo.training never imports zoo.analysis", ("zoo.training",), ("zoo.analysis",)),
)


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    importer: str
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported} -- breaks '{self.rule}'"


def _under(module: str, prefix: str) -> bool:
    return prefix == "" or module == prefix or module.startswith(prefix + ".")


def module_name(path: Path, root: Path) -> str:
    """Dotted module name of `path` relative to `root` (`pkg/__init__.py` -> `pkg`)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def iter_source_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if rel[0] in SKIP_TOP or any(p in SKIP_DIRS or p.startswith(".") for p in rel[:-1]):
            continue
        yield path


def _resolve_relative(module: str | None, level: int, package: str) -> str:
    base = package.split(".") if package else []
    if level - 1 > len(base):
        return module or ""  # beyond the top: leave it as written (Python would raise)
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def iter_imports(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) for each module `path` imports; `from m import n` yields m and m.n."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(node.module, node.level, package) if node.level else (node.module or "")
            if base:
                yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}" if base else alias.name
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield node.lineno, arg.value
    for node in tree.body:  # lazy re-export tables: `_EXPORTS = {"Name": "pkg.module", ...}`
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in targets) and isinstance(node.value, ast.Dict):
            for value in node.value.values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    yield value.lineno, value.value


def _is_import_module(func: ast.expr) -> bool:
    if isinstance(func, ast.Attribute):
        return func.attr == "import_module" and isinstance(func.value, ast.Name) and func.value.id == "importlib"
    return isinstance(func, ast.Name) and func.id in ("import_module", "__import__")


def check_tree(root: Path, rules: tuple[Rule, ...] = RULES) -> list[Violation]:
    """Every import under `root` that breaks one of `rules`, in file then line order."""
    found: list[Violation] = []
    for path in iter_source_files(root):
        importer = module_name(path, root)
        active = [r for r in rules if r.applies_to(importer)]
        if not active:
            continue
        seen: set[tuple[int, str]] = set()
        for line, target in iter_imports(path, root):
            for rule in active:
                if rule.breaks(target) and (line, rule.text) not in seen:
                    seen.add((line, rule.text))
                    found.append(Violation(str(path.relative_to(root)), line, importer, target, rule.text))
    return found


# --------------------------------------------------------------------------------------------- the real tree


def test_repository_follows_import_rules():
    violations = check_tree(REPO_ROOT)
    assert not violations, "import rules of docs/ARCHITECTURE.md broken:\n" + "\n".join(map(str, violations))


def test_checker_sees_the_packages():
    """Guard against a checker that passes because it reads nothing."""
    modules = {module_name(p, REPO_ROOT) for p in iter_source_files(REPO_ROOT)}
    for expected in ("zoo.spec", "zoo.data.patches", "zoo.models.builder", "zoo.training.trainer",
                     "zoo.analysis.sweep", "export.cli", "triton_repo.client", "bench.summarize",
                     "tests.test_architecture"):
        assert expected in modules
    imports = {t for _, t in iter_imports(REPO_ROOT / "zoo" / "training" / "cli.py", REPO_ROOT)}
    assert any(_under(t, "zoo.training") for t in imports)


def test_triton_client_import_loads_no_torch():
    code = "import sys, triton_repo.client; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"import triton_repo.client loaded torch modules: {out.stdout.strip()[:300]}"


def test_viewer_imports_no_triton():
    """zoo.viewer's app, CLI and checkpoint backend load neither triton_repo nor tritonclient."""
    code = ("import sys, zoo.viewer.cli, zoo.viewer.app, zoo.viewer.inference, zoo.viewer.triton_backend; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('triton_repo', 'tritonclient', 'export')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"importing zoo.viewer loaded: {out.stdout.strip()[:300]}"


# --------------------------------------------------------------------------- the checker on synthetic trees


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture()
def fake_repo(tmp_path: Path) -> Path:
    for pkg in ("zoo", "zoo/data", "zoo/models", "zoo/training", "zoo/analysis", "export", "triton_repo", "bench",
                "tests"):
        _write(tmp_path, f"{pkg}/__init__.py", "")
    _write(tmp_path, "zoo/spec.py", "import os\n")
    _write(tmp_path, "zoo/training/ok.py", "from zoo.data import dataset\nfrom zoo.models import builder\n")
    _write(tmp_path, "bench/run.py", "import zoo, export, triton_repo\nfrom bench import timing\n")
    _write(tmp_path, "tests/test_ok.py", "import zoo.training.ok\nimport export.cli\n")
    return tmp_path


def test_checker_passes_a_clean_tree(fake_repo):
    assert check_tree(fake_repo) == []


@pytest.mark.parametrize(
    "rel, text, line, rule",
    [
        ("zoo/registry.py", "import os\n\nimport export.onnx\n", 3, "zoo never imports export, triton_repo or bench"),
        ("zoo/config.py", "def f():\n    from triton_repo import client\n", 2,
         "zoo never imports export, triton_repo or bench"),
        ("export/cli.py", "from triton_repo.build import main\n", 1, "export never imports triton_repo"),
        ("tests/test_x.py", "import bench.timing as t\n", 1, "nothing outside bench imports bench"),
        ("triton_repo/serve.py", "import importlib\nm = importlib.import_module('bench.load')\n", 2,
         "nothing outside bench imports bench"),
        ("zoo/data/dataset.py", "from ..models import mil\n", 1, "zoo.data never imports zoo.models"),
        ("zoo/data/synthetic/cohort.py", "from ...models.mil import build_mil\n", 1,
         "zoo.data never imports zoo.models"),
        ("zoo/models/builder.py", "from zoo import data\n", 1, "zoo.models never imports zoo.data"),
        ("zoo/models/__init__.py", "_EXPORTS = {\n    'X': 'zoo.data.dataset',\n}\n", 2,
         "zoo.models never imports zoo.data"),
        ("zoo/training/trainer.py", "if True:\n    from .. import analysis\n", 2,
         "zoo.training never imports zoo.analysis"),
        ("zoo/training/pipeline.py", "from zoo.analysis.plots import plot\n", 1,
         "zoo.training never imports zoo.analysis"),
    ],
)
def test_checker_reports_file_line_and_rule(fake_repo, rel, text, line, rule):
    _write(fake_repo, rel, text)
    violations = check_tree(fake_repo)
    assert len(violations) == 1, violations
    v = violations[0]
    assert (v.path, v.line, v.rule) == (rel, line, rule)
    message = str(v)
    assert message.startswith(f"{rel}:{line}: ") and rule in message


def test_viewer_triton_exemption_is_that_module_only(fake_repo):
    _write(fake_repo, "zoo/viewer/__init__.py", "")
    _write(fake_repo, "zoo/viewer/triton_backend.py", "def f():\n    from triton_repo.client import SlideClient\n")
    assert check_tree(fake_repo) == []
    _write(fake_repo, "zoo/viewer/app.py", "import triton_repo.client\n")
    _write(fake_repo, "zoo/analysis/x.py", "from zoo.viewer import triton_backend\n")
    found = {(v.path, v.rule) for v in check_tree(fake_repo)}
    assert found == {("zoo/viewer/app.py", "zoo never imports export, triton_repo or bench"),
                     ("zoo/analysis/x.py", "nothing in zoo outside zoo.viewer imports zoo.viewer")}


def test_checker_does_not_confuse_prefixes(fake_repo):
    """`zoo.analysis_tools` is not `zoo.analysis`; `benchmarks` is not `bench`."""
    _write(fake_repo, "zoo/training/x.py", "import zoo.analysis_tools\nimport benchmarks\nfrom zoo import analysis_x\n")
    assert check_tree(fake_repo) == []


def test_relative_import_resolution():
    assert _resolve_relative("models", 2, "zoo.data") == "zoo.models"
    assert _resolve_relative(None, 1, "zoo.training") == "zoo.training"
    assert _resolve_relative("patches", 1, "zoo.data") == "zoo.data.patches"
    assert _resolve_relative("spec", 3, "zoo.data.synthetic") == "zoo.spec"
