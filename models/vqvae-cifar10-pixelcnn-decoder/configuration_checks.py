"""Checks shared by the configurations: each raises `ValueError` naming the setting, the value that came and the fix.

Imported by every `configuration_*.py` (and copied beside them into shipped folders for `trust_remote_code`).
"""

from transformers import PreTrainedConfig


def check_integers(config, names: tuple[str, ...], minimum: int = 1, hint: str = ""):
    """Each of `config`'s settings `names` is an `int` (not a `bool`) >= `minimum`; `hint` follows the rule."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            rule = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ValueError(f"`{name}` must be {rule}{hint}; got {value!r}.")


def check_odd_kernel_size(name: str, value, example: str = ""):
    """`value` is an odd integer >= 3 (a convolution window with a centre)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 3 or value % 2 == 0:
        raise ValueError(f"`{name}` must be an odd integer >= 3{example}; got {value!r}.")


def check_probabilities(config, names: tuple[str, ...]):
    """Each of `config`'s settings `names` is a number in [0, 1) (a dropout probability)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"`{name}` must be a probability in [0, 1); got {value!r}.")


def check_grid_size(grid):
    """`grid` is `(h, w)`, a tuple of two positive integers: the code grid of a prior."""
    if (
        not isinstance(grid, tuple)
        or len(grid) != 2
        or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in grid)
    ):
        raise ValueError(
            f"`grid_size` must be `(h, w)`, two positive integers (`VQVAEConfig.latent_size()`); got {grid!r}."
        )


def check_model_type(config_class: type[PreTrainedConfig], config_dict: dict, source, accepted: tuple[str, ...] = ()):
    """
    Refuse a saved config of another `model_type` than `config_class`'s (or one of `accepted`). transformers only
    warns there, then builds the config from defaults, so that `Model.from_pretrained(other_folder)` returned a
    randomly initialised model.
    """
    found = config_dict.get("model_type")
    if found is not None and found != config_class.model_type and found not in accepted:
        raise ValueError(
            f"{source!r} holds a model of type `{found}`, not `{config_class.model_type}` ({config_class.__name__}): "
            "load it with its own class or the Auto classes (`AutoConfig`, `AutoModel`; `AutoModelForCausalLM` for "
            "a prior)."
        )


__all__ = ["check_grid_size", "check_integers", "check_model_type", "check_odd_kernel_size", "check_probabilities"]
