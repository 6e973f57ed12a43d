"""The manifests' JSON Schemas (edgeprune/artifacts/schemas, Draft 2020-12): every manifest the current
code writes conforms (checked with Python's jsonschema), libedgeprune embeds the same files and refuses
a manifest that breaks them with one line naming the JSON path, and both validators agree on which
manifests break them. The library's JSON reader refuses duplicate keys."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeprune.core.errors import EdgepruneError

SCHEMAS = Path(__file__).resolve().parents[2] / "edgeprune" / "artifacts" / "schemas"


def _validator(name: str):
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    documents = [json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("*.schema.json"))]
    registry = Registry().with_resources([(d["$id"], Resource.from_contents(d)) for d in documents])
    return Draft202012Validator(json.loads((SCHEMAS / f"{name}.schema.json").read_text()), registry=registry)


def _errors(name: str, document) -> list[str]:
    return [f"{e.json_path}: {e.message}" for e in _validator(name).iter_errors(document)]


def test_the_schema_folder():
    from jsonschema import Draft202012Validator

    names = sorted(p.name for p in SCHEMAS.iterdir())
    assert names == ["artifact.schema.json", "calibration.schema.json", "engine-build.schema.json", "engine-set.schema.json",
                     "engine.schema.json", "temporal.schema.json"], names
    for path in SCHEMAS.iterdir():
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"].endswith("/" + path.name)


def test_written_manifests_conform(tiny_set, tiny_temporal):
    manifest = json.loads((tiny_set / "set.json").read_text())
    assert manifest["calibration"], "the fixture set is calibrated: the calibration schema is exercised"
    assert _errors("engine-set", manifest) == []
    assert _errors("calibration", manifest["calibration"]) == []
    for member in manifest["members"]:
        assert _errors("artifact", json.loads((tiny_set / member["path"] / "manifest.json").read_text())) == []
    assert _errors("temporal", json.loads((tiny_temporal / "manifest.json").read_text())) == []


def test_built_engines_conform(native_lib, tiny_set, tmp_path):
    """engines.json and engine.json of `edgeprune build SET` (ONNX Runtime CPU), calibrated."""
    built = tmp_path / "built"
    for args in (["build", str(tiny_set), "--out", str(built)],
                 ["calibrate", str(tiny_set), "--engines", str(built), "--rounds", "3"]):
        proc = subprocess.run([sys.executable, "-m", "edgeprune.cli.main", *args], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
    index = json.loads((built / "engines.json").read_text())
    assert index["calibration"] and _errors("engine-build", index) == []
    for member in index["members"]:
        assert _errors("engine", json.loads((built / member["path"] / "engine.json").read_text())) == []

    from edgeprune.native import NativeRuntime

    with NativeRuntime(tiny_set, 1000.0, engines=built):  # the library reads them too
        pass


def _library_error(folder: Path) -> str:
    from edgeprune.native import NativeRuntime

    try:
        with NativeRuntime(folder, 1000.0):
            return ""
    except EdgepruneError as exc:
        return str(exc)


MUTATIONS = {
    "budget a string": (lambda d: d["members"][0].__setitem__("budget", "1.0"), True),
    "integral float tokens": (lambda d: d["members"][0].__setitem__("final_tokens", float(d["members"][0]["final_tokens"])), False),
    "fractional tokens": (lambda d: d["members"][0].__setitem__("final_tokens", 2.5), True),
    "tokens beyond int64": (lambda d: d["members"][0].__setitem__("final_tokens", 1.6e116), False),
    "short sha256": (lambda d: d["members"][1].__setitem__("onnx_sha256", "abc"), True),
    "no macs_ratio": (lambda d: d["members"][1].pop("macs_ratio"), True),
    "no p95": (lambda d: d["calibration"]["members"]["b0.80"].pop("p95_ms"), True),
    "p50 null": (lambda d: d["calibration"]["members"]["b1.00"].__setitem__("p50_ms", None), True),
    "calibration a list": (lambda d: d.__setitem__("calibration", []), True),
    "members of calibration a list": (lambda d: d["calibration"].__setitem__("members", []), True),
    "model a list": (lambda d: d.__setitem__("model", []), True),
    "unknown extra key": (lambda d: d.__setitem__("written_by", {"tool": "a newer edgeprune"}), False),
    "extra member stat": (lambda d: d["calibration"]["members"]["b1.00"].__setitem__("p999_ms", 1.0), False),
    "member precision fp32": (lambda d: d["members"][0].__setitem__("precision", "fp32"), False),
    "member precision int4": (lambda d: d["members"][0].__setitem__("precision", "int4"), True),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_library_and_jsonschema_agree(native_lib, tiny_set, tmp_path, name):
    mutate, broken = MUTATIONS[name]
    folder = Path(shutil.copytree(tiny_set, tmp_path / "SET"))
    manifest = copy.deepcopy(json.loads((folder / "set.json").read_text()))
    mutate(manifest)
    (folder / "set.json").write_text(json.dumps(manifest, indent=2))
    python_errors = _errors("engine-set", manifest)
    message = _library_error(folder)
    assert bool(python_errors) == broken, python_errors
    if not broken:
        assert message == "", message
        return
    match = re.search(r"corrupt set\.json \((\$[^:]*): (.*); see engine-set\.schema\.json\)$", message)
    assert match, message
    assert "\n" not in message
    # The same JSON path notation as jsonschema's ValidationError.json_path ($.a[0]['b1.00']).
    assert match.group(1) in {e.split(": ")[0] for e in python_errors}, (message, python_errors)


def test_corrupt_member_manifest_names_the_path(native_lib, tiny_set, tmp_path):
    folder = Path(shutil.copytree(tiny_set, tmp_path / "SET"))
    path = folder / "b0.60" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["inputs"][0]["shape"][2] = 32.5
    path.write_text(json.dumps(manifest))
    assert _errors("artifact", manifest)
    with pytest.raises(EdgepruneError, match=re.escape(f"{path}: corrupt manifest ($.inputs[0].shape[2]: expected integer or string, "
                                                       "got number; see artifact.schema.json)")) as info:
        _open(folder)
    assert info.value.code == "corrupt"


def _open(folder: Path) -> None:
    from edgeprune.native import NativeRuntime

    with NativeRuntime(folder, 1000.0):
        pass


@pytest.mark.parametrize("text, message", [
    ('{"format": 1, "kind": "edgeprune-engine-set", "members": [], "members": []}', "(duplicate key 'members' in $)"),
    ('{"format": 01, "kind": "edgeprune-engine-set"}', "(unexpected number literal; expected '}' at byte 12)"),
    ('{"format": 1.}', "(malformed number (invalid number; expected digit after '.'; last read: '1.}') at byte 13)"),
    ('{"format": NaN}', "(invalid literal; last read: '\"format\": N' at byte 11)"),
    ('{"format": 1} trailing', "expected end of input at byte "),
    ('{"kind": "\\ud800"}', "surrogate U+D800..U+DBFF must be followed by U+DC00..U+DFFF"),
    ('', "(unexpected end of text at byte 0)"),
])
def test_strict_json(native_lib, tiny_set, tmp_path, text, message):
    folder = Path(shutil.copytree(tiny_set, tmp_path / "SET"))
    (folder / "set.json").write_text(text)
    with pytest.raises(EdgepruneError) as info:
        _open(folder)
    assert str(info.value).startswith(f"{folder / 'set.json'}: corrupt set.json (") and message in str(info.value), str(info.value)
    assert info.value.code == "corrupt"


def test_duplicate_keys_deep_inside(native_lib, tiny_set, tmp_path):
    folder = Path(shutil.copytree(tiny_set, tmp_path / "SET"))
    text = (folder / "set.json").read_text()
    text = text.replace('"p50_ms":', '"p50_ms": 1.0, "p50_ms":', 1)
    (folder / "set.json").write_text(text)
    assert json.loads(text)  # Python's json keeps the last value silently
    with pytest.raises(EdgepruneError, match=re.escape("corrupt set.json (duplicate key 'p50_ms' in $.calibration.members['b1.00'])")):
        _open(folder)
