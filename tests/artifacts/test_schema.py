"""Every manifest edgeprune writes follows its kind's JSON Schema (the one libedgeprune checks too),
and a manifest that breaks it is refused with one line naming the JSON path."""

from __future__ import annotations

import json

import pytest

from edgeprune.artifacts.engine_set import load_engine_set
from edgeprune.artifacts.schema import KINDS, check_manifest
from edgeprune.core.errors import EdgepruneError
from tests.conftest import export_tiny_set


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    return export_tiny_set(tmp_path_factory.mktemp("schema") / "SET", [1.0, 0.6], 3, [0.5] * 3, [0.25] * 3)


def test_written_manifests_follow_their_schemas(tiny_set):
    manifest = json.loads((tiny_set / "set.json").read_text())
    check_manifest("engine-set", manifest, "set.json")
    assert manifest["calibration"] is not None  # the calibration sub-schema was exercised too
    for member in manifest["members"]:
        check_manifest("artifact", json.loads((tiny_set / member["path"] / "manifest.json").read_text()), member["path"])


@pytest.mark.parametrize("path, value, where", [
    (("members", 0, "budget"), "x", ".members[0].budget"),
    (("members", 0, "onnx_sha256"), "abc", ".members[0].onnx_sha256"),
    (("calibration", "members"), [], ".calibration.members"),
])
def test_a_broken_set_is_refused_naming_the_path(tiny_set, tmp_path, path, value, where):
    import shutil

    copy = tmp_path / "SET"
    shutil.copytree(tiny_set, copy)
    manifest = json.loads((copy / "set.json").read_text())
    node = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (copy / "set.json").write_text(json.dumps(manifest))
    import re

    with pytest.raises(EdgepruneError, match="schema at " + re.escape(where)):
        load_engine_set(copy)


def test_every_kind_has_a_schema():
    for kind in KINDS:
        with pytest.raises(EdgepruneError):
            check_manifest(kind, [], "x")  # no manifest kind is a list
