import pytest
import torch

from hf_vqvae.class_labels import class_names, resolve_class_labels


ID2LABEL = {0: "airplane", 1: "automobile", 2: "bird"}


def test_names_and_ids_resolve_to_ids():
    assert resolve_class_labels("bird", 3, ID2LABEL) == 2
    assert resolve_class_labels(["automobile", 0, "bird"], 3, ID2LABEL) == [1, 0, 2]
    assert resolve_class_labels(1, 3, ID2LABEL) == 1
    assert resolve_class_labels(None, 3, ID2LABEL) is None
    labels = torch.tensor([0, 2])
    assert resolve_class_labels(labels, 3, ID2LABEL) is labels


def test_json_round_tripped_keys_are_read():
    assert class_names({"0": "cat", "1": "dog"}, 2) == {"cat": 0, "dog": 1}


@pytest.mark.parametrize(
    "class_labels, num_classes, match",
    [
        ("cat", 3, "Unknown class name 'cat' in `class_labels`; this model's classes are \\['airplane'"),
        (3, 3, r"outside \[0, 3\)"),
        (-1, 3, r"outside \[0, 3\)"),
        ([0, 1.5], 3, "must hold class ids"),
        (True, 3, "must hold class ids"),
        (torch.tensor([0, 5]), 3, r"must lie in \[0, 3\)"),
        (torch.tensor([0.0]), 3, "integer tensor"),
        (0, 0, "unconditional"),
    ],
)
def test_bad_class_labels_raise(class_labels, num_classes, match):
    with pytest.raises(ValueError, match=match):
        resolve_class_labels(class_labels, num_classes, ID2LABEL)


def test_keyword_is_named_in_the_error():
    with pytest.raises(ValueError, match="`prior_class_label`"):
        resolve_class_labels("truck", 3, ID2LABEL, keyword="prior_class_label")
