import pytest

from edgeprune import EdgepruneError
from edgeprune.families.loading import load_model
from edgeprune.families.weights import parse_model_args


def test_parse_model_args_types():
    args = parse_model_args(["depth=6", "img_size=32", "global_pool=avg", "mlp_ratio=2.0", "class_token=False", "x=(1, 2)"])
    assert args == {"depth": 6, "img_size": 32, "global_pool": "avg", "mlp_ratio": 2.0, "class_token": False, "x": (1, 2)}
    with pytest.raises(EdgepruneError):
        parse_model_args(["=3"])


def test_load_model_suggests_names():
    with pytest.raises(EdgepruneError, match="did you mean"):
        load_model("vit_smal_patch16_224")


def test_bad_model_args_are_one_error():
    with pytest.raises(EdgepruneError, match="cannot build"):
        load_model("vit_tiny_patch16_224", model_args={"embed_dim": 30, "num_heads": 4})


def test_missing_hf_folder():
    with pytest.raises(EdgepruneError, match="does not exist"):
        load_model("./no/such/folder")
