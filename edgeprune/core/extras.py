"""Optional parts of the install, declared once: what each extra brings and how a command that
needs a missing one fails (one line naming the extra, exit 2 from the CLI)."""

from __future__ import annotations

import importlib.util

from edgeprune.core.errors import EdgepruneError

# extra -> the import names it must provide (the first missing one is named in the error)
EXTRAS: dict[str, tuple[str, ...]] = {
    "export": ("torch", "torchvision", "timm", "transformers", "onnx", "onnxscript", "safetensors"),
    "serve": ("pytriton", "tritonclient"),
    "openvino": ("openvino",),
    "quantize": ("nncf", "onnx"),
}
# import names an extra brings besides those it is checked by (the CLI's safety net names the extra for them too)
ALSO_IN: dict[str, str] = {"matplotlib": "export", "polygraphy": "export"}


def missing_modules(extra: str) -> list[str]:
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def has_extra(extra: str) -> bool:
    return not missing_modules(extra)


def require_extra(extra: str, what: str) -> None:
    """Raise one clear line when ``extra`` is not installed: ``what`` needs it."""
    missing = missing_modules(extra)
    if missing:
        raise EdgepruneError(f"{what} needs the '{extra}' extra ({', '.join(missing)} not installed): "
                             f"pip install \"edgeprune[{extra}]\"")


def extra_for_missing(exc: ModuleNotFoundError) -> EdgepruneError | None:
    """The one-line error for a module an extra provides (the CLI's safety net behind ``require_extra``)."""
    top = (exc.name or "").split(".")[0]
    extra = ALSO_IN.get(top) or next((e for e, names in EXTRAS.items() if top in names), None)
    if extra is None:
        return None
    return EdgepruneError(f"this command needs the '{extra}' extra ({top} not installed): pip install \"edgeprune[{extra}]\"")
