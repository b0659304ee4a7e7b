"""Untrusted data files (issue 12, items 2 and 5): crafted corrupt CIFAR-10 pickles and IDX files.

Every case is generated here in ``tmp_path``.  Each must be refused with a
:class:`DataError` whose message is one short line naming the file, raised
without a chained traceback, and -- for the files built to exhaust memory --
without allocating more than a few MiB (``tracemalloc`` sees NumPy's buffers
and the unpickler's own allocations).
"""

from __future__ import annotations

import gzip
import pickle
import re
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import ngdref.data as data_mod
from ngdref.data import DataError, load_cifar10, load_dataset, load_mnist_idx

CIFAR_NAMES = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
MiB = 1 << 20


# --------------------------------------------------------------------------- #
# pickle opcodes, written out so that each crafted file says exactly what it does
# --------------------------------------------------------------------------- #
def _glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s: str) -> bytes:
    """A Python 2 ``str`` (SHORT_BINSTRING/BINSTRING): bytes under encoding='bytes'."""
    b = s.encode("latin-1")
    return (b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b


def _bin(b: bytes) -> bytes:
    return b"T" + struct.pack("<i", len(b)) + b


def _uni(s: str) -> bytes:
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
    if 0 <= i < 2**31:
        return b"J" + struct.pack("<i", i)
    raw = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _dtype(spec: str, order: str = "|") -> bytes:
    """``numpy.dtype(spec, False, True)`` with its BUILD state, as NumPy pickles it."""
    state = _tuple(_int(3), _str(order), b"NNN", _int(2**32 - 1), _int(2**32 - 1), _int(0))
    return _glob("numpy", "dtype") + _tuple(_str(spec), b"\x89\x88") + b"R" + state + b"b"


def _array(shape: tuple[int, ...], spec: str, raw: bytes, order: str = "|", fortran=False) -> bytes:
    """An ndarray the way a Python 2 CIFAR batch stores it: _reconstruct, then BUILD."""
    head = _glob("numpy.core.multiarray", "_reconstruct") + _tuple(
        _glob("numpy", "ndarray"), _tuple(_int(0)), _str("b")
    ) + b"R"
    state = _tuple(_int(1), _tuple(*map(_int, shape)), _dtype(spec, order),
                   b"\x88" if fortran else b"\x89", _bin(raw))
    return head + state + b"b"


def _ndarray_call(shape: tuple[int, ...], spec: str) -> bytes:
    """``numpy.ndarray(shape, dtype)``: an uninitialised array of any size from a few bytes."""
    return _glob("numpy", "ndarray") + _tuple(_tuple(*map(_int, shape)), _dtype(spec)) + b"R"


def _list(*items: bytes) -> bytes:
    return b"](" + b"".join(items) + b"e"


def _batch(**entries: bytes) -> bytes:
    """A protocol-2 dict ``{b'<key>': value}`` (keys as Python 2 str, i.e. bytes)."""
    body = b"".join(_str(k) + v for k, v in entries.items())
    return b"\x80\x02}(" + body + b"u."


def _good_entries(n: int = 3, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    images = rng.integers(1, 256, size=(n, 3072), dtype=np.uint8)
    return {"data": _array(images.shape, "u1", images.tobytes()),
            "labels": _list(*(b"K" + bytes([k % 10]) for k in range(n)))}


def _cifar_folder(folder: Path, bad: bytes | None = None, bad_name: str = "data_batch_3") -> Path:
    """Six valid Python-2-style batches; ``bad`` replaces ``bad_name``."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(CIFAR_NAMES):
        (folder / name).write_bytes(_batch(**_good_entries(seed=k)))
    if bad is not None:
        (folder / bad_name).write_bytes(bad)
    return folder


def _refused(call, *names: str, match: str | None = None, peak_mib: float = 32.0) -> str:
    """Run ``call``; it must raise DataError: one line <= 300 chars naming the file(s),
    no chained traceback, and a tracemalloc peak below ``peak_mib``."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "\n" not in message and len(message) <= 300, message[:500]
    for name in names:
        assert name in message, message
    if match is not None:
        assert re.search(match, message), message
    err = info.value  # raised on its own: no chained exception shown under it
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)
    assert peak < peak_mib * MiB, f"peak {peak / MiB:.1f} MiB: {message}"
    return message


# --------------------------------------------------------------------------- #
# the crafted batches load when they are right
# --------------------------------------------------------------------------- #
def test_python2_style_batches_load(tmp_path):
    folder = _cifar_folder(tmp_path)
    (xtr, ytr), (xte, yte) = load_cifar10(folder)
    assert xtr.shape == (15, 3072) and xtr.dtype == np.uint8 and xtr.flags.writeable
    assert yte.tolist() == [0, 1, 2] and ytr.dtype == np.int64
    rng = np.random.default_rng(1)
    np.testing.assert_array_equal(xtr[3:6], rng.integers(1, 256, size=(3, 3072), dtype=np.uint8))


def test_labels_array_fortran_data_and_numpy_scalars_load(tmp_path):
    """Other ways a batch can hold the same content: labels as a big-endian int array or
    as NumPy scalars (Python 3 pickles), data in Fortran order."""
    images = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3072) | 1
    scalar = _glob("numpy.core.multiarray", "scalar")
    entries = {
        "data": _array((2, 3072), "u1", np.asfortranarray(images).tobytes(order="F"), fortran=True),
        "labels": _array((2,), "i8", np.array([7, 3], dtype=">i8").tobytes(), order=">"),
    }
    _cifar_folder(tmp_path, _batch(**entries), "test_batch")
    (_, _), (xte, yte) = load_cifar10(tmp_path)
    np.testing.assert_array_equal(xte, images)
    assert yte.tolist() == [7, 3]
    as_scalars = _list(*(scalar + _tuple(_dtype("i8", "<"), _bin(struct.pack("<q", v))) + b"R"
                         for v in (4, 5)))
    _cifar_folder(tmp_path, _batch(data=entries["data"], labels=as_scalars), "test_batch")
    assert load_cifar10(tmp_path)[1][1].tolist() == [4, 5]


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_python3_pickles_load(tmp_path, protocol):
    """What ``pickle.dump(batch, f, protocol)`` writes under Python 3 (protocol 2: bytes via
    _codecs; 4: frames).  Protocol 5 stores arrays as out-of-band buffers: refused."""
    _cifar_folder(tmp_path)
    images = np.full((2, 3072), 9, dtype=np.uint8)
    batch = {b"data": images, b"labels": [np.int64(1), 2], b"filenames": [b"a.png", b"b.png"]}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
    (_, _), (xte, yte) = load_cifar10(tmp_path)
    np.testing.assert_array_equal(xte, images)
    assert yte.tolist() == [1, 2]


# --------------------------------------------------------------------------- #
# memory: a few hundred bytes must not make the loader allocate gigabytes
# --------------------------------------------------------------------------- #
def _codec_chain(depth: int = 30) -> bytes:
    """``encode(encode(...encode(b'x' * 64, 'hex')..., 'hex'), 'hex')``: 64 * 2**depth bytes."""
    inner = _str("x" * 64)
    for _ in range(depth):
        inner = b"h\x00(" + inner + _uni("hex") + b"tR"
    return b"\x80\x02" + _glob("_codecs", "encode") + b"q\x000" + inner + b"."


MEMORY_BOMBS = {
    # numpy.ndarray(shape, dtype): what drove six 240-byte files to 6.35 GiB
    "ndarray_call": _batch(data=_ndarray_call((350_000, 3072), "u1"),
                           labels=_ndarray_call((350_000,), "i8")),
    # _reconstruct + a BUILD state whose shape is huge and whose data is short
    "huge_shape": _batch(data=_array((10**9, 3072), "u1", b"\0" * 16), labels=_list()),
    "object_dtype": _batch(data=_array((10**9,), "O", b""), labels=_list()),
    "void_dtype": _batch(data=_array((1,), "V2000000000", b""), labels=_list()),
    # the C unpickler resizes its memo to twice a LONG_BINPUT index and clears it
    "memo_index": b"\x80\x02N" + b"r" + struct.pack("<i", 2**31 - 1) + b".",
    # ... and pre-allocates a BINBYTES8/BINBYTES length before reading it
    "bytes8_length": b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"xx.",
    "bytes4_length": b"\x80\x03B" + struct.pack("<I", 2**32 - 1) + b"xx.",
    "string4_length": b"\x80\x02T" + struct.pack("<i", 2**31 - 1) + b"xx.",
    "frame_length": b"\x80\x04\x95" + struct.pack("<Q", 2**40) + b"N.",
    # _codecs.encode(..., 'hex') doubles its input: 30 nested calls ask for 64 GiB
    "codec_chain": _codec_chain(),
}




@pytest.mark.parametrize("case", sorted(MEMORY_BOMBS))
def test_memory_bombs_are_refused_before_allocating(tmp_path, case):
    bomb = MEMORY_BOMBS[case]
    assert len(bomb) < 600
    _cifar_folder(tmp_path, bomb)
    _refused(lambda: load_dataset(tmp_path), "data_batch_3", "not a CIFAR-10 python batch",
             peak_mib=8)


def test_six_bombs_through_load_dataset_stay_bounded(tmp_path):
    """The issue's case: every batch a ~240-byte numpy.ndarray(shape, dtype) pickle."""
    bomb = MEMORY_BOMBS["ndarray_call"]
    for name in CIFAR_NAMES:
        (tmp_path / name).write_bytes(bomb)
    message = _refused(lambda: load_dataset(tmp_path), "data_batch_1", peak_mib=8)
    assert "numpy.ndarray(shape, dtype) in a pickle is not allowed" in message


def test_largest_array_and_file_are_bounded(tmp_path, monkeypatch):
    """Shapes beyond the format's 10,000 x 3,072 bytes and files beyond twice a real
    batch are refused before they are built or read (bounds shrunk for speed)."""
    _cifar_folder(tmp_path)
    monkeypatch.setattr(data_mod, "_CIFAR_MAX_ARRAY", 2 * 3072)
    _refused(lambda: load_cifar10(tmp_path), "data_batch_1",
             match=r"array of shape \(3, 3072\) \(9216 bytes\) exceeds the format's")
    monkeypatch.setattr(data_mod, "_CIFAR_MAX_FILE", 1000)
    _refused(lambda: load_cifar10(tmp_path), "data_batch_1", match=r"bytes is more than a batch")


def test_opcode_count_and_tuple_nesting_are_bounded(tmp_path, monkeypatch):
    # a tuple nested 10**6 deep as a dict key crashes CPython's hash (C recursion);
    # 100 levels show the bound without risking the test process
    nested = b"N" + b"\x85" * 100
    _cifar_folder(tmp_path, b"\x80\x02}(" + nested + b"Nu.")
    _refused(lambda: load_cifar10(tmp_path), "data_batch_3", match=r"nests tuples more than 32 deep")
    monkeypatch.setattr(data_mod, "_PICKLE_MAX_OPS", 50)
    _cifar_folder(tmp_path, b"\x80\x02(" + b"N" * 60 + b"l.")
    _refused(lambda: load_cifar10(tmp_path), "data_batch_3", match=r"more than 50 opcodes")


# --------------------------------------------------------------------------- #
# code execution and other refused pickles
# --------------------------------------------------------------------------- #
REFUSED_PICKLES = {
    "os_system": (_glob("os", "system") + _tuple(_uni("echo pwned")) + b"R.", r"global os\.system is not allowed"),
    "posix_system": (b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c\x01x\x85R.", r"global posix\.system"),
    "eval": (_glob("builtins", "eval") + _tuple(_uni("1+1")) + b"R.", r"global builtins\.eval is not allowed"),
    "inst_opcode": (b"(S'echo'\nios\nsystem\n.", r"opcode INST"),
    "obj_opcode": (b"\x80\x02(" + _glob("os", "system") + _uni("x") + b"o.", r"opcode OBJ"),
    "ext_opcode": (b"\x80\x02\x82\x01.", r"opcode EXT1"),
    "persistent_id": (b"\x80\x02" + _uni("x") + b"Q.", r"opcode BINPERSID"),
    "out_of_band_buffer": (b"\x80\x05\x97.", r"opcode NEXT_BUFFER"),
    "frombuffer": (b"\x80\x02" + _glob("numpy._core.numeric", "_frombuffer") + b".", r"global numpy\._core"),
    "long_global": (_glob("os" * 5000, "system") + b".", r"global (os)+o?\.\.\. is not allowed"),
    "reconstruct_other_type": (
        _glob("numpy.core.multiarray", "_reconstruct") + _tuple(_glob("numpy", "dtype"), _tuple(_int(0)), _str("b")) + b"R.",
        r"_reconstruct of anything but numpy\.ndarray"),
    "codec_other": (_glob("_codecs", "encode") + _tuple(_uni("ab"), _uni("rot13")) + b"R.", r"_codecs\.encode other than"),
    "empty_file": (b"", r"malformed pickle"),
    "garbage": (b"\xff" * 100, r"malformed pickle \(at position 0, opcode b?'\\xff' unknown\)"),
    "truncated": (_batch(**_good_entries())[:3000], r"malformed pickle"),
    "no_stop": (b"\x80\x02N", r"malformed pickle"),
    "get_before_put": (b"\x80\x02h\x05.", r"memo entry 5 that was never written"),
    "stack_underflow": (b"\x80\x02N\x86.", r"stack underflow"),
    "build_twice": (
        _batch(data=_array((0, 3072), "u1", b"") + _tuple(_int(1), _tuple(_int(0)), _dtype("u1"), b"\x89", _bin(b"")) + b"b",
               labels=_list()), r"an array is built twice"),
    "wrong_raw_size": (_batch(data=_array((2, 3072), "u1", b"x" * 10), labels=_list(b"K\x00", b"K\x00")),
                       r"array of shape \(2, 3072\) needs 6144 bytes, the pickle holds 10"),
    "three_dims": (_batch(data=_array((1, 3, 1024), "u1", b"x" * 3072), labels=_list(b"K\x00")),
                   r"at most two non-negative integers"),
    "float_dtype": (_batch(data=_array((1, 3072), "f8", b"x" * 8 * 3072), labels=_list()), r"dtype 'f8' is not allowed"),
    "dtype_fields": (_glob("numpy", "dtype") + _tuple(_str("u1")) + b"R" + _tuple(_int(3), _str("|"), b"N", _tuple(), b"NJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00") + b"b.",
                     r"dtype state is not that of a plain integer type"),
    # the batch's structure
    "not_a_dict": (b"\x80\x02]." , r"expected a dict, got list"),
    "no_labels": (_batch(data=_good_entries()["data"]), r"lacks the b'data' or b'labels' entry"),
    "ragged_data_list": (_batch(data=_list(_list(b"K\x01" * 3), _list(b"K\x01")), labels=_list(b"K\x00", b"K\x00")),
                         r"b'data' must be a uint8 array of shape \(n, 3072\), got a list"),
    "data_wrong_width": (_batch(data=_array((2, 100), "u1", b"x" * 200), labels=_list(b"K\x00", b"K\x00")),
                         r"b'data' must be uint8 of shape \(n, 3072\), got uint8 \(2, 100\)"),
    "data_wrong_dtype": (_batch(data=_array((1, 3072), "i2", b"x" * 6144), labels=_list(b"K\x00")),
                         r"got int16 \(1, 3072\)"),
    "too_few_labels": (_batch(data=_good_entries()["data"], labels=_list(b"K\x00", b"K\x01")),
                       r"b'labels' has 2 entries for 3 images"),
    "label_ten": (_batch(data=_good_entries()["data"], labels=_list(b"K\x00", b"K\x0a", b"K\x01")),
                  r"b'labels'\[1\] is 10, not a class 0-9"),
    "label_negative": (_batch(data=_good_entries()["data"], labels=_list(b"K\x00", b"K\x01", b"\x8a\x01\xff")),
                       r"b'labels'\[2\] is -1, not a class 0-9"),
    "label_huge": (_batch(data=_good_entries()["data"], labels=_list(b"K\x00", b"K\x01", _int(10**300))),
                   r"b'labels'\[2\] is \d+\.\.\., not a class 0-9"),
    "label_str": (_batch(data=_good_entries()["data"], labels=_list(b"K\x00", _str("1"), b"K\x01")),
                  r"b'labels'\[1\] is a bytes, not an integer"),
    "label_bool": (_batch(data=_good_entries()["data"], labels=_list(b"\x88", b"K\x00", b"K\x01")),
                   r"b'labels'\[0\] is a bool"),
    "labels_not_list": (_batch(data=_good_entries()["data"], labels=_int(3)), r"b'labels' must be a list of integers, got int"),
    "labels_array_value": (_batch(data=_good_entries(2)["data"], labels=_array((2,), "u1", b"\x01\x0c")),
                           r"b'labels'\[1\] is 12, not a class 0-9"),
    "labels_2d": (_batch(data=_good_entries(2)["data"], labels=_array((2, 1), "u1", b"\x01\x02")),
                  r"b'labels' must be a 1-D integer array, got uint8 \(2, 1\)"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_PICKLES))
def test_refused_pickles(tmp_path, case):
    payload, pattern = REFUSED_PICKLES[case]
    _cifar_folder(tmp_path, payload)
    _refused(lambda: load_cifar10(tmp_path), "data_batch_3", "not a CIFAR-10 python batch",
             match=pattern)


def test_code_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    for opener in (_glob("os", "system"), _glob("posix", "system")):
        _cifar_folder(tmp_path, b"\x80\x02" + opener + _tuple(_uni(f"touch {marker}")) + b"R.")
        _refused(lambda: load_cifar10(tmp_path), "data_batch_3")
    assert not marker.exists()


def test_long_paths_are_shortened(tmp_path):
    folder = tmp_path / ("d" * 200)
    _cifar_folder(folder, b"\x80\x02].")
    message = _refused(lambda: load_cifar10(folder), "data_batch_3", match=r"^\.\.\.d+/data_batch_3 ")
    assert len(message) < 200


# --------------------------------------------------------------------------- #
# IDX (MNIST) files
# --------------------------------------------------------------------------- #
def _idx(arr: np.ndarray, dims: tuple[int, ...] | None = None) -> bytes:
    dims = arr.shape if dims is None else dims
    return struct.pack(">I", 0x0800 + len(dims)) + struct.pack(f">{len(dims)}I", *dims) + arr.tobytes()


def _idx_folder(folder: Path, gz: bool = False) -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": _idx(rng.integers(1, 256, (20, 4, 5), dtype=np.uint8)),
        "train-labels-idx1-ubyte": _idx((np.arange(20) % 2).astype(np.uint8)),
        "t10k-images-idx3-ubyte": _idx(rng.integers(1, 256, (6, 4, 5), dtype=np.uint8)),
        "t10k-labels-idx1-ubyte": _idx((np.arange(6) % 2).astype(np.uint8)),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, raw in files.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw, mtime=0))
        else:
            (folder / name).write_bytes(raw)
    return files


TRAIN_IMAGES = "train-images-idx3-ubyte"


def _flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]


def test_idx_files_still_load(tmp_path):
    for gz in (False, True):
        files = _idx_folder(tmp_path / str(gz), gz=gz)
        (xtr, ytr), (xte, _) = load_mnist_idx(tmp_path / str(gz))
        assert xtr.shape == (20, 20) and xte.shape == (6, 20) and ytr.dtype == np.int64
        assert xtr.tobytes() == files[TRAIN_IMAGES][16:]


@pytest.mark.parametrize("at", [10, 11, 40, 100, -12, -6])
def test_corrupt_deflate_stream(tmp_path, at):
    """Flipped bytes in the deflate stream or its CRC/size trailer: one line, no traceback."""
    files = _idx_folder(tmp_path, gz=True)
    path = tmp_path / f"{TRAIN_IMAGES}.gz"
    path.write_bytes(_flip(gzip.compress(files[TRAIN_IMAGES], mtime=0), at))
    _refused(lambda: load_dataset(tmp_path, classes=(0, 1), n_train=4, n_test=2), f"{TRAIN_IMAGES}.gz",
             match=r"is a corrupt or truncated gzip file|data bytes, header says")


def test_corrupt_block_type_and_truncated_gzip(tmp_path):
    files = _idx_folder(tmp_path, gz=True)
    path = tmp_path / f"{TRAIN_IMAGES}.gz"
    packed = gzip.compress(files[TRAIN_IMAGES], mtime=0)
    path.write_bytes(packed[:10] + b"\xff" + packed[11:])  # BTYPE 11: reserved
    _refused(lambda: load_mnist_idx(tmp_path), f"{TRAIN_IMAGES}.gz",
             match=r"corrupt or truncated gzip file: Error -3 while decompressing data: invalid block type")
    path.write_bytes(packed[:-20])
    _refused(lambda: load_mnist_idx(tmp_path), f"{TRAIN_IMAGES}.gz",
             match=r"corrupt or truncated gzip file: Compressed file ended")
    path.write_bytes(files[TRAIN_IMAGES])  # not gzip at all
    _refused(lambda: load_mnist_idx(tmp_path), f"{TRAIN_IMAGES}.gz", match=r"Not a gzipped file")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_payload_must_match_the_header(tmp_path, gz):
    files = _idx_folder(tmp_path, gz=gz)
    name = TRAIN_IMAGES + (".gz" if gz else "")
    raw = files[TRAIN_IMAGES]

    def put(data: bytes) -> None:
        (tmp_path / name).write_bytes(gzip.compress(data, mtime=0) if gz else data)

    put(raw[:-7])  # truncated
    _refused(lambda: load_mnist_idx(tmp_path), name, match=r"holds 393 data bytes, header says 400 \(20x4x5\)")
    put(raw + b"\0")  # one byte too many
    _refused(lambda: load_mnist_idx(tmp_path), name, match=r"holds (401|more than 400) data bytes, header says 400")
    put(_idx(np.zeros((20, 4, 5), np.uint8), dims=(21, 4, 5)))  # dims do not match the payload
    _refused(lambda: load_mnist_idx(tmp_path), name, match=r"header says 420 \(21x4x5\)")
    put(raw[:10])  # not even a header
    _refused(lambda: load_mnist_idx(tmp_path), name, match=r"too short to be an IDX file \(16-byte header\)")
    put(_idx(np.zeros(30, np.uint8)))  # a 1-D file where a 3-D one belongs
    _refused(lambda: load_mnist_idx(tmp_path), name, match=r"IDX magic 0x00000801, expected 0x00000803")


@pytest.mark.parametrize("gz", [False, True])
def test_absurd_idx_dims_are_refused_before_allocating(tmp_path, gz):
    _idx_folder(tmp_path, gz=gz)
    name = TRAIN_IMAGES + (".gz" if gz else "")
    absurd = _idx(np.zeros(16, np.uint8), dims=(2**32 - 1, 2**32 - 1, 2**32 - 1))
    near = _idx(np.zeros(16, np.uint8), dims=(60_000_000, 28, 28))  # 47 GB: a plausible MNIST-like header
    for raw in (absurd, near):
        (tmp_path / name).write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
        expected = r"gzip file can hold" if gz else r"holds 16 data bytes, header says \d+"
        _refused(lambda: load_mnist_idx(tmp_path), name, match=expected, peak_mib=4)


def test_idx_image_and_label_counts_must_agree(tmp_path):
    _idx_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.zeros(5, np.uint8)))
    _refused(lambda: load_mnist_idx(tmp_path), "t10k-images-idx3-ubyte has 6 images",
             "t10k-labels-idx1-ubyte has 5 labels")


# --------------------------------------------------------------------------- #
# through the command line: exit 2, one line on stderr
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("case", ["ragged_cifar", "bomb_cifar", "corrupt_gz", "absurd_idx"])
def test_cli_train_with_bad_data_exits_2_with_one_line(tmp_path, case):
    from ngdref_cli.main import cli

    folder = tmp_path / "data"
    if case == "ragged_cifar":
        _cifar_folder(folder, REFUSED_PICKLES["ragged_data_list"][0])
        bad = "data_batch_3"
    elif case == "bomb_cifar":
        _cifar_folder(folder, MEMORY_BOMBS["ndarray_call"])
        bad = "data_batch_3"
    elif case == "corrupt_gz":
        files = _idx_folder(folder, gz=True)
        packed = gzip.compress(files[TRAIN_IMAGES], mtime=0)
        (folder / f"{TRAIN_IMAGES}.gz").write_bytes(packed[:10] + b"\xff" + packed[11:])
        bad = f"{TRAIN_IMAGES}.gz"
    else:
        _idx_folder(folder)
        (folder / TRAIN_IMAGES).write_bytes(_idx(np.zeros(4, np.uint8), dims=(2**31, 2**31, 9)))
        bad = TRAIN_IMAGES
    json_path = tmp_path / "out.json"
    result = CliRunner().invoke(cli, ["train", "--data", str(folder), "--classes", "0,1", "--n-train", "4",
                                      "--n-test", "2", "--width", "8", "--steps", "1", "--json", str(json_path)])
    assert result.exit_code == 2, (result.exit_code, result.output, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and bad in lines[0], result.stderr
    assert len(lines[0]) <= 320 and "Traceback" not in result.output + result.stderr
    assert not json_path.exists()


def test_missing_class_lists_at_most_20_of_the_available(tmp_path):
    _idx_folder(tmp_path)
    rng = np.random.default_rng(0)
    (tmp_path / TRAIN_IMAGES).write_bytes(_idx(rng.integers(1, 256, (30, 4, 5), dtype=np.uint8)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.arange(30, dtype=np.uint8) * 3))
    message = _refused(lambda: load_dataset(tmp_path, classes=(0, 5)), match=r"class 5 does not exist in ")
    listed = ", ".join(str(3 * k) for k in range(20))
    assert message.endswith(f"(available classes: {listed}, ... (30 classes))")
