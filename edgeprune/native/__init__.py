"""Python binding of the embedded runtime (``native/``, a C ABI library): the same engine sets,
temporal artifacts and policies as :mod:`edgeprune.runtime`, run by C++.

``NativeRuntime(path, target_ms)`` mirrors :class:`edgeprune.runtime.Runtime` (and
:class:`~edgeprune.runtime.temporal.TemporalRuntime` for temporal artifacts); ``infer`` returns a
:class:`NativeResult`. The library is found at ``$EDGEPRUNE_NATIVE_LIB`` or ``native/build/libedgeprune.so``
(:func:`build_native` builds it with ``native/build.sh``); ONNX Runtime is the ``onnxruntime`` wheel's
own library unless ``ort_library`` says otherwise, and built OpenVINO engines run on the ``openvino``
wheel's ``libopenvino_c`` unless ``openvino_library`` does. Every failure of the library is an
:class:`~edgeprune.core.errors.EdgepruneError` with its one-line message (and ``.code``, the C status code).
"""

from edgeprune.native.blocks import NativePolicy, frame_change, resize_rgb, thumbnail, upsample_argmax
from edgeprune.native.library import (build_native, default_openvino_library, default_ort_library, is_available, library_path,
                                      load_library)
from edgeprune.native.runtime import NativeResult, NativeRuntime

__all__ = ["NativePolicy", "NativeResult", "NativeRuntime", "build_native", "default_openvino_library", "default_ort_library",
           "frame_change", "is_available", "library_path", "load_library", "resize_rgb", "thumbnail", "upsample_argmax"]
