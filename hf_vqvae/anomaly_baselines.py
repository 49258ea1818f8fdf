"""Pixel-space baselines of the one-class anomaly protocol, on the same `pixel_values` as the VQ-VAE scores:
[`PCABaseline`] (the residual after the first principal components of the normal images, also as a map) and
[`NearestNeighborBaseline`] (the distance to the closest normal image). Import them from `hf_vqvae.anomaly`."""

import torch

from .anomaly_scores import _flatten_images


class PCABaseline:
    r"""
    Pixel-space baseline: the mean squared residual of each flattened image after projection onto the first
    `n_components` principal components of the normal images (`torch.linalg.svd`, float64, deterministic).

    Args:
        n_components (`int`, *optional*, defaults to 32):
            Number of principal components; at most the number of normal images and of pixel values.
        chunk_size (`int`, *optional*, defaults to 4096):
            Images scored at once.

    Example:

    ```python
    >>> baseline = PCABaseline(n_components=32).fit(normal_pixel_values)  # (N, C, H, W)
    >>> baseline.score(test_pixel_values).shape  # (M,), higher = more anomalous
    ```
    """

    def __init__(self, n_components: int = 32, chunk_size: int = 4096):
        if isinstance(n_components, bool) or not isinstance(n_components, int) or n_components < 1:
            raise ValueError(f"`n_components` must be a positive integer; got {n_components!r}.")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive integer; got {chunk_size!r}.")
        self.n_components = n_components
        self.chunk_size = chunk_size
        self.mean = None  # (D,)
        self.components = None  # (n_components, D), orthonormal rows
        self.image_shape = None  # (C, H, W) of the normal images

    def fit(self, normal_pixel_values: torch.FloatTensor) -> "PCABaseline":
        """Fit the mean and principal components of `normal_pixel_values` (`(N, ...)` float); returns `self`."""
        data = _flatten_images("normal_pixel_values", normal_pixel_values)  # (N, D)
        limit = min(data.shape)
        if self.n_components > limit:
            raise ValueError(
                f"`n_components` ({self.n_components}) must be at most min(num_images, num_pixel_values) = {limit} "
                f"for normal data of shape {tuple(normal_pixel_values.shape)}. Lower `n_components` or give more "
                "images."
            )
        self.mean = data.mean(0)
        self.image_shape = tuple(normal_pixel_values.shape[1:])
        _, _, vh = torch.linalg.svd(data - self.mean, full_matrices=False)  # vh: (min(N, D), D)
        self.components = vh[: self.n_components].contiguous()
        return self

    def score(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """Mean squared residual per image, `(N,)` float32."""
        return torch.cat([residual.pow(2).mean(1) for residual in self._residuals(pixel_values)]).float()

    def _residuals(self, pixel_values: torch.FloatTensor):
        if self.components is None:
            raise ValueError("`PCABaseline` is not fitted: call `fit(normal_pixel_values)` first.")
        data = _flatten_images("pixel_values", pixel_values)
        if data.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"`pixel_values` have {data.shape[1]} values per image but the baseline was fitted on "
                f"{self.mean.shape[0]}; preprocess them the same way."
            )
        for chunk in data.split(self.chunk_size):
            centered = chunk - self.mean  # (n, D)
            yield centered - (centered @ self.components.T) @ self.components

    def score_map(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        r"""
        The baseline anomaly map: the absolute PCA residual per pixel, averaged over channels.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(num_images, num_channels, height, width)`):
                Images preprocessed like the normal images of `fit`.

        Returns:
            `torch.FloatTensor` of shape `(num_images, height, width)`, from the residual whose mean square is
            `score`.
        """
        if self.image_shape is not None and len(self.image_shape) != 3:
            raise ValueError(f"`score_map` needs images (N, C, H, W) at `fit`; it was fitted on {self.image_shape}.")
        maps = [residual.abs().reshape(-1, *self.image_shape).mean(1) for residual in self._residuals(pixel_values)]
        return torch.cat(maps).float()


class NearestNeighborBaseline:
    r"""
    Pixel-space baseline: the Euclidean distance from each flattened image to the closest normal image. Distances are
    computed in chunks of `chunk_size` x `chunk_size` pairs (float32 matrix products), so memory stays bounded for
    any number of images.

    Args:
        chunk_size (`int`, *optional*, defaults to 1024):
            Test and normal images per block of the distance matrix.

    Example:

    ```python
    >>> baseline = NearestNeighborBaseline().fit(normal_pixel_values)  # (N, C, H, W)
    >>> baseline.score(test_pixel_values).shape  # (M,), higher = more anomalous
    ```
    """

    def __init__(self, chunk_size: int = 1024):
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive integer; got {chunk_size!r}.")
        self.chunk_size = chunk_size
        self.normal = None  # (N, D) float32
        self.normal_sq_norms = None  # (N,)

    def fit(self, normal_pixel_values: torch.FloatTensor) -> "NearestNeighborBaseline":
        """Keep the flattened normal images; returns `self`."""
        self.normal = _flatten_images("normal_pixel_values", normal_pixel_values).float()
        self.normal_sq_norms = self.normal.pow(2).sum(1)
        return self

    def score(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """Distance to the nearest normal image, `(N,)` float32."""
        if self.normal is None:
            raise ValueError("`NearestNeighborBaseline` is not fitted: call `fit(normal_pixel_values)` first.")
        data = _flatten_images("pixel_values", pixel_values).float()
        if data.shape[1] != self.normal.shape[1]:
            raise ValueError(
                f"`pixel_values` have {data.shape[1]} values per image but the baseline was fitted on "
                f"{self.normal.shape[1]}; preprocess them the same way."
            )
        scores = []
        for queries in data.split(self.chunk_size):
            query_sq_norms = queries.pow(2).sum(1, keepdim=True)  # (n, 1)
            best = torch.full((queries.shape[0],), float("inf"))
            best_index = torch.zeros(queries.shape[0], dtype=torch.long)
            for start in range(0, self.normal.shape[0], self.chunk_size):
                normal = self.normal[start : start + self.chunk_size]  # (m, D)
                # ||q - x||^2 = ||q||^2 + ||x||^2 - 2 q.x: one matrix product per block.
                normal_sq_norms = self.normal_sq_norms[start : start + self.chunk_size]  # (m,)
                distances = query_sq_norms + normal_sq_norms - 2 * queries @ normal.T  # (n, m)
                values, indices = distances.min(1)
                closer = values < best
                best = torch.where(closer, values, best)
                best_index = torch.where(closer, indices + start, best_index)
            # The expansion loses precision to cancellation (an image's distance to itself comes out ~1e-3): measure
            # the distance to the chosen neighbour again, directly, in float64.
            difference = queries.double() - self.normal[best_index].double()
            scores.append(difference.pow(2).sum(1).sqrt().float())
        return torch.cat(scores)


__all__ = ["NearestNeighborBaseline", "PCABaseline"]
