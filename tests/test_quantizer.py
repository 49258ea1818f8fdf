"""Tests for `VectorQuantizer` (paper section 3.1 and appendix A.1), parametrized over its options in the style of
vector-quantize-pytorch: nearest-code assignment (also under bf16 autocast), the straight-through gradient, which
parameters each loss term reaches, `lookup`, the EMA update, dead-code restarts, k-means init, perplexity, argument
validation and the state_dict round trip."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from hf_vqvae.quantizer import QuantizerOutput, VectorQuantizer, _argmax_rows


K, D = 8, 4
LEADING_SHAPES = [(24,), (2, 12), (2, 3, 4)]
# Every combination of the training-time options; threshold 2.0 restarts codes on the first call (usage starts at 1).
OPTIONS = [
    {"use_ema": ema, "dead_code_threshold": threshold, "use_kmeans_init": kmeans}
    for ema, threshold, kmeans in itertools.product((False, True), (0.0, 2.0), (False, True))
]
OPTION_IDS = [
    "-".join(
        (
            "ema" if o["use_ema"] else "grad",
            f"thr{o['dead_code_threshold']}",
            "kmeans" if o["use_kmeans_init"] else "uniform",
        )
    )
    for o in OPTIONS
]
STATE_KEYS = ("codebook.weight", "initialized", "code_usage", "ema_cluster_size", "ema_embed_sum")


def make_quantizer(seed=0, codebook=None, **kwargs):
    torch.manual_seed(seed)
    quantizer = VectorQuantizer(**{"codebook_size": K, "codebook_dim": D, **kwargs})
    if codebook is not None:
        with torch.no_grad():
            quantizer.codebook.weight.copy_(codebook)
            if quantizer.use_ema:
                quantizer.ema_embed_sum.copy_(codebook)  # keep the EMA state consistent with the codebook
    return quantizer


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def brute_force_codes(vectors, codebook):
    """Exact nearest codes: pairwise distances in float64 without the matmul shortcut."""
    distances = torch.cdist(vectors.double(), codebook.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return distances.argmin(dim=1)


def spy_on_assignment(quantizer, monkeypatch):
    """Record the codebook each call assigns codes with (k-means init may replace it just before)."""
    seen = []
    original = quantizer.nearest_codes

    def nearest_codes(vectors):
        seen.append(quantizer.codebook.weight.detach().clone())
        return original(vectors)

    monkeypatch.setattr(quantizer, "nearest_codes", nearest_codes)
    return seen


def state(quantizer):
    return {name: tensor.detach().clone() for name, tensor in quantizer.state_dict().items()}


def assert_same_state(actual, expected):
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


# ---------------------------------------------------------------- assignment and shapes


@pytest.mark.parametrize("shape", LEADING_SHAPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_output_shapes_and_types(options, shape):
    quantizer = make_quantizer(**options)
    out = quantizer(randn(*shape, D))
    assert isinstance(out, QuantizerOutput)
    assert out.quantized.shape == (*shape, D) and out.quantized.dtype == torch.float32
    assert out.codes.shape == shape and out.codes.dtype == torch.long
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < K
    for scalar in (out.codebook_loss, out.commitment_loss, out.perplexity):
        assert scalar.shape == () and torch.isfinite(scalar)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", LEADING_SHAPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_nearest_code_matches_brute_force(options, shape, training, monkeypatch):
    quantizer = make_quantizer(codebook=randn(K, D, seed=1), **options).train(training)
    seen = spy_on_assignment(quantizer, monkeypatch)
    latents = randn(*shape, D, seed=2)
    out = quantizer(latents)
    (codebook,) = seen
    expected = brute_force_codes(latents.reshape(-1, D), codebook).view(shape)
    assert torch.equal(out.codes, expected)
    # Forward values of z_q are the chosen codebook vectors (up to the rounding of x + (e - x)).
    torch.testing.assert_close(out.quantized, codebook[expected])


def close_codebook_inputs(num=256):
    """Codes 0.05 apart around 4.0, inputs 0.002 from a code: bf16 (spacing 2^-5 at 4) cannot tell the codes apart."""
    codebook = 4.0 + 0.05 * randn(16, D, seed=3)
    labels = torch.randint(0, 16, (num,), generator=torch.Generator().manual_seed(4))
    latents = codebook[labels] + 0.002 * randn(num, D, seed=5)
    return codebook, latents, labels


@pytest.mark.parametrize("use_ema", [False, True], ids=["grad", "ema"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_codes_are_computed_in_fp32_under_bf16_autocast(training, use_ema):
    codebook, latents, labels = close_codebook_inputs()
    assert torch.equal(brute_force_codes(latents, codebook), labels)

    # What the distance matmul would choose if autocast ran it in bf16: many codes differ.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_distances = torch.addmm((codebook * codebook).sum(1), latents, codebook.t(), alpha=-2.0)
    assert bf16_distances.dtype == torch.bfloat16
    assert (bf16_distances.argmin(dim=1) != labels).float().mean() > 0.25

    fp32_codes = make_quantizer(codebook=codebook, codebook_size=16, use_ema=use_ema).train(training)(latents).codes
    quantizer = make_quantizer(codebook=codebook, codebook_size=16, use_ema=use_ema).train(training)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp_codes = quantizer(latents).codes
    assert torch.equal(fp32_codes, labels)
    assert torch.equal(amp_codes, labels)


# ---------------------------------------------------------------- gradients and losses


@pytest.mark.parametrize("shape", LEADING_SHAPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_straight_through_gradient_is_identity(options, shape):
    quantizer = make_quantizer(**options)
    latents = randn(*shape, D).requires_grad_()
    quantizer(latents).quantized.sum().backward()
    assert torch.equal(latents.grad, torch.ones_like(latents))


NON_EMA_OPTIONS = [(o, i) for o, i in zip(OPTIONS, OPTION_IDS) if not o["use_ema"]]


@pytest.mark.parametrize("shape", LEADING_SHAPES, ids=str)
@pytest.mark.parametrize("options", [o for o, _ in NON_EMA_OPTIONS], ids=[i for _, i in NON_EMA_OPTIONS])
def test_codebook_loss_reaches_only_the_codebook(options, shape, monkeypatch):
    # beta != 1 and != default, so that beta on the wrong term would show in the values.
    quantizer = make_quantizer(commitment_cost=0.3, **options)
    assert quantizer.codebook.weight.requires_grad
    seen = spy_on_assignment(quantizer, monkeypatch)
    latents = randn(*shape, D).requires_grad_()
    out = quantizer(latents)
    (codebook,) = seen
    flat, codes = latents.detach().reshape(-1, D), out.codes.reshape(-1)
    chosen = codebook[codes]
    torch.testing.assert_close(out.codebook_loss, ((chosen - flat) ** 2).mean())

    out.codebook_loss.backward()
    assert latents.grad is None
    # d/de_k mean((e_k - x)^2) summed over the vectors assigned to k.
    expected = torch.zeros(K, D).index_add_(0, codes, 2 * (chosen - flat) / flat.numel())
    torch.testing.assert_close(quantizer.codebook.weight.grad, expected)
    assert quantizer.codebook.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", LEADING_SHAPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_commitment_loss_reaches_only_the_input(options, shape, monkeypatch):
    beta = 0.3
    quantizer = make_quantizer(commitment_cost=beta, **options)
    seen = spy_on_assignment(quantizer, monkeypatch)
    latents = randn(*shape, D).requires_grad_()
    out = quantizer(latents)
    (codebook,) = seen
    flat = latents.detach().reshape(-1, D)
    chosen = codebook[out.codes.reshape(-1)]
    torch.testing.assert_close(out.commitment_loss, beta * F.mse_loss(flat, chosen))

    out.commitment_loss.backward()
    grad = quantizer.codebook.weight.grad
    assert grad is None or not grad.any()
    expected = (2 * beta * (flat - chosen) / flat.numel()).view_as(latents)
    torch.testing.assert_close(latents.grad, expected)


def test_ema_codebook_is_not_trainable_and_has_no_codebook_loss():
    quantizer = make_quantizer(use_ema=True)
    assert not quantizer.codebook.weight.requires_grad
    assert not any(p is quantizer.codebook.weight for p in quantizer.parameters() if p.requires_grad)
    out = quantizer(randn(5, D).requires_grad_())
    assert out.codebook_loss.item() == 0.0 and not out.codebook_loss.requires_grad
    assert out.commitment_loss.requires_grad


# ---------------------------------------------------------------- lookup


@pytest.mark.parametrize("shape", LEADING_SHAPES, ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_lookup_reproduces_quantized(options, shape):
    quantizer = make_quantizer(**options)
    quantizer(randn(*shape, D, seed=1))  # one training call: k-means init, EMA, restarts
    quantizer.eval()
    out = quantizer(randn(*shape, D, seed=2))
    looked_up = quantizer.lookup(out.codes)
    assert looked_up.shape == out.quantized.shape
    # quantized = x + (e - x).detach() rounds to within an ulp or so of e.
    torch.testing.assert_close(looked_up, out.quantized, rtol=0, atol=1e-6)
    assert torch.equal(quantizer.lookup(out.codes.int()), looked_up)


@pytest.mark.parametrize("bad", [-1, K], ids=["minus_one", "codebook_size"])
def test_lookup_rejects_out_of_range_codes(bad):
    quantizer = make_quantizer()
    with pytest.raises(ValueError, match=r"must lie in \[0, 8\)"):
        quantizer.lookup(torch.tensor([[0, bad], [1, 2]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_lookup_rejects_non_integer_codes(dtype):
    with pytest.raises(TypeError, match="integer tensor"):
        make_quantizer().lookup(torch.zeros(3, dtype=dtype))


# ---------------------------------------------------------------- EMA update (appendix A.1)


def ema_reference_step(cluster_size, embed_sum, codebook, latents, decay, eps):
    """One appendix-A.1 step in float64, with Laplace smoothing; returns the new state and the codes used."""
    codes = brute_force_codes(latents, codebook)
    counts = torch.bincount(codes, minlength=K).double()
    sums = torch.zeros(K, D, dtype=torch.float64).index_add_(0, codes, latents.double())
    cluster_size = decay * cluster_size + (1 - decay) * counts
    embed_sum = decay * embed_sum + (1 - decay) * sums
    total = cluster_size.sum()
    smoothed = (cluster_size + eps) / (total + K * eps) * total
    return cluster_size, embed_sum, embed_sum / smoothed[:, None], codes


@pytest.mark.parametrize("decay,eps", [(0.99, 1e-5), (0.8, 0.1)], ids=["paper", "strong_smoothing"])
@pytest.mark.parametrize("num_steps", [1, 2])
@pytest.mark.parametrize("shape", LEADING_SHAPES, ids=str)
def test_ema_update_matches_appendix_a1(shape, num_steps, decay, eps):
    quantizer = make_quantizer(use_ema=True, ema_decay=decay, ema_epsilon=eps)
    # The starting state: cluster sizes of 1 and sums equal to the codebook.
    assert torch.equal(quantizer.ema_cluster_size, torch.ones(K))
    assert torch.equal(quantizer.ema_embed_sum, quantizer.codebook.weight)
    cluster_size = quantizer.ema_cluster_size.double()
    embed_sum = quantizer.ema_embed_sum.double()
    codebook = quantizer.codebook.weight.detach().double()
    usage = torch.ones(K, dtype=torch.float64)
    for step in range(num_steps):
        # Same scale as the initial codebook, positive so that several codes are used and others are not.
        latents = 0.15 * randn(*shape, D, seed=10 + step).abs()
        out = quantizer(latents)
        flat = latents.reshape(-1, D)
        cluster_size, embed_sum, codebook, codes = ema_reference_step(
            cluster_size, embed_sum, codebook, flat, decay, eps
        )
        usage = decay * usage + (1 - decay) * torch.bincount(codes, minlength=K).double()
        assert torch.equal(out.codes.reshape(-1), codes)
    assert 1 < len(codes.unique()) < K
    torch.testing.assert_close(quantizer.ema_cluster_size, cluster_size.float(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(quantizer.ema_embed_sum, embed_sum.float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(quantizer.codebook.weight.detach(), codebook.float(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(quantizer.code_usage, usage.float(), rtol=1e-6, atol=1e-7)


def test_unused_code_stays_finite_for_2000_steps():
    quantizer = make_quantizer(use_ema=True, codebook_size=4)
    # Inputs far from the initial codebook (within 1/K of 0): the codes that start losing keep losing.
    latents = 5.0 + 0.1 * randn(32, D)
    used = torch.zeros(4, dtype=torch.bool)
    for _ in range(2000):
        used |= torch.bincount(quantizer(latents).codes, minlength=4) > 0
    unused = ~used
    assert unused.any()
    # N_i of a never-used code has decayed to 0.99^2000 ~ 2e-9: without smoothing, e_i = m_i / N_i would be 0/0 soon.
    assert (quantizer.ema_cluster_size[unused] < 1e-8).all()
    assert torch.isfinite(quantizer.codebook.weight).all()
    assert torch.isfinite(quantizer.ema_embed_sum).all()

    # Even an exactly empty cluster (as in implementations that start N at 0) divides by a positive number.
    with torch.no_grad():
        quantizer.ema_cluster_size[unused] = 0.0
        quantizer.ema_embed_sum[unused] = 0.0
    quantizer(latents)
    assert torch.isfinite(quantizer.codebook.weight).all()


# ---------------------------------------------------------------- dead-code restarts and eval mode


@pytest.mark.parametrize("threshold", [0.0, 0.995, 2.0])
@pytest.mark.parametrize("use_ema", [False, True], ids=["grad", "ema"])
def test_dead_codes_are_restarted_at_input_vectors(use_ema, threshold):
    quantizer = make_quantizer(use_ema=use_ema, dead_code_threshold=threshold)
    # Inputs far from the codebook: only one or two codes win, the rest stay unused.
    latents = 3.0 + 0.1 * randn(48, D)
    before = state(quantizer)
    out = quantizer(latents)
    counts = torch.bincount(out.codes, minlength=K).float()
    usage = quantizer.ema_decay * before["code_usage"] + (1 - quantizer.ema_decay) * counts
    dead = usage < threshold
    weight = quantizer.codebook.weight.detach()
    is_input_row = (weight[:, None, :] == latents[None]).all(-1).any(-1)  # (K,)

    if threshold == 0.0:
        assert not is_input_row.any()
        if not use_ema:
            assert torch.equal(weight, before["codebook.weight"])
        return
    # 0.995 restarts exactly the unused codes (usage 0.99); 2.0 restarts every code (usage at most 1.47).
    assert torch.equal(dead, counts == 0) if threshold < 1 else dead.all()
    assert torch.equal(is_input_row, dead)
    assert len(weight[dead].unique(dim=0)) == int(dead.sum())  # sampled without replacement
    assert (quantizer.code_usage[dead] == max(threshold, 1.0)).all()
    assert torch.allclose(quantizer.code_usage[~dead], usage[~dead])
    if use_ema:
        assert (quantizer.ema_cluster_size[dead] == 1.0).all()
        assert torch.equal(quantizer.ema_embed_sum[dead], weight[dead])
    else:
        assert torch.equal(weight[~dead], before["codebook.weight"][~dead])


@pytest.mark.parametrize("warm", [False, True], ids=["fresh", "after_training"])
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_eval_mode_changes_no_state(options, warm):
    quantizer = make_quantizer(**options)
    if warm:
        quantizer(randn(24, D, seed=1))
    quantizer.eval()
    before = state(quantizer)
    with torch.no_grad():
        quantizer(3.0 + randn(24, D, seed=2))  # data that would restart or re-cluster codes in training
    quantizer(randn(2, 3, D, seed=3).requires_grad_())
    assert_same_state(state(quantizer), before)


# ---------------------------------------------------------------- k-means init


def clustered_inputs(seed=0):
    """Four well separated blobs of 50 points."""
    centers = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, -5.0, 0], [-5.0, 5.0, 5.0, 5.0]])
    return (centers[:, None] + 0.3 * randn(4, 50, D, seed=seed)).reshape(200, D)


@pytest.mark.parametrize("use_ema", [False, True], ids=["grad", "ema"])
def test_kmeans_init_sets_centroids_once(use_ema, monkeypatch):
    quantizer = make_quantizer(use_ema=use_ema, use_kmeans_init=True)
    assert not bool(quantizer.initialized)
    calls = []
    original = quantizer._kmeans_init
    monkeypatch.setattr(quantizer, "_kmeans_init", lambda flat: (calls.append(1), original(flat)))

    latents = clustered_inputs()
    quantizer(latents)
    assert bool(quantizer.initialized) and len(calls) == 1
    weight = quantizer.codebook.weight.detach().clone()
    # A converged Lloyd's fixed point: each row is the mean of the inputs nearest to it. The EMA step that follows
    # in the same call keeps it there up to the Laplace smoothing (relative 1e-5).
    codes = brute_force_codes(latents, weight)
    for k in range(K):
        members = latents[codes == k]
        if len(members):
            torch.testing.assert_close(weight[k], members.mean(0), rtol=0, atol=1e-3 if use_ema else 1e-5)
    assert len(codes.unique()) >= 4

    quantizer(clustered_inputs(seed=1) + 1.0)
    assert len(calls) == 1 and bool(quantizer.initialized)
    if not use_ema:
        assert torch.equal(quantizer.codebook.weight, weight)


# ---------------------------------------------------------------- perplexity


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("use_ema", [False, True], ids=["grad", "ema"])
def test_perplexity_bounds(use_ema, training):
    codebook = randn(K, D, seed=1)
    quantizer = make_quantizer(codebook=codebook, use_ema=use_ema).train(training)
    assert quantizer(codebook[3].expand(10, D)).perplexity.item() == pytest.approx(1.0)
    quantizer = make_quantizer(codebook=codebook, use_ema=use_ema).train(training)
    out = quantizer(codebook.repeat(3, 1))  # every code used 3 times
    assert torch.equal(out.codes, torch.arange(K).repeat(3))
    assert out.perplexity.item() == pytest.approx(K, rel=1e-5)


# ---------------------------------------------------------------- argument validation


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"codebook_size": 1}, "codebook_size"),
        ({"codebook_size": 0}, "codebook_size"),
        ({"codebook_dim": 0}, "codebook_dim"),
        ({"ema_decay": 0.0}, "ema_decay"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"ema_decay": 1.5}, "ema_decay"),
        ({"ema_decay": float("nan")}, "ema_decay"),
        ({"ema_epsilon": 0.0}, "ema_epsilon"),
        ({"ema_epsilon": -1e-5}, "ema_epsilon"),
        ({"dead_code_threshold": -1.0}, "dead_code_threshold"),
        ({"dead_code_threshold": float("nan")}, "dead_code_threshold"),
        ({"commitment_cost": -0.25}, "commitment_cost"),
        ({"use_kmeans_init": True, "kmeans_iters": 0}, "kmeans_iters"),
    ],
    ids=lambda value: str(value) if not isinstance(value, dict) else "-".join(f"{k}={v}" for k, v in value.items()),
)
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VectorQuantizer(**{"codebook_size": K, "codebook_dim": D, **kwargs})


def test_kmeans_iters_is_ignored_without_kmeans_init():
    VectorQuantizer(codebook_size=K, codebook_dim=D, kmeans_iters=0)


@pytest.mark.parametrize("shape", [(5, D + 1), (5, D - 1), (D, 5)], ids=str)
def test_wrong_last_dimension_raises(shape):
    with pytest.raises(ValueError, match=r"last dimension equal to `codebook_dim` \(4\)"):
        make_quantizer()(torch.randn(*shape))


# ---------------------------------------------------------------- state_dict


@pytest.mark.parametrize("use_ema", [False, True], ids=["grad", "ema"])
def test_state_dict_round_trip_restores_outputs_and_updates(use_ema):
    options = {"use_ema": use_ema, "dead_code_threshold": 1.0, "use_kmeans_init": True}
    trained = make_quantizer(**options)
    for step in range(3):
        trained(randn(40, D, seed=step))
    saved = trained.state_dict()
    expected_keys = set(STATE_KEYS) if use_ema else set(STATE_KEYS[:3])
    assert set(saved) == expected_keys
    assert bool(saved["initialized"])

    fresh = make_quantizer(seed=1, **options)
    assert not torch.equal(fresh.codebook.weight, trained.codebook.weight)
    fresh.load_state_dict(saved)
    assert_same_state(state(fresh), state(trained))

    latents = randn(2, 6, D, seed=10)
    trained.eval(), fresh.eval()
    expected, actual = trained(latents), fresh(latents)
    assert torch.equal(actual.quantized, expected.quantized) and torch.equal(actual.codes, expected.codes)

    # Continued training: no re-initialisation, and identical EMA and restart updates given the same RNG state.
    trained.train(), fresh.train()
    for step in range(2):
        batch = 2.0 + randn(40, D, seed=20 + step)
        torch.manual_seed(step)
        trained(batch)
        torch.manual_seed(step)
        fresh(batch)
    assert_same_state(state(fresh), state(trained))


@pytest.mark.parametrize("use_ema", [False, True])
def test_mask_leaves_padding_out_of_losses_and_statistics(use_ema):
    """Masked-out vectors (e.g. padding of a shorter waveform) get codes but count nowhere: the same losses,
    perplexity, EMA statistics and code usage as a call on the real vectors alone."""
    torch.manual_seed(0)
    kwargs = {"codebook_size": 8, "codebook_dim": 3, "use_ema": use_ema, "dead_code_threshold": 0.5}
    masked, alone = VectorQuantizer(**kwargs), VectorQuantizer(**kwargs)
    alone.load_state_dict(masked.state_dict())
    latents = torch.randn(2, 5, 3, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    torch.manual_seed(1)
    out_masked = masked(latents, mask=mask)
    torch.manual_seed(1)
    out_alone = alone(latents[mask][None])
    assert out_masked.codes.shape == (2, 5)
    assert torch.equal(out_masked.codes[mask], out_alone.codes[0])
    for name in ("codebook_loss", "commitment_loss", "perplexity"):
        torch.testing.assert_close(getattr(out_masked, name), getattr(out_alone, name))
    for name, buffer in masked.state_dict().items():
        torch.testing.assert_close(buffer, alone.state_dict()[name], msg=name)
    # The loss gradients reach the real vectors as in the call on them alone, and the padding not at all.
    (grad_masked,) = torch.autograd.grad(out_masked.codebook_loss + out_masked.commitment_loss, latents)
    (grad_alone,) = torch.autograd.grad(out_alone.codebook_loss + out_alone.commitment_loss, latents)
    torch.testing.assert_close(grad_masked[mask], grad_alone[mask])
    assert not grad_masked[~mask].any()
    with pytest.raises(ValueError, match="mask"):
        masked(latents, mask=mask[:, :3])


@pytest.mark.parametrize("num_codes", [512, 200, 64])
def test_blockwise_argmax_is_the_first_maximum(num_codes):
    """The blockwise search (K a multiple of 64) and its fallback return the first maximum of each row, as argmax."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(300, num_codes, generator=generator)
    # Ties across blocks and within one, and a row of equal values: the first index must win.
    scores[0, [3, 70 % num_codes, 400 % num_codes]] = 100.0
    scores[1, [65 % num_codes, 66 % num_codes]] = 100.0
    scores[2] = 1.0
    expected = torch.tensor([int(torch.nonzero(row == row.max())[0]) for row in scores])
    assert torch.equal(_argmax_rows(scores), expected)


def test_nearest_codes_of_a_large_codebook_match_float64():
    generator = torch.Generator().manual_seed(0)
    quantizer = VectorQuantizer(codebook_size=512, codebook_dim=16)
    quantizer.codebook.weight.data.normal_(generator=generator)
    vectors = torch.randn(20000, 16, generator=generator)  # more than one chunk of rows
    expected = torch.cdist(vectors.double(), quantizer.codebook.weight.double()).argmin(1)
    assert torch.equal(quantizer.nearest_codes(vectors), expected)


@pytest.mark.parametrize("use_ema", [False, True])
def test_state_is_created_in_fp32_under_a_half_default_dtype(use_ema):
    # transformers builds a model under `torch.set_default_dtype(dtype)` in `from_config(..., dtype=...)`; the codebook
    # and its statistics must still be fp32 (nearest-code search and EMA counts lose codes in half precision).
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        quantizer = VectorQuantizer(codebook_size=8, codebook_dim=4, use_ema=use_ema)
    finally:
        torch.set_default_dtype(default)
    state = {name: tensor for name, tensor in quantizer.state_dict().items() if tensor.is_floating_point()}
    assert set(state) >= {"codebook.weight", "code_usage"}
    assert all(tensor.dtype == torch.float32 for tensor in state.values()), {k: v.dtype for k, v in state.items()}


@pytest.mark.parametrize("options", [{}, {"use_ema": True}, {"use_ema": True, "dead_code_threshold": 1.0}])
def test_non_finite_latents_in_training_raise_before_any_update(options):
    quantizer = VectorQuantizer(codebook_size=8, codebook_dim=4, **options).train()
    before = {name: tensor.clone() for name, tensor in quantizer.state_dict().items()}
    latents = torch.randn(2, 3, 3, 4)
    latents[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite values in training"):
        quantizer(latents)
    assert all(torch.equal(before[k], v) for k, v in quantizer.state_dict().items())
    quantizer(latents.nan_to_num())  # finite latents still go through
