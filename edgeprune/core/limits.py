"""Limits of the engines every graph must respect, declared once."""

# TensorRT's TopK needs K < 3840 (and sorted=1); every TopK in a reduced graph runs over one image's
# tokens, so a model with more tokens than this cannot be reduced by ranking in one TopK.
TOPK_LIMIT = 3840
