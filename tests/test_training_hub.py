"""Tests of `hf_vqvae.training.hub` and the arguments of `hf_vqvae.training.args`: a Hub token is found in every form
argparse accepts and kept out of command lines, cards, tracker configs and error messages (issue 23). The end-to-end
checks, one per script, are in `test_token_leak.py` (slow)."""

import argparse
import logging

import pytest

from hf_vqvae.training import hub
from hf_vqvae.training.args import (
    ScriptArgumentParser,
    TrainingArguments,
    VQVAETrainingArguments,
    add_hub_arguments,
    parse_overrides,
)
from hf_vqvae.training.cards import command_line
from hf_vqvae.training.hub import find_secrets, redact, strip_token_arguments


TOKEN = "hf_PlantedSecret0123456789"


@pytest.mark.parametrize(
    "argv",
    [
        ["--hub_token", TOKEN],
        [f"--hub_token={TOKEN}"],
        [f"--hub_tok={TOKEN}"],
        ["--hub_t", TOKEN],
        [f"--hub={TOKEN}"],  # ambiguous for argparse, whose error message would still show it
        ["--vqvae_extra_args", f"--lr_scheduler cosine --hub_token {TOKEN}"],
        [f"--vqvae_extra_args=--hub_token={TOKEN} --seed 1"],
        ["--prior_extra_args", f"--seed 1 '--hub_tok={TOKEN}'"],
    ],
)
def test_every_form_of_the_token_is_found_and_redacted(argv):
    argv = ["--output_dir", "out", *argv, "--seed", "0"]
    assert find_secrets(argv) == [TOKEN]
    shown = command_line(argv)
    assert TOKEN not in shown and hub.REDACTED in shown and "--output_dir out" in shown


def test_nothing_is_redacted_without_a_token():
    argv = ["--hub_model_id", "org/model", "--push_to_hub", "--hub_private_repo", "--output_dir", "hub_token"]
    assert find_secrets(argv) == []
    assert command_line(argv) == "--hub_model_id org/model --push_to_hub --hub_private_repo --output_dir hub_token"
    # A flag with no value (argparse's error) is not a token, nor is the next flag.
    assert find_secrets(["--hub_token", "--seed", "0"]) == []


def test_redact_walks_nested_values():
    value = {"a": [f"x{TOKEN}y", ("b", TOKEN)], "c": 3, "d": {"e": TOKEN}}
    assert redact(value, [TOKEN]) == {"a": ["x***y", ("b", "***")], "c": 3, "d": {"e": "***"}}
    assert redact(value, []) is value


def test_a_token_is_passed_on_outside_the_arguments():
    argv = ["--seed", "0", f"--hub_tok={TOKEN}", "--push_to_hub", "--hub_token", "hf_other"]
    kept, token = strip_token_arguments(argv)
    assert kept == ["--seed", "0", "--push_to_hub"] and token == "hf_other"
    assert strip_token_arguments(["--seed", "0"]) == (["--seed", "0"], None)


def test_parser_errors_never_show_the_token(capsys):
    parser = ScriptArgumentParser(prog="script")
    parser.add_argument("--seed", type=int)
    add_hub_arguments(parser, repo_example="org/x")
    for argv in ([f"--hub={TOKEN}"], ["--unknown", f"--hub_token={TOKEN}", "--bogus"], ["--seed", TOKEN]):
        with pytest.raises(SystemExit):
            parser.parse_args([*argv, f"--hub_token={TOKEN}"])
        error = capsys.readouterr().err
        assert "error:" in error and TOKEN not in error


def test_arguments_keep_the_token_out_of_what_is_written(caplog):
    argv = ["--output_dir", "out", "--hub_token", TOKEN]
    namespace = argparse.Namespace(
        **{name: None for name in VQVAETrainingArguments.__dataclass_fields__ if name != "command_line"}
    )
    namespace.hub_token, namespace.output_dir = TOKEN, f"out-{TOKEN}"
    hub.warn_token_on_command_line.cache_clear()
    with caplog.at_level(logging.WARNING):
        args = VQVAETrainingArguments.from_namespace(namespace, argv, config_overrides={})
        VQVAETrainingArguments.from_namespace(namespace, argv, config_overrides={})
    assert caplog.text.count("visible to other users of this machine") == 1  # once per process
    assert args.hub_token == TOKEN  # the upload still gets it
    assert TOKEN not in args.command_line
    public = args.public_dict()
    assert "hub_token" not in public and "command_line" not in public and TOKEN not in repr(public)
    with pytest.raises(Exception, match="cannot assign"):
        args.seed = 1  # frozen: nothing changes the arguments after parsing


def test_every_flag_needs_a_field():
    namespace = argparse.Namespace(
        **{name: None for name in TrainingArguments.__dataclass_fields__ if name != "command_line"}, typo=1
    )
    with pytest.raises(TypeError, match=r"no fields for the flags \['typo'\]"):
        TrainingArguments.from_namespace(namespace, [])


def test_parse_overrides():
    assert parse_overrides("a=1,b=true,c=(1,2),d=x") == {"a": 1, "b": True, "c": [1, 2], "d": "x"}
    with pytest.raises(ValueError, match="must be key=value"):
        parse_overrides("a")


def test_a_failed_upload_does_not_show_the_token(monkeypatch):
    import huggingface_hub

    def fail(repo_id, **kwargs):
        raise OSError(f"401 for token {kwargs['token']}")

    monkeypatch.setattr(huggingface_hub, "create_repo", fail)
    with pytest.raises(RuntimeError, match="failed") as error:
        hub.push_folder("folder", "org/x", "message", token=TOKEN)
    assert TOKEN not in str(error.value) and "hf upload org/x folder" in str(error.value)
