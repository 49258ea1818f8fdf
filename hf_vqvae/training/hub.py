"""Uploads to the Hub, and the Hub token kept out of everything a run writes or prints.

The token is best left to huggingface_hub's own lookup (`hf auth login`, or the `HF_TOKEN` variable): scripts pass
`token=None` and never see it. A `--hub_token` on the command line still works, but it is visible to other users of
the machine (process list, shell history), so [`warn_token_on_command_line`] says so once. Whatever form the flag
takes (`--hub_token X`, `--hub_token=X`, an abbreviation argparse accepts such as `--hub_tok=X`, or inside an
argument string passed on to another script, e.g. `--vqvae_extra_args "--hub_token=X"`), [`find_secrets`] finds its
value and [`redact`] replaces it in the command lines, arguments, cards, tracker configs and results the scripts write.
"""

import functools
import os
import shlex

from transformers.utils import logging

from .checkpointing import CHECKPOINT_PREFIX


logger = logging.get_logger(__name__)

# Files `push_folder` leaves out of an uploaded output folder by default.
HUB_IGNORE_PATTERNS = [f"{CHECKPOINT_PREFIX}*", f"{CHECKPOINT_PREFIX}*/**", "logs/**", ".tmp*", ".tmp*/**"]
TOKEN_FLAG = "--hub_token"
REDACTED = "***"
# The shortest abbreviation of `--hub_token` treated as one: argparse refuses `--h`/`--hub` as ambiguous, but its
# error message would still print the value.
_MIN_ABBREVIATION = len("--h")


def _token_flag_value(items: list[str], index: int) -> tuple[str | None, int]:
    """The value given to a `--hub_token` flag (or an abbreviation of it) at `items[index]`, and the items it took."""
    item = items[index]
    flag, has_value, value = item.partition("=")
    if not (flag.startswith("--") and len(flag) >= _MIN_ABBREVIATION and TOKEN_FLAG.startswith(flag)):
        return None, 0
    if has_value:
        return value, 1
    if index + 1 < len(items) and not items[index + 1].startswith("-"):
        return items[index + 1], 2
    return None, 1


def find_secrets(argv: list[str] | None) -> list[str]:
    """
    The Hub tokens in command-line arguments `argv`, in any form argparse accepts, and in argument strings nested in
    them (the value of `--vqvae_extra_args`, `--prior_extra_args`, ...).
    """
    secrets = []
    items = list(argv or [])
    index = 0
    while index < len(items):
        value, taken = _token_flag_value(items, index)
        if value:
            secrets.append(value)
        if taken == 0:
            # An argument string for another script, alone or as `--flag=STRING`: look inside it.
            for text in {items[index], items[index].partition("=")[2]}:
                if "--" not in text:
                    continue
                try:
                    nested = shlex.split(text)
                except ValueError:  # unbalanced quotes: not an argument string
                    nested = text.split()
                if nested != [items[index]]:
                    secrets += find_secrets(nested)
            index += 1
        else:
            index += taken
    return sorted(set(secrets), key=len, reverse=True)  # longest first, so that one secret never hides in another


def redact(value, secrets: list[str]):
    """`value` (a string, or a list, tuple or dict of them, nested) with every secret replaced by `***`."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {key: redact(item, secrets) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item, secrets) for item in value)
    return value


def strip_token_arguments(argv: list[str]) -> tuple[list[str], str | None]:
    """
    `argv` without its `--hub_token` flags (any form), and the token they gave: a script passes the token on to
    another in the child's environment (`HF_TOKEN`), where no process list shows it.
    """
    kept, token = [], None
    index = 0
    while index < len(argv):
        value, taken = _token_flag_value(argv, index)
        if taken:
            token = value or token
            index += taken
        else:
            kept.append(argv[index])
            index += 1
    return kept, token


@functools.cache
def warn_token_on_command_line():
    """Say once per process that a token on the command line is visible to other users of the machine."""
    logger.warning(
        "A Hub token given with `--hub_token` is visible to other users of this machine (process list, shell "
        "history). Prefer `hf auth login` or the `HF_TOKEN` environment variable, which are used when "
        "`--hub_token` is left out. The token is kept out of every file and message this run writes."
    )


def resolve_token(token: str | None) -> str | None:
    """The token to pass to huggingface_hub: `token` (with the one-time warning), or `None` for its own lookup."""
    if token is not None:
        warn_token_on_command_line()
    return token


def push_folder(
    folder: str | os.PathLike,
    repo_id: str,
    commit_message: str,
    *,
    repo_type: str = "model",
    private: bool = False,
    token: str | None = None,
    ignore_patterns: list[str] | None = None,
    exit_on_failure: bool = False,
) -> str:
    """
    Create the Hub repository if needed and upload `folder` (without checkpoints, logs and temporary files by default);
    return the commit URL. `token=None` uses huggingface_hub's lookup (login or `HF_TOKEN`). Any failure (network,
    auth, server) raises `RuntimeError` saying that the local files are intact and how to upload them later; with
    `exit_on_failure` (scripts), that message is logged and the process exits with status 1.
    """
    from huggingface_hub import create_repo, upload_folder

    try:
        created = create_repo(repo_id, repo_type=repo_type, exist_ok=True, private=private, token=token).repo_id
        commit = upload_folder(
            repo_id=created,
            repo_type=repo_type,
            folder_path=str(folder),
            token=token,
            ignore_patterns=HUB_IGNORE_PATTERNS if ignore_patterns is None else ignore_patterns,
            commit_message=commit_message,
        )
    except Exception as error:  # any failure: network, auth, server
        kind, flag = ("dataset repository", " --repo-type dataset") if repo_type == "dataset" else ("repository", "")
        message = (
            f"Upload to the Hub {kind} {repo_id!r} failed: {redact(str(error), [token] if token else [])}. The files "
            f"are intact in {folder}; upload them later with `hf upload{flag} {repo_id} {folder}`."
        )
        if exit_on_failure:
            logger.error(message)
            raise SystemExit(1) from error
        raise RuntimeError(message) from error
    logger.info(f"Uploaded {folder} to {commit.commit_url}")
    return commit.commit_url


__all__ = [
    "HUB_IGNORE_PATTERNS",
    "REDACTED",
    "TOKEN_FLAG",
    "find_secrets",
    "push_folder",
    "redact",
    "resolve_token",
    "strip_token_arguments",
    "warn_token_on_command_line",
]
