"""Benchmark section `prior`: sampling tokens/s against transformers' GPT-2 `generate` of the same size."""

import torch

from .harness import Section, Sizes, count_mismatches, fmt, time_interleaved, verdict


def bench_prior(args, sizes: Sizes) -> Section:
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # generate()'s advice about pad tokens and lengths
    try:
        return _bench_prior(args, sizes)
    finally:
        transformers_logging.set_verbosity(verbosity)


def _bench_prior(args, sizes: Sizes) -> Section:
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_vqvae import VQVAEPriorConfig, VQVAEPriorForCausalLM

    config = VQVAEPriorConfig(**sizes.prior_overrides)
    torch.manual_seed(0)
    ours = VQVAEPriorForCausalLM(config).eval()
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.max_position_embeddings,
            n_embd=config.hidden_size,
            n_layer=config.num_hidden_layers,
            n_head=config.num_attention_heads,
            n_inner=config.intermediate_size,
            activation_function="gelu",
            tie_word_embeddings=False,
            bos_token_id=config.bos_token_id,
            eos_token_id=None,
            pad_token_id=None,
        )
    ).eval()
    num_ours = sum(p.numel() for p in ours.parameters())
    num_gpt2 = sum(p.numel() for p in gpt2.parameters())
    new_tokens = config.num_codes
    section = Section(
        title="Prior sampling",
        description=(
            f"`VQVAEPriorForCausalLM` ({config.num_hidden_layers} layers, width {config.hidden_size}, "
            f"{config.num_attention_heads} heads, MLP {config.intermediate_size}, vocabulary {config.vocab_size}, "
            f"{num_ours / 1e6:.2f}M parameters) samples {new_tokens} codes per image ({config.grid_size[0]}x"
            f"{config.grid_size[1]} grid) with `generate_codes` (transformers' `generate`, KV cache), against the "
            f"same call with `use_cache=False` and against stock transformers `GPT2LMHeadModel.generate` of equal "
            f"size (same n_layer/n_embd/n_head/n_inner/vocab/positions, exact GELU, untied head: "
            f"{num_gpt2 / 1e6:.2f}M parameters), all sampling from the full distribution (`top_k=0`) for exactly "
            f"{new_tokens} new tokens. tokens/s = batch x {new_tokens} / time per call."
        ),
        columns=["batch", "sampler", "median (s/call)", "IQR (s)", "tokens/s", "ratio", "target", "result"],
    )

    for batch in sizes.sample_batch_sizes:
        prompt = torch.full((batch, 1), config.bos_token_id, dtype=torch.long)
        calls = {
            "ours, cached": lambda batch=batch: ours.generate_codes(num_samples=batch, seed=0),
            "ours, uncached": lambda batch=batch: ours.generate_codes(num_samples=batch, seed=0, use_cache=False),
            "GPT-2 `generate`, cached": lambda prompt=prompt: gpt2.generate(
                prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=True,
                top_k=0,
            ),
        }
        expected = {
            "ours, cached": (batch, *config.grid_size),
            "ours, uncached": (batch, *config.grid_size),
            "GPT-2 `generate`, cached": (batch, 1 + new_tokens),
        }
        for name, call in calls.items():  # every sampler produces exactly `new_tokens` tokens per sequence
            shape = tuple(call().shape)
            if shape != expected[name]:
                raise RuntimeError(f"{name} returned shape {shape}, expected {expected[name]}.")
        greedy_cached = ours.generate_codes(num_samples=batch, do_sample=False)
        greedy_uncached = ours.generate_codes(num_samples=batch, do_sample=False, use_cache=False)
        section.notes.append(
            f"Batch {batch}: greedy decoding with and without the cache chose different codes in "
            f"{count_mismatches(greedy_cached, greedy_uncached)} of {greedy_cached.numel()} positions (expected 0)."
        )
        timings = time_interleaved(calls, args.warmup, args.repeats, args.min_sample_seconds)
        rate = {name: batch * new_tokens / timing.median for name, timing in timings.items()}
        for name, timing in timings.items():
            ratio = target = result = ""
            if name == "ours, cached":
                value = rate[name] / rate["GPT-2 `generate`, cached"]
                ratio, target, result = f"{value:.2f}x GPT-2", ">= 1.0x GPT-2 generate", verdict(value >= 1.0)
            elif name == "ours, uncached":
                ratio = f"cache is {rate['ours, cached'] / rate[name]:.2f}x faster"
            section.rows.append(
                [str(batch), name, fmt(timing.median), fmt(timing.iqr), fmt(rate[name]), ratio, target, result]
            )
    return section
