"""Class names or ids -> class ids: the one place every class-conditional entry point resolves `class_labels`.

A class-conditional model stores its class names in `config.id2label` (the transformers convention); users may pass
either the ids or those names, alone or in a list, wherever a class is taken.
"""

import torch


ClassLabel = int | str
# One class per sample, a single class for the whole batch, or `None` for unconditional.
ClassLabels = ClassLabel | list[ClassLabel] | torch.LongTensor | None


def class_names(id2label: dict | None, num_classes: int) -> dict[str, int]:
    """Name -> id for the names in `id2label` (keys may be `int` or, after a JSON round trip, `str`)."""
    names = {}
    for index, name in (id2label or {}).items():
        index = int(index)
        # transformers fills `id2label` with "LABEL_0", "LABEL_1" by default; those are names too.
        if 0 <= index < num_classes:
            names[str(name)] = index
    return names


def _to_id(label, names: dict[str, int], num_classes: int, keyword: str) -> int:
    if isinstance(label, str):
        if label not in names:
            raise ValueError(
                f"Unknown class name {label!r} in `{keyword}`; this model's classes are {list(names)} "
                f"(`config.id2label`), or pass an id in [0, {num_classes})."
            )
        return names[label]
    if isinstance(label, bool) or not isinstance(label, int):
        raise ValueError(
            f"`{keyword}` must hold class ids (int in [0, {num_classes})) or class names (str); got "
            f"{type(label).__name__} {label!r}."
        )
    if not 0 <= label < num_classes:
        raise ValueError(f"Class id {label} in `{keyword}` is outside [0, {num_classes}) (`num_classes`).")
    return label


def resolve_class_labels(
    class_labels: ClassLabels, num_classes: int, id2label: dict | None = None, keyword: str = "class_labels"
) -> int | list[int] | torch.LongTensor | None:
    r"""
    Replace class names by their ids and check every id.

    Args:
        class_labels (`int`, `str`, a `list` of them, or `torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Ids in `[0, num_classes)` or names from `id2label`. `None` (unconditional) is returned unchanged.
        num_classes (`int`):
            Number of classes of the model; 0 means unconditional, which accepts only `None`.
        id2label (`dict`, *optional*):
            The model config's `id2label`.
        keyword (`str`, *optional*, defaults to `"class_labels"`):
            The argument's name in the caller's signature, for the error message.

    Returns:
        `None`, an `int`, a `list[int]` or the tensor as given (its values checked), mirroring the input's form.
    """
    if class_labels is None:
        return None
    if num_classes == 0:
        raise ValueError(f"This model is unconditional (`num_classes` is 0); got `{keyword}`={class_labels!r}.")
    if isinstance(class_labels, torch.Tensor):
        if class_labels.is_floating_point() or class_labels.is_complex() or class_labels.dtype == torch.bool:
            raise ValueError(f"`{keyword}` must be an integer tensor of class ids; got dtype {class_labels.dtype}.")
        if class_labels.numel() and (class_labels.min() < 0 or class_labels.max() >= num_classes):
            raise ValueError(
                f"`{keyword}` must lie in [0, {num_classes}) (`num_classes`); got values in "
                f"[{int(class_labels.min())}, {int(class_labels.max())}]."
            )
        return class_labels
    names = class_names(id2label, num_classes)
    if isinstance(class_labels, (list, tuple)):
        return [_to_id(label, names, num_classes, keyword) for label in class_labels]
    return _to_id(class_labels, names, num_classes, keyword)


__all__ = ["ClassLabel", "ClassLabels", "class_names", "resolve_class_labels"]
