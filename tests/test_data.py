"""Tests for ngdref.data: inputs satisfying Assumption 2, targets, loaders, Forster transform."""

from __future__ import annotations

import gzip
import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from ngdref.data import (
    DataError,
    Dataset,
    encode_targets,
    forster_transform,
    load_cifar10,
    load_dataset,
    load_mnist_idx,
    normalise_rows,
    validate_inputs,
)


# --------------------------------------------------------------------------- #
# helpers writing tiny files in the real on-disk formats
# --------------------------------------------------------------------------- #
def _idx_bytes(arr: np.ndarray) -> bytes:
    """IDX encoding: magic 0x000008<ndim> (uint8), big-endian uint32 dims, raw bytes."""
    header = struct.pack(">I", 0x0800 + arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _distinct_images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """Random uint8 images, nonzero and pairwise distinct."""
    imgs = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    imgs.reshape(n, -1)[:, 0] = np.arange(n) % 250 + 1  # nonzero; combined with noise, distinct
    return imgs


def _write_idx_folder(folder: Path, n_train=30, n_test=12, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": _distinct_images(rng, n_train, (4, 5)),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 3).astype(np.uint8),
        "t10k-images-idx3-ubyte": _distinct_images(rng, n_test, (4, 5)),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 3).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        data = _idx_bytes(arr)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return arrays


def _write_cifar_folder(folder: Path, per_batch: int = 6, n_test: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        n = n_test if name == "test_batch" else per_batch
        data = _distinct_images(rng, n, (3072,))
        labels = [int(v) for v in (np.arange(n) + i) % 10]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img{j}.png".encode() for j in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        batches[name] = (data, np.asarray(labels))
    return batches


def _rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in np.ascontiguousarray(x)}


# --------------------------------------------------------------------------- #
# bundled MNIST and Gaussian sources
# --------------------------------------------------------------------------- #
def test_mnist_default_is_normalised_balanced_and_disjoint():
    ds = load_dataset()
    assert isinstance(ds, Dataset)
    assert ds.name == "mnist" and ds.classes == (0, 7)
    assert ds.x_train.shape == (100, 784) and ds.x_test.shape == (100, 784)
    assert ds.x_train.dtype == np.float64 and ds.labels_train.dtype == np.int64
    assert (ds.n_train, ds.n_test, ds.input_dim, ds.n_outputs) == (100, 100, 784, 1)
    np.testing.assert_allclose(np.linalg.norm(ds.x_train, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(ds.x_test, axis=1), 1.0, atol=1e-12)
    validate_inputs(ds.x_train)
    assert np.bincount(ds.labels_train, minlength=8)[[0, 7]].tolist() == [50, 50]
    assert np.bincount(ds.labels_test, minlength=8)[[0, 7]].tolist() == [50, 50]
    assert not _rows(ds.x_train) & _rows(ds.x_test)
    assert np.all(ds.x_train >= 0)  # pixel intensities, no centring
    summary = ds.to_dict()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["train_class_counts"] == [50, 50] and summary["input_dim"] == 784


def test_targets_two_classes_are_plus_minus_half():
    ds = load_dataset(classes=(0, 7), n_train=20, n_test=10)
    assert ds.y_train.shape == (20, 1)
    np.testing.assert_array_equal(ds.y_train[:, 0], np.where(ds.labels_train == 0, 0.5, -0.5))
    np.testing.assert_array_equal(ds.y_test[:, 0], np.where(ds.labels_test == 0, 0.5, -0.5))
    swapped = load_dataset(classes=(7, 0), n_train=20, n_test=10)
    expected = np.where(swapped.labels_train == 7, 0.5, -0.5)
    np.testing.assert_array_equal(swapped.y_train[:, 0], expected)


def test_multiclass_onehot_and_remainder_to_first_classes():
    ds = load_dataset(classes=(3, 1, 4), n_train=11, n_test=4, seed=5)
    assert ds.n_outputs == 3
    assert [int(np.sum(ds.labels_train == c)) for c in (3, 1, 4)] == [4, 4, 3]
    assert [int(np.sum(ds.labels_test == c)) for c in (3, 1, 4)] == [2, 1, 1]
    np.testing.assert_array_equal(ds.y_train.sum(axis=1), 1.0)
    assert set(np.unique(ds.y_train)) == {0.0, 1.0}
    order = {3: 0, 1: 1, 4: 2}
    expected = [order[int(c)] for c in ds.labels_train]
    np.testing.assert_array_equal(ds.y_train.argmax(axis=1), expected)


def test_determinism_by_seed():
    a, b, c = (load_dataset(n_train=30, n_test=10, seed=s) for s in (1, 1, 2))
    for field in ("x_train", "y_train", "x_test", "y_test", "labels_train", "labels_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_train, c.x_train)
    g1, g2, g3 = (
        load_dataset("gaussian", n_train=20, n_test=5, seed=s, input_dim=7) for s in (3, 3, 4)
    )
    np.testing.assert_array_equal(g1.x_train, g2.x_train)
    np.testing.assert_array_equal(g1.labels_train, g2.labels_train)
    assert not np.array_equal(g1.x_train, g3.x_train)


def test_whole_class_can_be_used_but_not_more():
    ds = load_dataset(classes=(0, 7), n_train=600, n_test=400)  # 300 + 200 = all 500 per class
    assert not _rows(ds.x_train) & _rows(ds.x_test)
    message = r"class 0 has 500 samples in mnist; requested 501 \(301 train \+ 200 test\)"
    with pytest.raises(DataError, match=message):
        load_dataset(classes=(0, 7), n_train=602, n_test=400)


def test_data_error_is_a_user_facing_value_error():
    from ngdref.errors import NgdrefError

    assert issubclass(DataError, NgdrefError) and issubclass(DataError, ValueError)


def test_dataset_arrays_are_read_only():
    ds = load_dataset(n_train=4, n_test=2)
    with pytest.raises(ValueError):
        ds.x_train[0, 0] = 1.0


def test_gaussian_source():
    ds = load_dataset("gaussian", classes=(0, 1), n_train=80, n_test=6, input_dim=100, seed=0)
    assert ds.name == "gaussian" and ds.x_train.shape == (80, 100) and ds.x_test.shape == (6, 100)
    np.testing.assert_allclose(np.linalg.norm(ds.x_train, axis=1), 1.0, atol=1e-12)
    assert np.bincount(ds.labels_train).tolist() == [40, 40]
    assert set(ds.y_train[:, 0]) == {0.5, -0.5}


# --------------------------------------------------------------------------- #
# error paths
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"classes": (0, 11)}, r"class 11 does not exist in mnist"),
        ({"classes": (0, 0)}, r"must not repeat"),
        ({"classes": (3,)}, r"at least two classes"),
        ({"classes": (0, 1.5)}, r"must be integers"),
        ({"n_train": 0}, r"n_train must be an integer >= 1"),
        ({"n_test": -1}, r"n_test must be an integer >= 0"),
        ({"source": "no/such/place"}, r"unknown data source 'no/such/place': expected 'mnist'"),
    ],
)
def test_load_dataset_errors(kwargs, pattern):
    with pytest.raises(DataError, match=pattern):
        load_dataset(**kwargs)


def test_duplicate_inputs_are_refused():
    # input_dim=1: every normalised Gaussian sample is +1 or -1, so duplicates are certain.
    with pytest.raises(DataError, match=r"must be distinct \(Assumption 2\): rows \d+ and \d+"):
        load_dataset("gaussian", n_train=10, n_test=0, input_dim=1)


def test_folder_with_nothing_recognisable(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no recognisable data in .*train-images.*data_batch_1"):
        load_dataset(tmp_path)


def test_normalise_rows():
    x = normalise_rows([[3.0, 4.0], [0.0, -2.0]])
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, -1.0]])
    with pytest.raises(DataError, match=r"row 1 is a zero vector"):
        normalise_rows([[1.0, 2.0], [0.0, 0.0]])
    with pytest.raises(DataError, match=r"2-D"):
        normalise_rows([1.0, 2.0])


def test_validate_inputs():
    s = 1 / np.sqrt(2)
    validate_inputs([[1.0, 0.0], [s, s]])
    bad = [[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1.0, 1.0]]
    message = r"^inputs must be normalised to \|\|x\|\|=1 \(Assumption 2\): row 3 has norm 1\.41$"
    with pytest.raises(DataError, match=message):
        validate_inputs(bad)
    with pytest.raises(DataError, match=r"rows 0 and 2 are identical"):
        validate_inputs([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    with pytest.raises(DataError, match=r"finite"):
        validate_inputs([[np.nan, 1.0]])
    validate_inputs([[1.0 + 1e-9, 0.0]])  # within atol
    with pytest.raises(DataError, match=r"norm 1\.01"):
        validate_inputs([[1.01, 0.0]], atol=1e-3)


def test_encode_targets():
    np.testing.assert_array_equal(encode_targets([5, 2, 5], (5, 2)), [[0.5], [-0.5], [0.5]])
    np.testing.assert_array_equal(encode_targets([2, 0, 1], (0, 1, 2)), np.eye(3)[[2, 0, 1]])
    with pytest.raises(DataError, match=r"label 9 is not one of the classes \(0, 1\)"):
        encode_targets([0, 9], (0, 1))


# --------------------------------------------------------------------------- #
# IDX and CIFAR-10 loaders
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_idx(tmp_path, gz):
    arrays = _write_idx_folder(tmp_path, gz=gz)
    (xtr, ytr), (xte, yte) = load_mnist_idx(tmp_path)
    assert xtr.dtype == np.uint8 and xtr.shape == (30, 20) and xte.shape == (12, 20)
    np.testing.assert_array_equal(xtr, arrays["train-images-idx3-ubyte"].reshape(30, 20))
    np.testing.assert_array_equal(yte, arrays["t10k-labels-idx1-ubyte"])
    assert ytr.dtype == np.int64


def test_load_dataset_from_idx_folder(tmp_path):
    arrays = _write_idx_folder(tmp_path, gz=True)
    ds = load_dataset(tmp_path, classes=(0, 2), n_train=8, n_test=4, seed=0)
    assert ds.name == str(tmp_path) and ds.input_dim == 20
    np.testing.assert_allclose(np.linalg.norm(ds.x_train, axis=1), 1.0, atol=1e-12)
    # training rows come from the train file, test rows from the t10k file
    train_src = _rows(normalise_rows(arrays["train-images-idx3-ubyte"].reshape(30, -1)))
    test_src = _rows(normalise_rows(arrays["t10k-images-idx3-ubyte"].reshape(12, -1)))
    assert _rows(ds.x_train) <= train_src and _rows(ds.x_test) <= test_src
    with pytest.raises(DataError, match=r"class 0 has 4 test samples in .*; requested 5"):
        load_dataset(tmp_path, classes=(0, 2), n_train=8, n_test=10)


def test_idx_errors(tmp_path):
    _write_idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"lacks MNIST IDX file\(s\): t10k-labels-idx1-ubyte"):
        load_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros((2, 2), np.uint8)))
    with pytest.raises(DataError, match=r"magic 0x00000802, expected 0x00000801"):
        load_mnist_idx(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(12, np.uint8))[:-1])
    with pytest.raises(DataError, match=r"holds 11 data bytes, header says 12"):
        load_mnist_idx(tmp_path)


@pytest.mark.parametrize("subdir", [False, True])
def test_load_cifar10(tmp_path, subdir):
    folder = tmp_path / "cifar-10-batches-py" if subdir else tmp_path
    batches = _write_cifar_folder(folder)
    (xtr, ytr), (xte, yte) = load_cifar10(tmp_path)
    assert xtr.shape == (30, 3072) and xtr.dtype == np.uint8 and xte.shape == (10, 3072)
    np.testing.assert_array_equal(xtr[6:12], batches["data_batch_2"][0])
    np.testing.assert_array_equal(yte, batches["test_batch"][1])
    ds = load_dataset(tmp_path, classes=(1, 2, 3), n_train=6, n_test=3, seed=1)
    assert ds.input_dim == 3072 and ds.n_outputs == 3
    assert [int(np.sum(ds.labels_train == c)) for c in (1, 2, 3)] == [2, 2, 2]
    assert _rows(ds.x_test) <= _rows(normalise_rows(batches["test_batch"][0]))


def test_cifar_errors(tmp_path):
    _write_cifar_folder(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(DataError, match=r"lacks CIFAR-10 python batch\(es\): data_batch_4"):
        load_dataset(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "data_batch_4").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match=r"data_batch_4 is not a CIFAR-10 python batch: .*print"):
        load_cifar10(tmp_path)


# --------------------------------------------------------------------------- #
# Forster transformation (Section B.3.1(ii))
# --------------------------------------------------------------------------- #
def test_forster_transform_isotropic_and_unit_rows():
    n, m = 40, 10
    x = np.random.default_rng(0).standard_normal((n, m))
    xbar, b = forster_transform(x, return_map=True)
    np.testing.assert_allclose(xbar.T @ xbar, (n / m) * np.eye(m), atol=1e-8)
    np.testing.assert_allclose(np.linalg.norm(xbar, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(normalise_rows(x @ b), xbar, atol=1e-12)
    # N = M0: a single step gives an orthogonal matrix
    sq = forster_transform(np.random.default_rng(1).standard_normal((m, m)))
    np.testing.assert_allclose(sq.T @ sq, np.eye(m), atol=1e-8)


def test_forster_transform_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match=r"N=5 < M0=10.*unnecessary"):
        forster_transform(rng.standard_normal((5, 10)))
    rank_deficient = np.c_[rng.standard_normal((40, 9)), np.zeros(40)]
    with pytest.raises(DataError, match=r"rank 9"):
        forster_transform(rank_deficient)
    # 30 of 40 points in a 2-D subspace (> 2 * 40 / 10): not in general position
    x = rng.standard_normal((40, 10))
    x[:30, 2:] = 0.0
    with pytest.raises(DataError, match=r"general position"):
        forster_transform(x)
    with pytest.raises(DataError, match=r"did not converge in 5 iterations"):
        forster_transform(rng.standard_normal((40, 10)), max_iter=5)
