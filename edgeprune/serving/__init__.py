"""Serving on Triton Inference Server: ``edgeprune serve`` (the bundled server, a Python-backend model
per engine set), ``edgeprune export-triton`` (a model repository for a production Triton) and a client.

Submodules import Triton's packages lazily; without ``edgeprune[serve]`` installed they fail with one
clear line saying so.
"""
