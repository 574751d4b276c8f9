"""The router fields of a point: router_dtype and routing_trace (values and their refusals)."""

import pytest

from moeperf.errors import UserError
from moeperf.spec import LayerShape


def test_defaults_and_labels():
    shape = LayerShape()
    assert (shape.router_dtype, shape.routing_trace) == ("float32", "none")
    label = LayerShape(router_dtype="layer", routing_trace="dir/t.safetensors:2").label()
    assert "router_dtype=layer" in label and "routing=t.safetensors:2" in label


@pytest.mark.parametrize("changes,part", [
    ({"router_dtype": "fp8"}, "router_dtype must be one of float32, layer"),
    ({"routing_trace": ""}, "routing_trace must be none, balanced"),
    ({"routing_trace": "hot:1.5"}, "hot:SHARE"),
    ({"routing_trace": "hot:x"}, "hot:SHARE"),
    ({"routing_trace": "zipf:-1"}, "zipf:S"),
    ({"routing_trace": "balanced:3"}, "balanced takes no value"),
    ({"routing_trace": "probs:1/2", "n_experts": 4, "top_k": 2}, "probs:W0/W1/..."),
    ({"routing_trace": "probs:1/0/0/0", "n_experts": 4, "top_k": 2}, "at least top_k=2"),
    ({"routing_trace": "balanced", "routing_skew": 1.0}, "cannot be combined"),
])
def test_bad_values_are_refused(changes, part):
    with pytest.raises(UserError, match=part.replace("(", r"\(")):
        LayerShape(**changes)


def test_a_dense_layer_sees_the_router_fields_at_their_defaults():
    shape = LayerShape(router_dtype="layer", routing_trace="balanced").for_kind("dense")
    assert (shape.router_dtype, shape.routing_trace) == ("float32", "none")
