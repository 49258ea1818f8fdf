"""Tests of VQVAEImageTokenizer: the code <-> token id layout, images <-> ids, errors and save/load."""

import numpy as np
import pytest
import torch
from conftest import make_tiny_config
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
    tok = VQVAEImageTokenizer(codebook_size=codebook_size, grid_size=(h, w), code_offset=offset,
                              add_image_delimiters=delimiters)
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
