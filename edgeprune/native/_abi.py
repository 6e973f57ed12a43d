"""ctypes mirror of native/include/edgeprune/edgeprune.h (ABI version 1): struct layouts and signatures."""

from __future__ import annotations

import ctypes as C

ABI_VERSION = 1
LABELS = {None: 0, "none": 0, "input": 1, "model": 2}


class Options(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("ort_library", C.c_char_p), ("provider", C.c_char_p),
                ("threads", C.c_int), ("policy", C.c_char_p), ("target_ms", C.c_double),
                ("policy_args", C.c_char_p), ("engines", C.c_char_p), ("refresh_every", C.c_int),
                ("drift_threshold", C.c_double), ("verify", C.c_int), ("openvino_library", C.c_char_p)]


class Info(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("kind", C.c_int), ("engines", C.c_int), ("width", C.c_int),
                ("height", C.c_int), ("classes", C.c_int), ("provider", C.c_char * 32), ("backend", C.c_char * 32)]


class Frame(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("rgb", C.c_void_p), ("width", C.c_int), ("height", C.c_int),
                ("stride", C.c_size_t)]


class Request(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("stream", C.c_uint64), ("deadline_ms", C.c_double), ("labels", C.c_int),
                ("labels_out", C.c_void_p), ("labels_capacity", C.c_size_t), ("logits_out", C.c_void_p),
                ("logits_capacity", C.c_size_t)]


class Result(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("frame", C.c_int64), ("engine_index", C.c_int), ("engine", C.c_char * 32),
                ("budget", C.c_double), ("provider", C.c_char * 32), ("predicted_ms", C.c_double),
                ("content", C.c_double), ("pre_ms", C.c_double), ("engine_ms", C.c_double), ("post_ms", C.c_double),
                ("scheduler_ms", C.c_double), ("total_ms", C.c_double), ("deadline_met", C.c_int),
                ("reason", C.c_char * 64), ("labels_width", C.c_int), ("labels_height", C.c_int),
                ("refreshed", C.c_int), ("drift", C.c_double)]


class Decision(C.Structure):
    _fields_ = [("struct_size", C.c_size_t), ("index", C.c_int), ("budget", C.c_double), ("predicted_ms", C.c_double),
                ("reason", C.c_char * 32)]


def declare(lib: C.CDLL) -> C.CDLL:
    """Argument and return types of every exported function (ctypes defaults to int otherwise)."""
    P, S = C.c_void_p, C.c_void_p  # opaque handles; statuses
    sig = {
        "edgeprune_abi_version": (C.c_uint32, []),
        "edgeprune_version": (C.c_char_p, []),
        "edgeprune_status_code": (C.c_int, [S]),
        "edgeprune_status_message": (C.c_char_p, [S]),
        "edgeprune_status_free": (None, [S]),
        "edgeprune_options_init": (None, [C.POINTER(Options)]),
        "edgeprune_open": (S, [C.c_char_p, C.POINTER(Options), C.POINTER(P)]),
        "edgeprune_close": (None, [P]),
        "edgeprune_info_init": (None, [C.POINTER(Info)]),
        "edgeprune_get_info": (S, [P, C.POINTER(Info)]),
        "edgeprune_get_engine": (S, [P, C.c_int, C.c_char_p, C.c_size_t, C.POINTER(C.c_double)]),
        "edgeprune_frame_init": (None, [C.POINTER(Frame)]),
        "edgeprune_request_init": (None, [C.POINTER(Request)]),
        "edgeprune_result_init": (None, [C.POINTER(Result)]),
        "edgeprune_infer": (S, [P, C.POINTER(Frame), C.POINTER(Request), C.POINTER(Result)]),
        "edgeprune_reset_stream": (S, [P, C.c_uint64]),
        "edgeprune_policy_create": (S, [C.c_char_p, C.c_int, C.POINTER(C.c_double), C.POINTER(C.c_double),
                                        C.POINTER(C.c_double), C.c_double, C.c_char_p, C.POINTER(P)]),
        "edgeprune_policy_choose": (S, [P, C.c_int64, C.c_double, C.c_double, C.POINTER(Decision)]),
        "edgeprune_policy_observe": (S, [P, C.c_int, C.c_double]),
        "edgeprune_policy_free": (None, [P]),
        "edgeprune_resize_rgb": (S, [C.POINTER(Frame), C.c_void_p, C.c_int, C.c_int]),
        "edgeprune_upsample_argmax": (S, [C.c_void_p, C.c_int, C.c_int, C.c_int, C.c_void_p, C.c_int, C.c_int]),
        "edgeprune_thumbnail": (S, [C.POINTER(Frame), C.c_void_p]),
        "edgeprune_frame_change": (C.c_double, [C.c_void_p, C.c_void_p]),
        "edgeprune_frame_complexity": (C.c_double, [C.c_void_p]),
    }
    for name, (restype, argtypes) in sig.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib
