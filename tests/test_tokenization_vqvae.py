"""Tests of VQVAEImageTokenizer: the code <-> token id layout, images <-> ids, errors and save/load."""

import numpy as np
import pytest
import torch
from conftest import make_tiny_config, make_word_level_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st

from hf_vqvae import VQVAEImageTokenizer, VQVAEModel


@pytest.fixture
def tokenizer():
    torch.manual_seed(0)
    model = VQVAEModel(make_tiny_config()).eval()
    return VQVAEImageTokenizer.from_model(model, code_offset=10)


def test_layout_and_vocab_size():
    tok = VQVAEImageTokenizer(codebook_size=16, grid_size=(2, 3), code_offset=100)
    assert (tok.boi_token_id, tok.eoi_token_id, tok.pad_token_id, tok.vocab_size) == (116, 117, 118, 119)
    assert tok.num_image_tokens == 2 * 3 + 2
    ids = tok.codes_to_ids(torch.arange(6).view(1, 2, 3))
    assert ids.tolist() == [[116, 100, 101, 102, 103, 104, 105, 117]]  # row-major, no row-end tokens
    plain = VQVAEImageTokenizer(codebook_size=16, grid_size=(2, 3), add_image_delimiters=False, use_pad_token=False)
    assert plain.vocab_size == 16 and plain.special_token_ids == {} and plain.num_image_tokens == 6


@settings(max_examples=50, deadline=None)
@given(
    codebook_size=st.integers(2, 600),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    offset=st.integers(0, 50_000),
    delimiters=st.booleans(),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_codes_ids_codes_round_trip_is_exact(codebook_size, h, w, offset, delimiters, batch, seed):
    tok = VQVAEImageTokenizer(
        codebook_size=codebook_size, grid_size=(h, w), code_offset=offset, add_image_delimiters=delimiters
    )
    codes = torch.randint(0, codebook_size, (batch, h, w), generator=torch.Generator().manual_seed(seed))
    ids = tok.codes_to_ids(codes)
    assert ids.shape == (batch, tok.num_image_tokens)
    assert int(ids.min()) >= offset and int(ids.max()) < tok.vocab_size
    assert torch.equal(tok.ids_to_codes(ids), codes)


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.integers(-5, 40), min_size=1, max_size=12))
def test_decoding_arbitrary_ids_either_errors_clearly_or_is_exact(ids):
    """Fuzz: any id sequence gives valid codes that map back to its image span, or a ValueError."""
    tok = VQVAEImageTokenizer(codebook_size=16, grid_size=(2, 2), code_offset=10)
    try:
        codes = tok.ids_to_codes([ids])
    except ValueError as error:
        assert "Sequence 0" in str(error)
        return
    assert codes.shape == (1, 2, 2) and int(codes.min()) >= 0 and int(codes.max()) < 16
    assert all(code + 10 in ids for code in codes.flatten().tolist())


@pytest.mark.parametrize(
    "ids, match",
    [
        ([26, 10, 11, 12, 27], "exactly 4 code tokens"),  # one token short
        ([26, 10, 11, 12, 13, 14, 27], "exactly 4 code tokens"),  # one too many
        ([26, 10, 28, 12, 13, 27], "a padding id is not a code"),  # padding inside the image
        ([26, 10, 11, 12, 9, 27], "id 9 is not a code"),  # below the offset (a text token)
        ([26, 10, 11, 12, 26, 27], "id 26 is not a code"),  # a special token inside
    ],
)
def test_bad_id_sequences_raise(ids, match):
    tok = VQVAEImageTokenizer(codebook_size=16, grid_size=(2, 2), code_offset=10)
    with pytest.raises(ValueError, match=match):
        tok.ids_to_codes([ids])


def test_image_span_is_found_among_text_tokens_and_padding():
    tok = VQVAEImageTokenizer(codebook_size=16, grid_size=(2, 2), code_offset=10)
    ids = [3, 4, 5, 26, 10, 11, 12, 25, 27, 7]  # text, image, text
    assert tok.ids_to_codes([ids]).tolist() == [[[0, 1], [2, 15]]]
    batch = tok.pad([[26, 10, 11, 12, 13, 27], [1, 26, 10, 11, 12, 13, 27]], padding_side="left")
    assert batch["input_ids"][0, 0].item() == tok.pad_token_id and batch["attention_mask"][0].tolist()[0] == 0
    assert tok.ids_to_codes(batch["input_ids"], batch["attention_mask"]).tolist() == [[[0, 1], [2, 3]]] * 2


def test_codes_to_ids_rejects_bad_codes():
    tok = VQVAEImageTokenizer(codebook_size=16, grid_size=(2, 2))
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        tok.codes_to_ids(torch.full((1, 2, 2), 16))
    with pytest.raises(ValueError, match=r"shape \(batch, 2, 2\)"):
        tok.codes_to_ids(torch.zeros(1, 3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        tok.codes_to_ids(torch.zeros(1, 2, 2))
    with pytest.raises(TypeError, match="ints"):
        tok.ids_to_codes([[1.5, 2]])


def test_images_to_ids_equals_model_encode(tokenizer):
    images = [np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(3)]
    encoding = tokenizer(images)
    assert encoding["input_ids"].shape == (3, tokenizer.num_image_tokens)
    assert encoding["attention_mask"].eq(1).all()
    pixel_values = tokenizer.image_processor(images)["pixel_values"]
    codes = tokenizer.model.encode(pixel_values).codes
    assert torch.equal(tokenizer.ids_to_codes(encoding["input_ids"]), codes)
    # Images the processor has already prepared (e.g. in a data-loading thread) give the same ids.
    assert torch.equal(tokenizer.encode_pixel_values(pixel_values)["input_ids"], encoding["input_ids"])


def test_ids_to_images_equals_model_decode(tokenizer):
    codes = torch.randint(0, 16, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    ids = tokenizer.codes_to_ids(codes)
    images = tokenizer.batch_decode(ids, output_type="np")
    expected = tokenizer.image_processor.postprocess(tokenizer.model.decode(codes).reconstruction, output_type="np")
    assert np.array_equal(images, expected)
    single = tokenizer.decode(ids[0])
    assert single.size == (16, 16)


def test_mapping_only_tokenizer_refuses_images():
    tok = VQVAEImageTokenizer(codebook_size=16, grid_size=(2, 2))
    with pytest.raises(ValueError, match="needs the VQ-VAE"):
        tok(np.zeros((8, 8, 3), dtype=np.uint8))


def test_save_and_load(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path)
    loaded = VQVAEImageTokenizer.from_pretrained(tmp_path)
    assert loaded.to_dict() == tokenizer.to_dict()
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert torch.equal(loaded(image)["input_ids"], tokenizer(image)["input_ids"])
    mapping_only = VQVAEImageTokenizer.from_pretrained(tmp_path, load_model=False)
    assert mapping_only.model is None and mapping_only.vocab_size == tokenizer.vocab_size


# ---------------------------------------------------------------------------------------------------------- text model


def tiny_llama(vocab_size: int):
    """A 1-layer Llama with untied input and output embeddings, built locally."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(config)


def test_add_to_text_model_appends_the_layout_and_resizes_embeddings(tmp_path):
    text_tokenizer = make_word_level_tokenizer(["cat", "dog"])  # ids 0-3
    text_model = tiny_llama(len(text_tokenizer))
    layout = VQVAEImageTokenizer(codebook_size=16, grid_size=(2, 2))  # the mapping alone is enough
    image_tokenizer = layout.add_to_text_model(text_tokenizer, text_model)

    assert image_tokenizer.code_offset == 4 and layout.code_offset == 0  # a new tokenizer; the old one unchanged
    assert (image_tokenizer.boi_token_id, image_tokenizer.eoi_token_id, image_tokenizer.pad_token_id) == (20, 21, 22)
    strings = image_tokenizer.token_strings()
    assert strings[:2] == ["<img_0>", "<img_1>"] and strings[-3:] == ["<boi>", "<eoi>", "<img_pad>"]
    assert text_tokenizer.convert_tokens_to_ids(strings) == list(range(4, 23)) and len(text_tokenizer) == 23
    assert text_model.get_input_embeddings().num_embeddings == 23
    assert text_model.get_output_embeddings().out_features == 23 and text_model.config.vocab_size == 23
    assert text_tokenizer("cat <boi><img_3> <img_15><eoi>")["input_ids"] == [2, 20, 7, 19, 21]
    assert text_tokenizer.decode([2, 20, 7, 21], skip_special_tokens=True) == "cat"

    # Idempotent, also after a save/load of the extended tokenizer; never shrinks the embeddings.
    assert layout.add_to_text_model(text_tokenizer, text_model).code_offset == 4 and len(text_tokenizer) == 23
    text_tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert layout.add_to_text_model(reloaded).to_dict() == image_tokenizer.to_dict()
    bigger = tiny_llama(64)
    layout.add_to_text_model(reloaded, bigger)
    assert bigger.get_input_embeddings().num_embeddings == 64

    # Some of the tokens at other ids: a different layout would silently garble images, so it is refused.
    with pytest.raises(
        ValueError, match=r"holds 11 of the 11 image tokens, not at the ids .*'<boi>' has id 20; the layout needs 12"
    ):
        VQVAEImageTokenizer(codebook_size=8, grid_size=(2, 2)).add_to_text_model(reloaded)
    partial = make_word_level_tokenizer(["cat", "<img_0>"])
    with pytest.raises(ValueError, match="already holds 1 of the 19 image tokens.*'<img_1>' is missing"):
        layout.add_to_text_model(partial)


def test_add_to_text_model_shares_the_vqvae(tokenizer):
    extended = tokenizer.add_to_text_model(make_word_level_tokenizer(["cat"]))
    assert extended.model is tokenizer.model and extended.image_processor is tokenizer.image_processor
    assert extended.code_offset == 3 and extended.grid_size == tokenizer.grid_size


def test_build_mixed_inputs_pads_and_masks_labels(tokenizer):
    text_tokenizer = make_word_level_tokenizer(["a", "cat", "dog"])
    image_tokenizer = tokenizer.add_to_text_model(text_tokenizer)  # code_offset 5
    codes = torch.randint(0, 16, (2, 4, 4), generator=torch.Generator().manual_seed(0))
    text_ids = text_tokenizer(["a cat", "dog"])["input_ids"]  # lengths 2 and 1
    batch = image_tokenizer.build_mixed_inputs(text_ids, codes=codes)
    length = 2 + image_tokenizer.num_image_tokens
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape == (2, length)
    image_ids = image_tokenizer.codes_to_ids(codes)
    assert batch["input_ids"][0].tolist() == text_ids[0] + image_ids[0].tolist()
    assert batch["input_ids"][1, -1].item() == image_tokenizer.pad_token_id and batch["attention_mask"][1, -1] == 0
    assert batch["labels"][1, -1].item() == -100 and torch.equal(batch["labels"][0], batch["input_ids"][0])
    assert torch.equal(image_tokenizer.ids_to_codes(batch["input_ids"], batch["attention_mask"]), codes)
    left = image_tokenizer.build_mixed_inputs(text_ids, codes=codes, padding_side="left")
    assert (
        left["attention_mask"][1, 0] == 0 and left["input_ids"][1, 1:].tolist() == text_ids[1] + image_ids[1].tolist()
    )

    images = [np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8) for i in range(2)]
    from_images = image_tokenizer.build_mixed_inputs(text_ids, images=images)
    assert torch.equal(from_images["input_ids"][0, 2:], image_tokenizer(images)["input_ids"][0])
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        image_tokenizer.build_mixed_inputs([[1, 7]], codes=codes[:1])
    with pytest.raises(ValueError, match="one per image"):
        image_tokenizer.build_mixed_inputs(text_ids, codes=codes[:1])
    with pytest.raises(ValueError, match="exactly one of"):
        image_tokenizer.build_mixed_inputs(text_ids)


@pytest.mark.parametrize(
    "ids, expected",
    [
        ([26, 10, 11, 12, 27], [0, 1, 2, 7]),  # one code short: filled with `fill_code`
        ([26, 10, 11, 27], [0, 1, 7, 7]),
        ([26, 10, 11, 12, 13, 14, 15, 27], [0, 1, 2, 3]),  # too many: the first h * w
        ([4, 26, 10, 11, 12, 13, 14], [0, 1, 2, 3]),  # no end-of-image either
        ([26, 10, 11, 3, 28, 28], [0, 1, 7, 7]),  # stopped by a text token (e.g. EOS), then padding
        ([26, 27], [7, 7, 7, 7]),
    ],
)
def test_wrong_number_of_image_tokens_is_an_error_unless_repair_is_asked_for(ids, expected):
    tok = VQVAEImageTokenizer(codebook_size=16, grid_size=(2, 2), code_offset=10)
    with pytest.raises(ValueError):
        tok.ids_to_codes([ids])
    repaired = tok.ids_to_codes([ids], on_wrong_length="truncate_or_pad", fill_code=7)
    assert repaired.flatten().tolist() == expected


def test_repair_options_are_checked():
    tok = VQVAEImageTokenizer(codebook_size=16, grid_size=(2, 2), code_offset=10)
    right = [26, 10, 11, 12, 13, 27]
    assert tok.ids_to_codes([right], on_wrong_length="truncate_or_pad").flatten().tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="`on_wrong_length` must be one of"):
        tok.ids_to_codes([right], on_wrong_length="pad")
    with pytest.raises(ValueError, match=r"`fill_code` must be a code in \[0, 16\)"):
        tok.ids_to_codes([right], on_wrong_length="truncate_or_pad", fill_code=16)
    with pytest.raises(ValueError, match="a padding id is not a code"):  # the repair is about length only
        tok.ids_to_codes([[26, 10, 28, 12, 13, 27]], on_wrong_length="truncate_or_pad")


def test_prefix_allowed_tokens_fn_forces_well_formed_images():
    tok = VQVAEImageTokenizer(codebook_size=16, grid_size=(2, 2), code_offset=10)
    codes, text_and_boi = list(range(10, 26)), list(range(10)) + [26]
    assert tok.prefix_allowed_tokens_fn(0, torch.tensor([3, 4])) == text_and_boi
    assert tok.prefix_allowed_tokens_fn(0, torch.tensor([3, 26])) == codes
    assert tok.prefix_allowed_tokens_fn(0, torch.tensor([3, 26, 10, 11, 12])) == codes
    assert tok.prefix_allowed_tokens_fn(0, torch.tensor([3, 26, 10, 11, 12, 13])) == [27]
    assert tok.prefix_allowed_tokens_fn(0, torch.tensor([3, 26, 10, 11, 12, 13, 27])) == text_and_boi
    with pytest.raises(ValueError, match="needs the begin/end-of-image tokens"):
        VQVAEImageTokenizer(16, (2, 2), add_image_delimiters=False).prefix_allowed_tokens_fn(0, torch.tensor([1]))


def test_ids_from_datasets_and_numpy_are_accepted():
    tok = VQVAEImageTokenizer(codebook_size=16, grid_size=(2, 2), code_offset=10)
    ids = np.array([[26, 10, 11, 12, 13, 27]], dtype=np.int32)
    assert tok.ids_to_codes(ids).tolist() == tok.ids_to_codes(list(ids)).tolist() == [[[0, 1], [2, 3]]]
    with pytest.raises(TypeError, match="integers"):
        tok.ids_to_codes(ids.astype(np.float32))
