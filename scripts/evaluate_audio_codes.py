"""Probe what the codes of a 1-D (audio) VQ-VAE keep: content and speaker (paper section 4.3), as JSON.

    python scripts/evaluate_audio_codes.py --model models/vqvae-fsdd \
        --train_data_files "$DATA/fsdd/train-*.parquet" --test_data_files "$DATA/fsdd/test-*.parquet" \
        --label_columns digit speaker_id --untrained_baseline --output_file outputs/fsdd-probe.json

Both splits are encoded whole (one code per `downsample_factor` samples; codes over padding are dropped). For each
label column, probes fit on the train split are scored on the test split:

- `linear_probe_accuracy`: multinomial logistic regression on each recording's bag of codes (the relative frequency
  of each of the K codes);
- `segment_probe_accuracy`: the same on `--num_segments` bags, one per equal stretch of the recording, side by side
  (a word is an ordered sequence of sounds, which one bag cannot see);
- `code_majority_accuracy`: the paper's measure. Each code is mapped to the label it occurs with most often in train.
  A recording is predicted by the majority vote of its codes; `code_frame_accuracy` scores every code alone.

With `--untrained_baseline`, the same probes run on an untrained model of the same architecture (seeded random
weights) whose codebook is fit by k-means to its encoder outputs on the train split: a "far above chance" result means
little unless it beats this. Its scores vary with the random weights by several points, so it runs for
`--num_baseline_seeds` seeds and reports their mean, minimum and maximum. Reconstruction MSE and SNR on the test
split come from the trained model. Needs the `audio` and `anomaly` extras (soundfile, scipy, scikit-learn).

Recordings that cannot be used (empty or undecodable files, NaN samples, an absurd sample rate, ...) follow
`--on_bad_example`: `error` (the default) stops naming the split, row and cause; `skip` leaves them out of every
measure, keeps each remaining recording with its own labels (matched by row index), and lists them in the results
(`num_skipped`, `skipped_examples`) and the model card section.

`$DATA/fsdd/` holds the Free Spoken Digit Dataset v1.0.10 (GitHub `Jakobovski/free-spoken-digit-dataset`, CC BY-SA
4.0) as parquet shards with its official train/test split, one row per recording (`audio`, `digit`, `speaker_id`).
"""

import argparse
import copy
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hf_vqvae import VQVAEAudioModel, VQVAEFeatureExtractor
from hf_vqvae.quantizer import VectorQuantizer
from hf_vqvae.training.bad_examples import BadExamplePolicy, add_bad_example_argument
from hf_vqvae.training.cards import command_line, update_model_card
from hf_vqvae.training.checkpointing import write_json
from hf_vqvae.training.data import ROW_INDICES_KEY, load_image_dataset, make_preprocessing
from hf_vqvae.training.metrics import evaluate_reconstruction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="A 1-D VQ-VAE folder or Hub id.")
    parser.add_argument("--revision", default=None, help="Hub revision of the model.")
    parser.add_argument("--dataset_name", default=None, help="A Hub dataset, or the builder of the data files.")
    parser.add_argument("--train_data_files", nargs="+", default=None, help="Files or globs of the train split.")
    parser.add_argument("--test_data_files", nargs="+", default=None, help="Files or globs of the test split.")
    parser.add_argument("--train_split", default="train", help="Split the probes are fit on.")
    parser.add_argument("--test_split", default="test", help="Split the probes are scored on.")
    parser.add_argument("--audio_column", default=None, help="Column with the audio (default: first Audio column).")
    parser.add_argument(
        "--speaker_column", default=None, help="Speaker ids for a speaker-conditioned decoder (reconstruction only)."
    )
    parser.add_argument("--label_columns", nargs="+", required=True, help="Integer label columns to probe.")
    add_bad_example_argument(parser)
    parser.add_argument(
        "--untrained_baseline", action="store_true", help="Also probe an untrained encoder with a k-means codebook."
    )
    parser.add_argument(
        "--num_baseline_seeds",
        type=int,
        default=3,
        help="Untrained baselines to average (seeds `--seed`, `--seed` + 1, ...).",
    )
    parser.add_argument(
        "--num_segments",
        type=int,
        default=3,
        help="Equal stretches of each recording for `segment_probe_accuracy` (one bag of codes each).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the untrained baseline and the probes.")
    parser.add_argument("--batch_size", type=int, default=32, help="Recordings per batch.")
    parser.add_argument("--output_file", default=None, help="Write the results here as JSON.")
    parser.add_argument(
        "--model_card_section",
        default=None,
        help="Also write the results, with this command, into the model folder's README.md under this title.",
    )
    args = parser.parse_args(argv)
    if args.dataset_name is None and (args.train_data_files is None or args.test_data_files is None):
        raise ValueError("Give the data: `--dataset_name`, or both `--train_data_files` and `--test_data_files`.")
    if args.num_baseline_seeds < 1:
        raise ValueError(f"`--num_baseline_seeds` must be >= 1; got {args.num_baseline_seeds}.")
    if args.num_segments < 1:
        raise ValueError(f"`--num_segments` must be >= 1; got {args.num_segments}.")
    if args.batch_size < 1:
        raise ValueError(f"`--batch_size` must be >= 1; got {args.batch_size}.")
    return args


@torch.no_grad()
def encode_split(
    model, dataloader, description: str, policy: BadExamplePolicy | None = None
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """
    Per recording that could be used: its codes over real samples, its encoder outputs there `(length, D)`, and its
    row index in the split (batches of `make_preprocessing(..., with_row_indices=True)`; rows that `policy` skipped
    are absent, so labels must be taken by these indices, not by position).
    """
    codes, latents, rows = [], [], []
    progress = tqdm(dataloader, desc=description)
    for batch in progress:
        if policy is not None:
            batch = policy.receive(batch)  # records the rows the batch left out (`--on_bad_example skip`)
            if policy.num_skipped:
                progress.set_postfix(skipped=policy.num_skipped, refresh=False)
        if len(batch["input_values"]) == 0:  # every row of the batch was skipped
            continue
        output = model.encode(input_values=batch["input_values"], attention_mask=batch["attention_mask"])
        for row_codes, row_latents, mask in zip(output.codes, output.latents.transpose(1, 2), output.codes_mask):
            codes.append(row_codes[mask].numpy())
            latents.append(row_latents[mask].float().numpy())
        rows += batch[ROW_INDICES_KEY].tolist()
    return codes, latents, rows


def bag_of_codes(codes: list[np.ndarray], codebook_size: int) -> np.ndarray:
    """(N, K) relative frequency of each code in each recording."""
    features = np.zeros((len(codes), codebook_size), dtype=np.float64)
    for row, sequence in zip(features, codes):
        np.add.at(row, sequence, 1.0)
        row /= max(len(sequence), 1)
    return features


def segment_bags(codes: list[np.ndarray], codebook_size: int, num_segments: int) -> np.ndarray:
    """(N, num_segments * K): one bag of codes per equal stretch of each recording, side by side."""
    parts = [np.array_split(sequence, num_segments) for sequence in codes]
    return np.concatenate(
        [bag_of_codes([pieces[index] for pieces in parts], codebook_size) for index in range(num_segments)], axis=1
    )


def probe(
    train_codes, train_labels, test_codes, test_labels, codebook_size: int, seed: int, num_segments: int = 3
) -> dict:
    """The linear probes and the paper's code-to-majority-label mapping, fit on train, scored on test."""
    from sklearn.linear_model import LogisticRegression

    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)

    def linear_accuracy(featurize) -> float:
        classifier = LogisticRegression(max_iter=5000, C=10.0, random_state=seed)
        classifier.fit(featurize(train_codes), train_labels)
        return float((classifier.predict(featurize(test_codes)) == test_labels).mean())

    linear = linear_accuracy(lambda codes: bag_of_codes(codes, codebook_size))
    segments = linear_accuracy(lambda codes: segment_bags(codes, codebook_size, num_segments))

    # Each code -> the label it occurs with most often in train (codes never seen: the overall majority label).
    pair_counts = Counter()
    for sequence, label in zip(train_codes, train_labels):
        pair_counts.update((int(code), int(label)) for code in sequence)
    overall = Counter(train_labels.tolist()).most_common(1)[0][0]
    best: dict[int, tuple[int, int]] = {}
    for (code, label), count in pair_counts.items():
        if count > best.get(code, (0, -1))[0]:
            best[code] = (count, label)
    code_label = np.array([best.get(code, (0, overall))[1] for code in range(codebook_size)])
    frames_right = frames = recordings_right = 0
    for sequence, label in zip(test_codes, test_labels):
        votes = code_label[sequence]
        frames_right += int((votes == label).sum())
        frames += len(votes)
        recordings_right += int(Counter(votes.tolist()).most_common(1)[0][0] == label) if len(votes) else 0
    return {
        "linear_probe_accuracy": linear,
        "segment_probe_accuracy": segments,
        "code_majority_accuracy": recordings_right / len(test_labels),
        "code_frame_accuracy": frames_right / max(frames, 1),
        "chance_accuracy": 1.0 / len(np.unique(train_labels)),
        "codes_used_in_train": int(len(best)),
    }


def probe_all(
    train_codes, test_codes, train_labels: dict, test_labels: dict, codebook_size, seed, num_segments
) -> dict:
    """The probes of every label column; `*_labels` map each column to the labels of the encoded recordings."""
    return {
        column: probe(
            train_codes, train_labels[column], test_codes, test_labels[column], codebook_size, seed, num_segments
        )
        for column in train_labels
    }


def labels_of(split, label_columns, rows: list[int]) -> dict[str, np.ndarray]:
    """Each label column's values at the row indices `rows` (the recordings that were encoded, in order)."""
    return {column: np.asarray(split[column])[np.asarray(rows, dtype=np.int64)] for column in label_columns}


def summarize_runs(runs: list[dict]) -> dict:
    """Per label and measure: the mean over runs, with `<measure>_min` and `<measure>_max` beside it."""
    summary = {}
    for column, first in runs[0].items():
        summary[column] = {}
        for measure in first:
            values = [run[column][measure] for run in runs]
            summary[column][measure] = float(np.mean(values))
            if measure.endswith("_accuracy") and measure != "chance_accuracy":
                summary[column][f"{measure}_min"], summary[column][f"{measure}_max"] = min(values), max(values)
    return summary


def untrained_codes(model, train_latents, test_latents, seed: int):
    """Codes of an untrained encoder, with a codebook fit by k-means (our quantizer's own) to its train outputs."""
    config = model.config
    torch.manual_seed(seed)
    quantizer = VectorQuantizer(
        codebook_size=config.codebook_size, codebook_dim=config.codebook_dim, use_kmeans_init=True, kmeans_iters=25
    )
    quantizer.train()
    with torch.no_grad():
        quantizer(torch.from_numpy(np.concatenate(train_latents)))  # the first training call runs k-means
    quantizer.eval()
    with torch.no_grad():
        encode = lambda latents: [quantizer(torch.from_numpy(x)).codes.numpy() for x in latents]  # noqa: E731
        return encode(train_latents), encode(test_latents)


def main(args) -> dict:
    torch.manual_seed(args.seed)
    # Refuses an image folder (and loads an audio folder saved before `VQVAEAudioModel` existed).
    model = VQVAEAudioModel.from_pretrained(args.model, revision=args.revision).eval()
    try:
        feature_extractor = VQVAEFeatureExtractor.from_pretrained(args.model, revision=args.revision)
    except OSError:
        feature_extractor = VQVAEFeatureExtractor.from_model_config(model.config)
    data_files = None
    if args.train_data_files:
        data_files = {args.train_split: args.train_data_files, args.test_split: args.test_data_files}
    dataset = load_image_dataset(args.dataset_name, None, None, data_files)
    for split in (args.train_split, args.test_split):
        if split not in dataset:
            raise ValueError(f"No split {split!r} in the dataset (splits: {list(dataset)}).")
        for column in args.label_columns:
            if column not in dataset[split].column_names:
                raise ValueError(f"No column {column!r} in split {split!r} (columns: {dataset[split].column_names}).")
    train_split, test_split = dataset[args.train_split], dataset[args.test_split]
    policy = BadExamplePolicy(args.on_bad_example)

    def loader(split, name):
        rows, collate = make_preprocessing(
            split,
            feature_extractor,
            args.audio_column,
            args.speaker_column,
            policy=policy,
            split=name,
            with_row_indices=True,  # the labels of the recordings kept, whatever was skipped
        )
        return torch.utils.data.DataLoader(rows, batch_size=args.batch_size, shuffle=False, collate_fn=collate)

    def encode(model, split, name, description):
        codes, latents, rows = encode_split(model, loader(split, name), description, policy)
        if not rows:
            raise ValueError(
                f"Every recording of split {name!r} was skipped ({policy.num_skipped} bad rows in all); nothing is "
                "left to probe. Check the data (the causes are in the log)."
            )
        return codes, latents, rows

    start = time.time()
    results = {
        "model": str(args.model),
        "codebook_size": model.config.codebook_size,
        "downsample_factor": model.config.downsample_factor,
        "code_rate_hz": feature_extractor.sampling_rate / model.config.downsample_factor,
    }
    results["reconstruction"] = evaluate_reconstruction(
        model, tqdm(loader(test_split, args.test_split), desc="Reconstructing"), policy=policy
    )
    train_codes, _, train_rows = encode(model, train_split, args.train_split, "Encoding train")
    test_codes, _, test_rows = encode(model, test_split, args.test_split, "Encoding test")
    train_labels = labels_of(train_split, args.label_columns, train_rows)
    test_labels = labels_of(test_split, args.label_columns, test_rows)
    results["num_recordings"] = {args.train_split: len(train_rows), args.test_split: len(test_rows)}
    results["trained"] = probe_all(
        train_codes, test_codes, train_labels, test_labels, model.config.codebook_size, args.seed, args.num_segments
    )
    if args.untrained_baseline:
        runs = []
        # Only the encoder matters here; without speaker conditioning, a seed gives the same encoder whatever the
        # decoder, so models with and without a conditioned decoder share their baselines.
        baseline_config = copy.deepcopy(model.config)
        baseline_config.num_speakers = 0
        for seed in range(args.seed, args.seed + args.num_baseline_seeds):
            torch.manual_seed(seed)
            untrained = VQVAEAudioModel(baseline_config).eval()
            description = f"(untrained, seed {seed})"
            _, train_latents, rows = encode(untrained, train_split, args.train_split, f"Encoding train {description}")
            _, test_latents, more_rows = encode(untrained, test_split, args.test_split, f"Encoding test {description}")
            if (rows, more_rows) != (train_rows, test_rows):  # the same rows fail whatever the model
                raise RuntimeError(
                    "The untrained baseline encoded other rows than the trained model; please report this."
                )
            baseline_train, baseline_test = untrained_codes(untrained, train_latents, test_latents, seed)
            runs.append(
                probe_all(
                    baseline_train,
                    baseline_test,
                    train_labels,
                    test_labels,
                    model.config.codebook_size,
                    seed,
                    args.num_segments,
                )
            )
        results["untrained_baseline"] = summarize_runs(runs)
        results["untrained_baseline_runs"] = runs
    results["num_skipped"] = policy.num_skipped
    results["skipped_examples"] = policy.records()
    results["seconds"] = round(time.time() - start, 1)
    if args.output_file:
        Path(args.output_file).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output_file, results)
    if args.model_card_section:
        command = "python scripts/evaluate_audio_codes.py " + command_line()
        update_model_card(args.model, args.model_card_section, command, format_probe_table(results))
    return results


def format_probe_table(results: dict) -> str:
    """A Markdown table of the probes (trained model vs untrained baseline) and the reconstruction quality."""
    num_runs = len(results.get("untrained_baseline_runs", []))
    rows = [
        f"| label | measure | trained codes | untrained baseline (mean of {num_runs} seeds; min-max) | chance |",
        "| --- | --- | --- | --- | --- |",
    ]
    for column, trained in results["trained"].items():
        baseline = results.get("untrained_baseline", {}).get(column, {})
        for measure in (
            "linear_probe_accuracy",
            "segment_probe_accuracy",
            "code_majority_accuracy",
            "code_frame_accuracy",
        ):
            other = "-"
            if measure in baseline:
                other = f"{baseline[measure]:.1%} ({baseline[measure + '_min']:.1%}-{baseline[measure + '_max']:.1%})"
            rows.append(
                f"| {column} | {measure} | {trained[measure]:.1%} | {other} | {trained['chance_accuracy']:.1%} |"
            )
    reconstruction = results["reconstruction"]
    rows.append("")
    distance = reconstruction.get("log_spectral_distance")
    distance = "" if distance is None else f"log-spectral distance {distance:.2f} dB, "
    rows.append(
        f"Test reconstruction: SNR {reconstruction['snr']:.2f} dB, {distance}MSE {reconstruction['mse']:.6f}, "
        f"{reconstruction['codes_used']}/{reconstruction['codebook_size']} codes used; "
        f"{results['code_rate_hz']:.0f} codes per second."
    )
    if results.get("num_skipped"):
        counts = ", ".join(f"{count} {split}" for split, count in results["num_recordings"].items())
        rows.append(
            f"Skipped rows: {results['num_skipped']} (`--on_bad_example skip`; listed under `skipped_examples` in the "
            f"results JSON); recordings used: {counts}."
        )
    return "\n".join(rows)


if __name__ == "__main__":
    json.dump(main(parse_args()), sys.stdout, indent=2)
    sys.stdout.write("\n")
