"""Image-dimension sampling study: where full covariance via LGS beats isotropic and diagonal.

Runs ancestral DDPM sampling with the exact posterior mean on an image-sized reference for the
families ``analytic``, ``diag`` and ``lanczos:1..5`` and a few step counts T, and reports for each run

- ``sw``: sliced Wasserstein SW_2^2 to exact reference samples (and ``sw_floor``, the value between
  two exact samples of the same size: differences below it are noise);
- ``spectrum_error`` (stationary image Gaussians only): mean over Fourier modes of
  ``|var_hat / lambda - 1|``, the sample power spectrum against the reference's eigenvalues, with
  ``spectrum_floor`` the same statistic for exact samples;
- ``path_kl_steps``: the exact path-KL 'steps' term of the family where the foundation defines it
  (``analytic``, ``diag``; LGS tends to ``full``, whose value is 0 for Gaussian data);
- time and cost (posterior-mean evaluations and covariance-vector products).

Defaults are CPU-sized (3x32x32, n = 512). On a GPU use ``ImageSamplingConfig.gpu()``
(3x256x256 via a JSON ``gaussian-image`` spec). Run as ``python3 -m studies.image_sampling [--gpu]
[--json]``; nothing in CI depends on a GPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pathkl.bases import FourierBasis
from pathkl.covariances import FAMILIES
from pathkl.metrics import sliced_wasserstein
from pathkl.pathspace import path_kl
from pathkl.refspec import load_reference
from pathkl.sampling import resolve_device, sample
from pathkl.schedules import get_schedule


@dataclass(frozen=True)
class ImageSamplingConfig:
    """What to run: a ``--ref`` spec (preset name or JSON path), families, step counts, batch."""

    ref: str = "image-3x32x32"
    families: tuple[str, ...] = ("analytic", "diag", "lanczos:1", "lanczos:2", "lanczos:3", "lanczos:4", "lanczos:5")
    steps: tuple[int, ...] = (10, 20, 50)
    n: int = 512
    schedule: str = "vp-linear"
    device: str = "auto"
    seed: int = 0

    @staticmethod
    def cpu_image64() -> ImageSamplingConfig:
        return ImageSamplingConfig(ref="image-3x64x64", n=256)

    @staticmethod
    def gpu(shape: tuple[int, int, int] = (3, 256, 256)) -> ImageSamplingConfig:
        spec = {"kind": "gaussian-image", "shape": list(shape), "spectrum": {"type": "power-law"}}
        path = Path(tempfile.gettempdir()) / f"pathkl-image-{'x'.join(map(str, shape))}.json"
        path.write_text(json.dumps(spec))
        return ImageSamplingConfig(ref=str(path), n=64, device="cuda", steps=(10, 20))


@dataclass(frozen=True)
class ImageSamplingRow:
    family: str
    T: int
    sw: float
    sw_stderr: float
    sw_floor: float
    spectrum_error: float | None
    spectrum_floor: float | None
    path_kl_steps: float | None
    seconds: float
    mean_evals: int
    cov_products: int
    device: str = field(default="cpu")


def _spectrum_error(reference, x: torch.Tensor) -> float | None:
    basis = getattr(reference, "basis", None)
    if not isinstance(basis, FourierBasis):
        return None
    c, h, w = basis.shape
    power = (torch.fft.fft2(x.reshape(-1, c, h, w), norm="ortho").abs() ** 2).mean(0)
    return float((power / reference.eigenvalues.reshape(c, h, w) - 1.0).abs().mean())


def run(config: ImageSamplingConfig) -> list[ImageSamplingRow]:
    """Every (family, T) run of the study, in order."""
    reference = load_reference(config.ref)
    device = resolve_device(config.device)
    schedule = get_schedule(config.schedule)
    gen = torch.Generator().manual_seed(config.seed + 1)
    target, other = reference.sample(config.n, generator=gen), reference.sample(config.n, generator=gen)
    floor = sliced_wasserstein(other, target, seed=config.seed).value
    spectrum_floor = _spectrum_error(reference, other)
    rows = []
    for steps in config.steps:
        grid = schedule.grid(steps)
        for family in config.families:
            out = sample(reference, grid, family, n=config.n, seed=config.seed, device=device)
            x = out.samples.cpu()
            sw = sliced_wasserstein(x, target, seed=config.seed)
            kl = path_kl(reference, grid, FAMILIES[family]).steps if family in FAMILIES else None
            rows.append(ImageSamplingRow(family, steps, sw.value, sw.stderr, floor, _spectrum_error(reference, x),
                                         spectrum_floor, kl, out.seconds, out.mean_evals, out.cov_products,
                                         str(out.samples.device)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="image-dimension sampling study (issue 4)")
    parser.add_argument("--gpu", action="store_true", help="3x256x256 on CUDA")
    parser.add_argument("--image64", action="store_true", help="3x64x64 on CPU")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    config = ImageSamplingConfig.gpu() if args.gpu else (ImageSamplingConfig.cpu_image64() if args.image64 else ImageSamplingConfig())
    rows = run(config)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return
    print(f"{config.ref}, n = {config.n}, {config.schedule}; SW floor {rows[0].sw_floor:.3e},"
          f" spectrum floor {rows[0].spectrum_floor}")
    print(f"{'family':<11}{'T':>4}  {'SW_2^2':>10} {'+-':>9}  {'spectrum':>9}  {'path KL':>9}  {'sec':>7}  cost")
    for r in rows:
        kl = "" if r.path_kl_steps is None else f"{r.path_kl_steps:9.3g}"
        spec = "" if r.spectrum_error is None else f"{r.spectrum_error:9.3g}"
        print(f"{r.family:<11}{r.T:>4}  {r.sw:10.3e} {r.sw_stderr:9.1e}  {spec:>9}  {kl:>9}  {r.seconds:7.2f}"
              f"  {r.mean_evals}+{r.cov_products}")


if __name__ == "__main__":
    main()
