"""Engines built on the target: a self-contained build script, and the import of what it built.

TensorRT engines are tied to the TensorRT version and GPU they were built with, and a Jetson builds
its own. ``edgeprune build --emit-script`` writes a folder to copy to the device: the graphs (in the
asked precision, sha256-checked before use), one trtexec command per engine, and the engine manifest
each engine must get, completed on the device with what trtexec reports (TensorRT version, GPU,
compute capability) and the engine's sha256. ``edgeprune build --import`` takes the engines back,
checks them against their source artifacts, and writes ordinary engine folders.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shlex
import shutil
from pathlib import Path
from typing import Any, Optional

from edgeprune.artifacts.artifact import Artifact
from edgeprune.core.files import atomic_directory, read_folder_json, sha256_file, write_json_atomic
from edgeprune.core.version import __version__
from edgeprune.engines.build import (ENGINE_FORMAT, ENGINE_KIND, ENGINES_FILE, BuiltEngine, check_precision, engines_index,
                                     graph_precision, is_engine_build, load_engine, load_engines, source_entry, write_graph)
from edgeprune.engines.cache import ENGINE_MANIFEST
from edgeprune.core.errors import EdgepruneError
from edgeprune.core.progress import Progress, say

SCRIPT = "build_engines.sh"

# Runs on the device: fills the expected manifest with what trtexec printed and the engine's digest.
_FINISH = r'''
import datetime, hashlib, json, re, sys
name, seconds = sys.argv[1], float(sys.argv[2])
folder = "engines/" + name + ".tmp"
manifest = json.load(open("expected/" + name + ".json"))
log = open(folder + "/trtexec.log", errors="replace").read()
def field(pattern):
    m = re.search(pattern, log)
    return m.group(1).strip() if m else None
digest = hashlib.sha256(open(folder + "/model.engine", "rb").read()).hexdigest()
manifest["engine"].update(sha256=digest, bytes=len(open(folder + "/model.engine", "rb").read()))
manifest["versions"]["tensorrt"] = field(r"TensorRT version:\s*([0-9.]+)")
manifest["device"].update(gpu=field(r"Selected Device:\s*(.+)"), compute_capability=field(r"Compute Capability:\s*([0-9.]+)"))
manifest["built"].update(seconds=round(seconds, 3), at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
json.dump(manifest, open(folder + "/engine.json", "w"), indent=2)
'''


def expected_manifest(artifact: Artifact, settings: Any, graph_sha: str) -> dict[str, Any]:
    """The engine manifest a device build must produce, with the device's own fields left empty."""
    return {
        "kind": ENGINE_KIND, "format": ENGINE_FORMAT, "backend": "trt", "precision": settings.precision,
        "settings": settings.to_dict(), "source": source_entry(artifact),
        "graph": {"precision": graph_precision("trt", settings), "sha256": graph_sha},
        "engine": {"file": "model.engine", "sha256": None, "bytes": None},
        "versions": {"edgeprune": __version__, "tensorrt": None},
        "device": {"gpu": None, "compute_capability": None},
        "cache_key": None,
        "built": {"how": "trtexec", "seconds": None, "at": None},
    }


def member_budget(name: str) -> Optional[float]:
    """The budget in a set member's folder name (``b0.75`` -> 0.75); None for a single artifact."""
    try:
        return float(name[1:]) if name.startswith("b") else None
    except ValueError:
        return None


def emit_script(members: list[tuple[str, Artifact]], settings: Any, out: Path, *, trt_version: str = "10",
                force: bool = False, progress: Optional[Progress] = None) -> Path:
    """Write the on-device build folder for ``members`` ((name, artifact) pairs; one pair for a single
    artifact, named ``engine``); returns the script's path."""
    from edgeprune.backends.trt import trtexec_command

    check_precision("trt", settings)
    settings.check_version(trt_version)
    single = len(members) == 1 and members[0][0] == "engine"
    with atomic_directory(out, overwrite=force) as tmp:
        (tmp / "graphs").mkdir()
        (tmp / "expected").mkdir()
        sums, commands = [], []
        precision = graph_precision("trt", settings)
        for name, artifact in members:
            say(progress, f"{name}: writing the {precision} graph")
            sha = write_graph(artifact, precision, tmp / "graphs" / f"{name}.onnx")
            sums.append(f"{sha}  graphs/{name}.onnx")
            (tmp / "expected" / f"{name}.json").write_text(json.dumps(expected_manifest(artifact, settings, sha), indent=2) + "\n")
            cmd = trtexec_command(f"graphs/{name}.onnx", f"engines/{name}.tmp/model.engine", settings, trt_version,
                                  timing_cache="timing.cache")
            commands.append(f"build_one {shlex.quote(name)} " + " ".join(shlex.quote(c) for c in cmd[1:]))
        (tmp / "graphs" / "SHA256SUMS").write_text("\n".join(sums) + "\n")
        index = None if single else engines_index("trt", settings.precision, None, [
            {"budget": member_budget(n), "path": n, "engine_sha256": None} for n, _ in members])
        script = tmp / SCRIPT
        script.write_text(_script_text(members, commands, index, settings, trt_version))
        script.chmod(0o755)
    return out / SCRIPT


def _script_text(members: list[tuple[str, Artifact]], commands: list[str], index: Optional[dict[str, Any]],
                 settings: Any, trt_version: str) -> str:
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    sources = ", ".join(sorted({str(a.path.resolve()) for _, a in members}))
    index_py = ("" if index is None else
                "python3 - <<'PY'\nimport json\nindex = json.loads(" + repr(json.dumps(index)) + ")\n"
                "for m in index['members']:\n    m['engine_sha256'] = json.load(open('engines/' + m['path'] + '/engine.json'))['engine']['sha256']\n"
                f"json.dump(index, open('engines/{ENGINES_FILE}', 'w'), indent=2)\nPY\n")
    return f"""#!/usr/bin/env bash
# TensorRT engines for {sources}
# written by edgeprune on {stamp}: precision {settings.precision}, TensorRT {trt_version}.x flags, {len(members)} engine(s).
# Run it on the target (a Jetson builds its own engines):   ./{SCRIPT}
# then copy engines/ back and register them:   edgeprune build <artifact or set> --import engines
# Needs trtexec (set TRTEXEC=...; JetPack puts it in /usr/src/tensorrt/bin), python3 and sha256sum.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
if [ ! -x "$TRTEXEC" ]; then echo "error: trtexec not found; set TRTEXEC=/path/to/trtexec" >&2; exit 2; fi
command -v python3 >/dev/null || {{ echo "error: python3 is needed to write engine.json" >&2; exit 2; }}
sha256sum --quiet -c graphs/SHA256SUMS || {{ echo "error: a graph differs from the one edgeprune wrote" >&2; exit 2; }}
mkdir -p engines

build_one() {{
  local name="$1"; shift
  rm -rf "engines/$name.tmp"; mkdir -p "engines/$name.tmp"
  echo "== $name"
  local start=$SECONDS
  if ! "$TRTEXEC" "$@" > "engines/$name.tmp/trtexec.log" 2>&1; then
    tail -n 20 "engines/$name.tmp/trtexec.log" >&2; echo "error: trtexec failed for $name (log: engines/$name.tmp/trtexec.log)" >&2; exit 1
  fi
  python3 - "$name" "$((SECONDS - start))" <<'PY'
{_FINISH.strip()}
PY
  rm -rf "engines/$name"; mv "engines/$name.tmp" "engines/$name"
}}

{chr(10).join(commands)}
{index_py}echo "done: engines/ holds {len(members)} engine(s); copy it back and run: edgeprune build <source> --import engines"
"""


def _engine_folders(path: Path) -> list[tuple[Optional[str], Path]]:
    """(member name, folder or file) pairs of what ``--import`` was given."""
    if path.is_file():
        return [(None, path)]
    if is_engine_build(path):
        index = read_folder_json(path, ENGINES_FILE, "engine build")
        return [(str(m.get("path")), path / str(m.get("path"))) for m in index.get("members", [])]
    if (path / ENGINE_MANIFEST).is_file():
        return [(None, path)]
    if path.is_dir() and (path / "engine").is_dir():  # a single-artifact script run
        return [(None, path / "engine")]
    raise EdgepruneError(f"{path}: not a TensorRT engine file, an engine folder (engine.json) or a build folder ({ENGINES_FILE})")


def check_imported(artifact: Artifact, engine_file: Path, manifest: Optional[dict[str, Any]]) -> list[str]:
    """Check an engine built elsewhere against its source artifact; returns what was checked."""
    from edgeprune.backends.trt import engine_io, tensorrt_version

    checked = []
    data = engine_file.read_bytes()
    if len(data) < 1024:
        raise EdgepruneError(f"{engine_file}: {len(data)} bytes is not a TensorRT engine")
    if manifest is not None:
        if manifest.get("kind") != ENGINE_KIND or manifest.get("backend") != "trt":
            raise EdgepruneError(f"{engine_file.parent / ENGINE_MANIFEST}: not a TensorRT engine manifest")
        built_from = (manifest.get("source") or {}).get("onnx_sha256")
        if built_from != artifact.manifest["onnx"]["sha256"]:
            raise EdgepruneError(f"{engine_file}: built from another ONNX (sha256 {str(built_from)[:12]}…), not from {artifact.path}")
        checked.append("source onnx sha256")
        if hashlib.sha256(data).hexdigest() != (manifest.get("engine") or {}).get("sha256"):
            raise EdgepruneError(f"{engine_file}: sha256 differs from its engine.json (corrupt or replaced in transit)")
        checked.append("engine sha256")
    if tensorrt_version() is not None:
        io = {t["name"]: t for t in engine_io(data, allow_host_code=bool(manifest and manifest["settings"].get("version_compatible")))}
        for spec in artifact.manifest["inputs"] + artifact.manifest["outputs"]:
            got = io.get(spec["name"])
            if got is None:
                raise EdgepruneError(f"{engine_file}: has no tensor '{spec['name']}' (the artifact's I/O); built from another graph?")
            if all(isinstance(d, int) for d in spec["shape"]) and list(got["shape"]) != list(spec["shape"]):
                raise EdgepruneError(f"{engine_file}: '{spec['name']}' has shape {got['shape']}, the artifact {spec['shape']}")
        checked.append("engine I/O vs artifact (deserialized with TensorRT)")
    elif manifest is None:
        raise EdgepruneError(f"{engine_file}: a bare engine can only be checked by TensorRT, which is not installed here; "
                             "import the folder the build script wrote (it has engine.json)")
    return checked


def import_engines(members: list[tuple[str, Artifact]], path: Path, out: Path, *, force: bool = False,
                   progress: Optional[Progress] = None) -> list[BuiltEngine]:
    """Check and register engines built elsewhere for ``members`` ((name, artifact) pairs) into ``out``."""
    found = _engine_folders(path)
    by_name = {name: where for name, where in found}
    single = len(members) == 1 and members[0][0] == "engine"
    if single and len(found) != 1:
        raise EdgepruneError(f"{path}: holds {len(found)} engines; an artifact takes one")
    with atomic_directory(out, overwrite=force) as tmp:
        entries = []
        for name, artifact in members:
            where = found[0][1] if single else by_name.get(name)
            if where is None:
                raise EdgepruneError(f"{path}: no engine for member {name} (has: {', '.join(str(n) for n in by_name)})")
            engine_file = where if where.is_file() else where / "model.engine"
            manifest = read_folder_json(where, ENGINE_MANIFEST, "engine") if where.is_dir() else None
            if where.is_dir() and not engine_file.is_file():
                raise EdgepruneError(f"{where}: model.engine is missing")
            checked = check_imported(artifact, engine_file, manifest)
            say(progress, f"{name}: checked {', '.join(checked)}")
            target = tmp if single else tmp / name
            target.mkdir(exist_ok=True)
            shutil.copy2(engine_file, target / "model.engine")
            if manifest is None:
                manifest = _bare_manifest(artifact, engine_file)
            manifest["source"]["artifact"] = str(artifact.path.resolve())
            manifest["built"] = dict(manifest.get("built") or {}, imported_from=str(where.resolve()), checked=checked)
            write_json_atomic(target / ENGINE_MANIFEST, manifest)
            entries.append({"budget": member_budget(name), "path": name, "engine_sha256": manifest["engine"]["sha256"]})
        if not single:
            write_json_atomic(tmp / ENGINES_FILE, engines_index("trt", manifest["precision"], None, entries))
    return [load_engine(out)] if single else load_engines(out)


def _bare_manifest(artifact: Artifact, engine_file: Path) -> dict[str, Any]:
    """What can be said of an engine with no manifest after TensorRT deserialized it here."""
    from edgeprune.backends.trt import BuilderSettings, device_info, tensorrt_version

    manifest = expected_manifest(artifact, BuilderSettings(), None)
    manifest["precision"] = manifest["graph"]["precision"] = "unknown"
    manifest["engine"].update(sha256=sha256_file(engine_file), bytes=engine_file.stat().st_size)
    manifest["versions"]["tensorrt"] = tensorrt_version()
    manifest["device"] = {k: v for k, v in device_info().items() if k in ("gpu", "compute_capability")}
    manifest["built"]["how"] = "imported"
    return manifest


__all__ = ["SCRIPT", "check_imported", "emit_script", "expected_manifest", "import_engines"]
