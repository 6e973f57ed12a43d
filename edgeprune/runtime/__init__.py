"""Runtime scheduling: pick one engine (token budget) per frame, share a token pool across cameras."""

from edgeprune.runtime.policies import (POLICIES, CombinedPolicy, ContentPolicy, DeadlinePolicy, Decision,
                                        EngineProfile, FixedPolicy, FrameContext, Policy, downscale_gray,
                                        frame_change, frame_complexity, make_policy,
                                        validate_profiles)
from edgeprune.runtime.pool import StreamDemand, allocate
from edgeprune.runtime.runtime import FrameResult, Runtime, profiles_from_calibration
from edgeprune.runtime.simulator import SimResult, Trace, load_trace, save_trace, simulate, trace_from_profiles

__all__ = [
    "POLICIES", "CombinedPolicy", "ContentPolicy", "DeadlinePolicy", "Decision", "EngineProfile", "FixedPolicy",
    "FrameContext", "Policy", "downscale_gray", "frame_change", "frame_complexity", "make_policy", "validate_profiles",
    "StreamDemand", "allocate", "FrameResult", "Runtime", "profiles_from_calibration", "SimResult", "Trace", "load_trace", "save_trace", "simulate", "trace_from_profiles",
]
