"""Security: weights_only checkpoint loading, no pickle from untrusted input, sanitised patient ids, loopback binds."""
from __future__ import annotations

import argparse
import ast
import inspect
import re
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("zoo", "export", "triton_repo", "bench")


def _project_sources():
    for folder in SOURCE_DIRS:
        yield from sorted((REPO_ROOT / folder).rglob("*.py"))


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
            yield owner, name, {k.arg: k.value for k in node.keywords}, node


def test_no_unsafe_deserialisation_in_project_code():
    """torch.load only with weights_only=True; no pickle/marshal/shelve/dill; no allow_pickle=True; yaml only safe."""
    problems = []
    for path in _project_sources():
        tree = ast.parse(path.read_text(), str(path))
        def where(n, path=path):
            return f"{path.relative_to(REPO_ROOT)}:{n.lineno}"

        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                bad = [n for n in names if n.split(".")[0] in {"pickle", "cPickle", "dill", "marshal", "shelve",
                                                               "joblib"}]
                if bad:
                    problems.append(f"{where(node)} imports {bad}")
        for owner, name, kwargs, node in _calls(tree):
            if owner == "torch" and name == "load":
                flag = kwargs.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where(node)} torch.load without weights_only=True")
            if name == "allow_pickle" or (isinstance(kwargs.get("allow_pickle"), ast.Constant)
                                          and kwargs["allow_pickle"].value is True):
                problems.append(f"{where(node)} allow_pickle=True")
            if owner == "yaml" and name in {"load", "unsafe_load", "full_load", "load_all"}:
                problems.append(f"{where(node)} yaml.{name} (use yaml.safe_load)")
            if owner == "pd" and name == "read_pickle":
                problems.append(f"{where(node)} pandas.read_pickle")
    assert problems == []


def _pickled_checkpoint(path: Path) -> Path:
    torch.save({"entry": "clinical_only", "config": {}, "state_dict": {}, "evil": argparse.Namespace(x=1)}, path)
    return path


def test_trainer_checkpoint_loader_refuses_pickled_objects(tmp_path):
    from zoo.checkpoint import load_checkpoint

    path = _pickled_checkpoint(tmp_path / "last.pt")
    with pytest.raises(ValueError, match=rf"{path}.*could not be loaded safely"):
        load_checkpoint(path)


def test_pretrained_weights_loader_refuses_pickled_objects(tmp_path):
    from zoo.models.weights import read_state_dict

    path = _pickled_checkpoint(tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match=rf"cannot read pretrained checkpoint {path}"):
        read_state_dict(path)


@pytest.mark.parametrize("bad_id", ["../escape", "a/b", "..", "/abs", "x\\y", "", "p id"])
def test_patient_ids_with_path_parts_never_become_paths(bad_id, tmp_path):
    from triton_repo.client import patient_inputs
    from zoo.data.files import InvalidIdentifierError
    from zoo.data.mri import processed_path

    with pytest.raises(InvalidIdentifierError, match="not allowed"):
        processed_path(tmp_path, bad_id, "T1")
    with pytest.raises(InvalidIdentifierError, match="not allowed"):
        patient_inputs(bad_id, tmp_path, manifest=None)


def test_mri_folder_named_like_a_traversal_is_reported_not_used(tmp_path):
    from zoo.data.mri import preprocess_dir

    (tmp_path / "raw" / "bad id").mkdir(parents=True)
    results = preprocess_dir(tmp_path / "raw", tmp_path / "out", workers=1, progress=False)
    assert [r.status for r in results] == ["failed"] and "not allowed" in results[0].message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_servers_bind_loopback_by_default():
    from triton_repo import serve
    from triton_repo.server import TritonServer

    assert inspect.signature(TritonServer).parameters["bind"].default == "127.0.0.1"
    assert re.search(r'"--bind", default="127\.0\.0\.1"', inspect.getsource(serve))
    command = TritonServer("repo").command(Path("/b"), Path("/h"))
    for flag in ("--grpc-address", "--http-address", "--metrics-address"):
        assert f"{flag}=127.0.0.1" in command
