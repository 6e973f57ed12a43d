"""Planning: how many tokens each block keeps, what that costs (MACs, measured latency), and the
registry of methods that produce the plans. Pure Python: usable where only the runtime is installed."""

from edgeprune.plan.methods import REGISTRY, Method, Option
from edgeprune.plan.token_plan import TokenPlan, build_plan, check_options, min_tokens

__all__ = ["REGISTRY", "Method", "Option", "TokenPlan", "build_plan", "check_options", "min_tokens"]
