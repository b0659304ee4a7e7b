"""Input data for the NGD reference implementation (host-side NumPy, float64).

Karakida & Osawa (2020) state their results for training inputs that satisfy
**Assumption 2** (Section 3.1): every sample is normalised, ``||x_n||_2 = 1``, and
samples are distinct, ``x_n != x_n'`` for ``n != n'``.  This module produces
such inputs from

* ``"mnist"`` -- the 5,000-image MNIST training subset bundled with the package
  (see ``data/README.md``), e.g. the two-class '0' vs '7' task of Figure 1;
* ``"gaussian"`` -- synthetic inputs ``x_i ~ N(0, 1)`` as in Section C.3.1
  (Figure 3, Figure S.2), normalised to the unit sphere;
* a folder holding the original MNIST IDX files or the CIFAR-10 python batches
  (Figure 2).

It also provides the Forster transformation used for K-FAC when ``M0 < N``
(Section B.3.1(ii), Eqs. S.110-S.111) and the target encodings of the paper:
one output with targets +/-0.5 for two classes (``C = 1``), one-hot otherwise.

All failures are reported as :class:`DataError` with a one-line message.
"""

from __future__ import annotations

import gzip
import io
import pickle
import pickletools
import zlib
from dataclasses import dataclass
from functools import lru_cache
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from ngdref.errors import NgdrefError, one_line

__all__ = [
    "DataError",
    "Dataset",
    "normalise_rows",
    "validate_inputs",
    "encode_targets",
    "load_dataset",
    "forster_transform",
    "load_mnist_idx",
    "load_cifar10",
]

_BUNDLED_MNIST = "mnist_5k.npz"

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_SUBDIR = "cifar-10-batches-py"
_CIFAR_DIM = 3 * 32 * 32


_Split = tuple[np.ndarray, np.ndarray]  # (images uint8 (n, d), labels int64 (n,))
_GZIP_MAX_RATIO = 1032  # deflate expands at most ~1032:1; a header promising more is refused unread
_MESSAGE_MAX = 300  # every DataError is one line of at most this many characters
_PATH_MAX = 80  # longer paths are shown by their last characters


def _where(path: Path) -> str:
    """A path for a message: in full, or its last characters when it is long."""
    text = str(path)
    return text if len(text) <= _PATH_MAX else "..." + text[-(_PATH_MAX - 3):]


class DataError(NgdrefError):
    """Invalid or unavailable data; the message is a single user-facing line.

    A ``ValueError`` (through :class:`ngdref.errors.NgdrefError`, which the CLI
    reports as one line).  The message is folded onto one line and cut to 300
    characters, so that no file content or object repr can make it long.
    """

    def __init__(self, message: Any = "") -> None:
        super().__init__(one_line(message, _MESSAGE_MAX))


# --------------------------------------------------------------------------- #
# Dataset container
# --------------------------------------------------------------------------- #
@dataclass(frozen=True, eq=False)
class Dataset:
    """Normalised train/test inputs and their targets.

    Attributes
    ----------
    x_train, x_test
        ``(N, M0)`` / ``(N', M0)`` float64 inputs; every row has ``||x||_2 = 1``
        and the training rows are distinct (Assumption 2, Section 3.1).
    y_train, y_test
        ``(N, C)`` / ``(N', C)`` float64 targets from :func:`encode_targets`.
    labels_train, labels_test
        ``(N,)`` / ``(N',)`` int64 original class labels.
    classes
        The classes in encoding order (``classes[0]`` -> +0.5 when ``C = 1``).
    name
        ``"mnist"``, ``"gaussian"`` or the folder path the data came from.

    The arrays are stored as read-only views so that a dataset cannot be altered
    in place; equality is identity (compare the arrays to compare datasets).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels_train: np.ndarray
    labels_test: np.ndarray
    classes: tuple[int, ...]
    name: str

    def __post_init__(self) -> None:
        for field in ("x_train", "y_train", "x_test", "y_test"):
            arr = getattr(self, field)
            if not (isinstance(arr, np.ndarray) and arr.ndim == 2 and arr.dtype == np.float64):
                raise DataError(f"Dataset.{field} must be a 2-D float64 array")
        for field in ("labels_train", "labels_test"):
            arr = getattr(self, field)
            if not (isinstance(arr, np.ndarray) and arr.ndim == 1 and arr.dtype == np.int64):
                raise DataError(f"Dataset.{field} must be a 1-D int64 array")
        n, n_test = self.x_train.shape[0], self.x_test.shape[0]
        if self.y_train.shape[0] != n or self.labels_train.shape[0] != n:
            raise DataError("Dataset: x_train, y_train and labels_train differ in length")
        if self.y_test.shape[0] != n_test or self.labels_test.shape[0] != n_test:
            raise DataError("Dataset: x_test, y_test and labels_test differ in length")
        if self.x_test.shape[1] != self.x_train.shape[1]:
            raise DataError("Dataset: x_train and x_test differ in input dimension")
        if self.y_test.shape[1] != self.y_train.shape[1]:
            raise DataError("Dataset: y_train and y_test differ in number of outputs")
        for field in ("x_train", "y_train", "x_test", "y_test", "labels_train", "labels_test"):
            view = getattr(self, field).view()  # read-only view; the caller's array is untouched
            view.setflags(write=False)
            object.__setattr__(self, field, view)

    @property
    def n_train(self) -> int:
        """Number of training samples N."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test samples N'."""
        return int(self.x_test.shape[0])

    @property
    def input_dim(self) -> int:
        """Input dimension M0."""
        return int(self.x_train.shape[1])

    @property
    def n_outputs(self) -> int:
        """Number of network outputs C (1 for two classes, else the number of classes)."""
        return int(self.y_train.shape[1])

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (no arrays)."""
        return {
            "name": self.name,
            "classes": list(self.classes),
            "n_train": self.n_train,
            "n_test": self.n_test,
            "input_dim": self.input_dim,
            "n_outputs": self.n_outputs,
            "train_class_counts": [int(np.sum(self.labels_train == c)) for c in self.classes],
            "test_class_counts": [int(np.sum(self.labels_test == c)) for c in self.classes],
        }


# --------------------------------------------------------------------------- #
# Normalisation, validation and targets
# --------------------------------------------------------------------------- #
def _as_matrix(x: Any, what: str = "inputs") -> np.ndarray:
    """Return ``x`` as a finite 2-D float64 array or raise DataError."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise DataError(f"{what} must be a numeric array") from None
    if arr.ndim != 2:
        raise DataError(f"{what} must be a 2-D array (samples x features), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        row = int(np.flatnonzero(~np.all(np.isfinite(arr), axis=1))[0])
        raise DataError(f"{what} must be finite: row {row} contains NaN or inf")
    return arr


def normalise_rows(x: Any) -> np.ndarray:
    """Scale every row of ``x`` to unit Euclidean norm (Assumption 2, Section 3.1).

    Returns a new float64 array.  Raises :class:`DataError` if ``x`` is not a
    finite 2-D array or contains a zero row (which cannot be normalised).
    """
    arr = _as_matrix(x)
    norms = np.linalg.norm(arr, axis=1)
    zero = np.flatnonzero(norms == 0.0)
    if zero.size:
        raise DataError(
            f"row {int(zero[0])} is a zero vector and cannot be normalised to ||x||=1 "
            "(Assumption 2)"
        )
    return arr / norms[:, None]


def validate_inputs(x: Any, atol: float = 1e-6) -> None:
    """Check Assumption 2 (Section 3.1): unit-norm, pairwise distinct rows.

    Raises :class:`DataError` if ``x`` is not a finite 2-D array, if any row norm
    differs from 1 by more than ``atol``, or if two rows are identical.
    """
    arr = _as_matrix(x)
    norms = np.linalg.norm(arr, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > atol)
    if bad.size:
        row = int(bad[0])
        raise DataError(
            "inputs must be normalised to ||x||=1 (Assumption 2): "
            f"row {row} has norm {norms[row]:.3g}"
        )
    if arr.shape[0] > 1:
        _, first, inverse = np.unique(arr, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        dup = np.flatnonzero(first[inverse] != np.arange(arr.shape[0]))
        if dup.size:
            j = int(dup[0])
            i = int(first[inverse[j]])
            raise DataError(
                f"inputs must be distinct (Assumption 2): rows {i} and {j} are identical"
            )


def _check_classes(classes: Any) -> tuple[int, ...]:
    """Validate a class list: at least two distinct integers."""
    try:
        items = list(classes)
    except TypeError:
        raise DataError(f"classes must be a sequence of integers, got {classes!r}") from None
    out = []
    for c in items:
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, (int, np.integer)):
            raise DataError(f"classes must be integers, got {c!r}")
        out.append(int(c))
    if len(out) < 2:
        raise DataError(f"at least two classes are needed, got {tuple(out)}")
    if len(set(out)) != len(out):
        raise DataError(f"classes must not repeat, got {tuple(out)}")
    return tuple(out)


def encode_targets(labels: Any, classes: Any) -> np.ndarray:
    """Encode class labels as regression targets ``y`` of shape ``(N, C)``.

    Two classes give a single output (``C = 1``): +0.5 for ``classes[0]`` and
    -0.5 for ``classes[1]``, as in the authors' code for the '0' vs '7' MNIST task
    (Figure 1).  More classes give one-hot targets with ``C = len(classes)``
    (entry 1 at the position of the label in ``classes``, 0 elsewhere).
    """
    cls = _check_classes(classes)
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise DataError(f"labels must be 1-D, got shape {lab.shape}")
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        raise DataError(f"labels must be integers, got dtype {lab.dtype}")
    lab = lab.astype(np.int64)
    index = np.full(lab.shape, -1, dtype=np.int64)
    for k, c in enumerate(cls):
        index[lab == c] = k
    unknown = np.flatnonzero(index < 0)
    if unknown.size:
        raise DataError(f"label {int(lab[unknown[0]])} is not one of the classes {cls}")
    if len(cls) == 2:
        return np.where(index == 0, 0.5, -0.5).astype(np.float64)[:, None]
    y = np.zeros((lab.size, len(cls)), dtype=np.float64)
    y[np.arange(lab.size), index] = 1.0
    return y


# --------------------------------------------------------------------------- #
# Raw loaders
# --------------------------------------------------------------------------- #
def _read_exact(f: Any, buf: bytearray) -> int:
    """Fill ``buf`` from ``f`` in chunks (no allocation beyond ``buf``); return the bytes read."""
    view = memoryview(buf)
    got = 0
    while got < len(buf):
        n = f.readinto(view[got : got + (1 << 20)])
        if not n:
            break
        got += n
    return got


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (magic 0x0000080<ndim>, big-endian uint32 dims, payload).

    The payload must be exactly ``prod(dims)`` bytes.  That size is checked against the
    file (or, for ``.gz``, against the most a deflate stream of that size can hold)
    before anything of that size is allocated.  A corrupt or truncated gzip stream, a
    short or long payload or a wrong magic raises a :class:`DataError` naming the file.
    """
    where = _where(path)
    gz = path.name.endswith(".gz")
    head = 4 + 4 * ndim
    try:
        size = path.stat().st_size
        with (gzip.open(path, "rb") if gz else open(path, "rb")) as f:
            header = bytearray(head)
            if _read_exact(f, header) < head:
                raise DataError(f"{where} is too short to be an IDX file ({head}-byte header)")
            magic = int.from_bytes(header[:4], "big")
            if magic != 0x0800 + ndim:
                raise DataError(
                    f"{where} has IDX magic 0x{magic:08x}, expected 0x{0x0800 + ndim:08x} "
                    f"(uint8, {ndim}-D)"
                )
            dims = tuple(int.from_bytes(header[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
            expected = 1
            for d in dims:
                expected *= d  # Python int: no overflow
            shape = "x".join(map(str, dims))
            if not gz and size - head != expected:
                raise DataError(
                    f"{where} holds {size - head} data bytes, header says {expected} ({shape})"
                )
            if gz and expected > _GZIP_MAX_RATIO * size + (1 << 16):
                raise DataError(
                    f"{where}: header says {expected} data bytes ({shape}), more than a "
                    f"{size}-byte gzip file can hold"
                )
            payload = bytearray(expected)
            got = _read_exact(f, payload)
            if got < expected:
                raise DataError(f"{where} holds {got} data bytes, header says {expected} ({shape})")
            if f.read(1):
                raise DataError(
                    f"{where} holds more than {expected} data bytes, header says {expected} ({shape})"
                )
    except DataError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{where} is a corrupt or truncated gzip file: {exc}") from None
    except OSError as exc:
        raise DataError(f"cannot read {where}: {exc.strerror or exc}") from None
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _find_idx_file(folder: Path, name: str) -> Path | None:
    """Locate an IDX file, also accepting ``.gz`` and the ``train-images.idx3-ubyte`` spelling."""
    alt = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", alt, alt + ".gz"):
        if (folder / candidate).is_file():
            return folder / candidate
    return None


def load_mnist_idx(folder: str | PathLike) -> tuple[_Split, _Split]:
    """Load MNIST (or any dataset in the same format) from the original IDX files.

    ``folder`` must hold ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each optionally
    gzip-compressed (``.gz``).  Returns ``((train_images, train_labels),
    (test_images, test_labels))`` with images uint8 of shape ``(n, rows*cols)``
    and labels int64 of shape ``(n,)``.
    """
    folder = Path(folder)
    paths = {key: _find_idx_file(folder, name) for key, name in _IDX_FILES.items()}
    missing = [_IDX_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DataError(f"{folder} lacks MNIST IDX file(s): {', '.join(missing)} (optionally .gz)")
    out = []
    for split in ("train", "test"):
        images = _read_idx(paths[f"{split}_images"], 3)
        labels = _read_idx(paths[f"{split}_labels"], 1)
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{paths[f'{split}_images'].name} has {images.shape[0]} images but "
                f"{paths[f'{split}_labels'].name} has {labels.shape[0]} labels"
            )
        out.append((images.reshape(images.shape[0], -1), labels.astype(np.int64)))
    return out[0], out[1]


# A CIFAR-10 python batch is a pickle, so it is read as untrusted input:
#  1. its size is bounded (a real batch is ~30 MB: 10,000 x 3,072 uint8 + labels + names);
#  2. its opcodes are checked without building anything (_scan_pickle): every length
#     fits in the file, memo indices and tuple nesting are bounded, and opcodes no
#     batch needs (extensions, persistent ids, out-of-band buffers, INST/OBJ/NEWOBJ)
#     are refused -- so the unpickler can neither pre-allocate a length the file does
#     not hold nor resize its memo to an attacker's index nor recurse on a nested key;
#  3. the unpickler resolves the few globals a batch uses to stand-ins
#     (_CifarUnpickler._GLOBALS): arrays are built only from their pickled bytes,
#     after the shape and dtype have been checked against those bytes and against the
#     format's largest array, and no numpy constructor ever sees an attacker's shape.
_CIFAR_MAX_ROWS = 10_000  # images per batch in CIFAR-10
_CIFAR_MAX_ARRAY = _CIFAR_MAX_ROWS * _CIFAR_DIM  # bytes of the largest array a batch holds
_CIFAR_MAX_FILE = 64 << 20  # twice a real batch
_PICKLE_MAX_OPS = 500_000  # a real batch has ~30,000 opcodes (10,000 labels, 10,000 names)
_PICKLE_MAX_NESTING = 32  # tuples in tuples; a real batch nests 3 deep
_PICKLE_DENIED = frozenset(
    {"PERSID", "BINPERSID", "EXT1", "EXT2", "EXT4", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX",
     "BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"}
)
_ALLOWED_DTYPES = frozenset({"b1", "u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"})


class _Refused(Exception):
    """A batch that is not a CIFAR-10 batch; the message says why (short)."""


def _scan_pickle(raw: bytes) -> None:
    """Check a pickle's opcode stream before unpickling it; raise _Refused.

    A small stack machine follows what each opcode pushes and pops, keeping only
    the tuple-nesting depth of each item (hashing a deeply nested tuple key
    recurses in C without a limit).  It allocates nothing the file does not hold.
    """
    stack: list[int] = []  # nesting depth of each item (0: not a tuple/frozenset)
    marks: list[int] = []
    memo: dict[int, int] = {}

    def pop(n: int) -> list[int]:
        if len(stack) - n < (marks[-1] if marks else 0):
            raise _Refused("malformed pickle (stack underflow)")
        items = stack[len(stack) - n :]
        del stack[len(stack) - n :]
        return items

    def pop_mark() -> list[int]:
        if not marks:
            raise _Refused("malformed pickle (no mark)")
        k = marks.pop()
        items = stack[k:]
        del stack[k:]
        return items

    def push(depth: int) -> None:
        if depth > _PICKLE_MAX_NESTING:
            raise _Refused(f"pickle nests tuples more than {_PICKLE_MAX_NESTING} deep")
        stack.append(depth)

    count = 0
    stopped = False
    try:
        for op, arg, pos in pickletools.genops(io.BytesIO(raw)):
            count += 1
            if count > _PICKLE_MAX_OPS:
                raise _Refused(f"pickle has more than {_PICKLE_MAX_OPS} opcodes")
            name = op.name
            if name in _PICKLE_DENIED:
                raise _Refused(f"pickle opcode {name} at byte {pos} is not allowed")
            if name == "MARK":
                marks.append(len(stack))
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                if arg not in memo:
                    raise _Refused(f"pickle reads memo entry {arg} that was never written")
                push(memo[arg])
            elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                index = len(memo) if name == "MEMOIZE" else arg
                if not 0 <= index < _PICKLE_MAX_OPS:
                    raise _Refused(f"pickle memo index {index} is out of range")
                if not stack or (marks and len(stack) == marks[-1]):
                    raise _Refused("malformed pickle (memo of an empty stack)")
                memo[index] = stack[-1]
            elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                push(1 + max(pop(int(name[-1]))))
            elif name in ("TUPLE", "FROZENSET"):
                push(1 + max(pop_mark(), default=0))
            elif name in ("LIST", "DICT"):
                pop_mark()
                push(0)
            elif name in ("APPENDS", "SETITEMS", "ADDITEMS"):
                pop_mark()
                pop(1)
                push(0)
            elif name in ("APPEND", "BUILD"):
                push(pop(2)[0])  # the list / the object built keeps its depth
            elif name == "SETITEM":
                push(pop(3)[0])
            elif name in ("REDUCE", "STACK_GLOBAL"):
                pop(2)
                push(0)
            elif name == "POP":
                if stack and not (marks and len(stack) == marks[-1]):
                    pop(1)
                else:
                    pop_mark()
            elif name == "POP_MARK":
                pop_mark()
            elif name == "DUP":
                push(pop(1)[0])
                push(stack[-1])
            elif name == "STOP":
                pop(1)
                stopped = True
            elif name == "FRAME":
                if arg > len(raw) - pos - 9:
                    raise _Refused(f"pickle frame of {arg} bytes at byte {pos} runs past the file")
            elif name == "PROTO":
                pass
            elif not op.stack_before and len(op.stack_after) == 1:
                push(0)  # a constant, an empty container or a GLOBAL
            else:  # pragma: no cover - every opcode of protocols 0-5 is handled above
                raise _Refused(f"pickle opcode {name} is not allowed")
    except _Refused:
        raise
    except Exception as exc:  # pickletools: truncated data, unknown opcode, bad literal
        raise _Refused(f"malformed pickle ({one_line(exc, 80)})") from None
    if not stopped:
        raise _Refused("malformed pickle (no STOP)")


def _refuse_ndarray_call(*args: Any, **kwargs: Any) -> Any:
    """Stand-in for ``numpy.ndarray``: a batch names it only as _reconstruct's first argument."""
    raise _Refused("numpy.ndarray(shape, dtype) in a pickle is not allowed")


class _DtypeStub:
    """Stand-in for ``numpy.dtype(spec, align, copy)`` plus its pickled state."""

    __slots__ = ("_dtype",)

    def __init__(self, spec: Any = None, align: Any = False, copy: Any = False) -> None:
        if isinstance(spec, bytes):  # Python 2 pickles, read with encoding="bytes"
            spec = spec.decode("latin-1")
        if not (isinstance(spec, str) and spec in _ALLOWED_DTYPES):
            shown = one_line(repr(spec), 20) if isinstance(spec, (str, bytes)) else type(spec).__name__
            raise _Refused(f"dtype {shown} is not allowed (integer arrays only)")
        self._dtype = np.dtype(spec)

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata])
        if not (isinstance(state, tuple) and len(state) in (8, 9)):
            raise _Refused("malformed dtype state")
        order = state[1].decode("latin-1") if isinstance(state[1], bytes) else state[1]
        if order not in ("<", ">", "|", "=") or any(s is not None for s in state[2:5]):
            raise _Refused("dtype state is not that of a plain integer type")
        if order in "<>" and self._dtype.itemsize > 1:
            self._dtype = self._dtype.newbyteorder(order)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype


class _ArrayStub:
    """Stand-in for ``_reconstruct(ndarray, ...)``; its BUILD state makes the array.

    The state is ``([version,] shape, dtype, is_fortran, raw bytes)``.  The array is
    made from the raw bytes only after checking that the shape has at most two
    non-negative dimensions, that shape x itemsize equals the number of raw bytes,
    and that it is no larger than the largest array of the format.
    """

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if self.array is not None:
            raise _Refused("an array is built twice")
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise _Refused("malformed array state")
        shape, dtype, fortran, raw = state
        if not isinstance(dtype, _DtypeStub):
            raise _Refused("array state lacks a numpy dtype")
        if not (
            isinstance(shape, tuple)
            and len(shape) <= 2
            and all(type(d) is int and d >= 0 for d in shape)
        ):
            raise _Refused("array shape must be at most two non-negative integers")
        if not isinstance(raw, bytes):
            raise _Refused(f"array data must be bytes, got {type(raw).__name__}")
        nbytes = dtype.dtype.itemsize
        for d in shape:
            nbytes *= d
        if nbytes > _CIFAR_MAX_ARRAY:
            raise _Refused(
                f"array of shape {shape} ({nbytes} bytes) exceeds the format's "
                f"{_CIFAR_MAX_ROWS} x {_CIFAR_DIM} bytes"
            )
        if nbytes != len(raw):
            raise _Refused(f"array of shape {shape} needs {nbytes} bytes, the pickle holds {len(raw)}")
        flat = np.frombuffer(raw, dtype=dtype.dtype)
        self.array = flat.reshape(shape, order="F" if fortran else "C")


def _reconstruct(subtype: Any, shape: Any = None, dtype: Any = None) -> _ArrayStub:
    """Stand-in for ``numpy.core.multiarray._reconstruct``: an empty array made by BUILD."""
    if subtype is not _refuse_ndarray_call:
        raise _Refused("_reconstruct of anything but numpy.ndarray is not allowed")
    return _ArrayStub()


def _scalar(dtype: Any, raw: Any = None) -> Any:
    """Stand-in for ``numpy.core.multiarray.scalar``: an integer from its bytes."""
    if not isinstance(dtype, _DtypeStub) or not isinstance(raw, bytes):
        raise _Refused("numpy scalar must be an integer dtype and its bytes")
    if len(raw) != dtype.dtype.itemsize:
        raise _Refused("numpy scalar bytes do not match its dtype")
    return np.frombuffer(raw, dtype=dtype.dtype)[0]


def _latin1_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """Stand-in for ``_codecs.encode``: Python 3 pickles bytes as ``encode(str, 'latin1')``."""
    if not (isinstance(text, str) and encoding in ("latin1", "latin-1")):
        raise _Refused("_codecs.encode other than of a str to latin1 is not allowed")
    return text.encode("latin-1")


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler restricted to what the CIFAR-10 batches need (no arbitrary code).

    The globals resolve to stand-ins (see above); anything else is refused.  Use
    it on a stream that :func:`_scan_pickle` has passed.
    """

    _GLOBALS = {
        ("numpy", "ndarray"): _refuse_ndarray_call,
        ("numpy", "dtype"): _DtypeStub,
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy.core.multiarray", "scalar"): _scalar,
        ("numpy._core.multiarray", "scalar"): _scalar,
        ("_codecs", "encode"): _latin1_encode,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._GLOBALS[(module, name)]
        except (KeyError, TypeError):
            shown = one_line(f"{module}.{name}", 60)
            raise _Refused(f"global {shown} is not allowed") from None


def _cifar_labels(labels: Any, n: int) -> np.ndarray:
    """``b"labels"``: n integers in 0-9 (a list, or a 1-D integer array); raise _Refused."""
    if isinstance(labels, _ArrayStub):
        labels = labels.array
    if isinstance(labels, np.ndarray):
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise _Refused(f"b'labels' must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        bad = np.flatnonzero((labels < 0) | (labels > 9))
        if bad.size:
            raise _Refused(f"b'labels'[{int(bad[0])}] is {int(labels[bad[0]])}, not a class 0-9")
        values = labels
    elif isinstance(labels, (list, tuple)):
        for i, v in enumerate(labels):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise _Refused(f"b'labels'[{i}] is a {type(v).__name__}, not an integer")
            if not 0 <= v <= 9:
                raise _Refused(f"b'labels'[{i}] is {one_line(v, 20)}, not a class 0-9")
        values = labels
    else:
        raise _Refused(f"b'labels' must be a list of integers, got {type(labels).__name__}")
    if len(values) != n:
        raise _Refused(f"b'labels' has {len(values)} entries for {n} images")
    return np.array(values, dtype=np.int64)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: images uint8 ``(n, 3072)``, labels int64 ``(n,)``, n <= 10,000."""
    where = _where(path)
    try:
        size = path.stat().st_size
        if size > _CIFAR_MAX_FILE:
            raise _Refused(f"{size} bytes is more than a batch holds (~31 MB)")
        with open(path, "rb") as f:
            raw = f.read(size + 1)
        if len(raw) > size:
            raise _Refused("the file grew while it was read")
    except OSError as exc:
        raise DataError(f"cannot read {where}: {exc.strerror or exc}") from None
    except _Refused as exc:
        raise DataError(f"{where} is not a CIFAR-10 python batch: {exc}") from None
    try:
        _scan_pickle(raw)
        batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
        if not isinstance(batch, dict):
            raise _Refused(f"expected a dict, got {type(batch).__name__}")
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        if data is None or labels is None:
            raise _Refused("it lacks the b'data' or b'labels' entry")
        if isinstance(data, _ArrayStub):
            data = data.array
        if not isinstance(data, np.ndarray):
            raise _Refused(
                f"b'data' must be a uint8 array of shape (n, {_CIFAR_DIM}), "
                f"got a {type(data).__name__}"
            )
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_DIM:
            raise _Refused(
                f"b'data' must be uint8 of shape (n, {_CIFAR_DIM}), got {data.dtype} {data.shape}"
            )
        labels = _cifar_labels(labels, data.shape[0])
    except _Refused as exc:
        raise DataError(f"{where} is not a CIFAR-10 python batch: {exc}") from None
    except Exception as exc:  # the unpickler's own errors on a malformed stream
        reason = one_line(f"{type(exc).__name__}: {exc}", 100)
        raise DataError(f"{where} is not a CIFAR-10 python batch: {reason}") from None
    return np.array(data), labels


def _cifar_root(folder: Path) -> Path:
    """Return the directory holding the CIFAR-10 batches (folder or its standard subfolder)."""
    for root in (folder, folder / _CIFAR_SUBDIR):
        if all((root / n).is_file() for n in (*_CIFAR_TRAIN, _CIFAR_TEST)):
            return root
    root = folder / _CIFAR_SUBDIR if (folder / _CIFAR_SUBDIR).is_dir() else folder
    missing = [n for n in (*_CIFAR_TRAIN, _CIFAR_TEST) if not (root / n).is_file()]
    raise DataError(f"{root} lacks CIFAR-10 python batch(es): {', '.join(missing)}")


def load_cifar10(folder: str | PathLike) -> tuple[_Split, _Split]:
    """Load CIFAR-10 from the python batches ``data_batch_1..5`` and ``test_batch``.

    The batches may sit in ``folder`` or in ``folder/cifar-10-batches-py``.  Each
    is a pickled dict with ``b"data"`` (uint8, ``(n, 3072)``, channel-major RGB,
    ``n <= 10,000``) and ``b"labels"`` (``n`` integers in 0-9).  The pickles are
    read as untrusted input: no code runs, and what a batch can make the loader
    allocate is bounded by the file's size and the format's shapes (see
    ``_scan_pickle`` and ``_CifarUnpickler``).  Returns ``((train_images, train_labels), (test_images,
    test_labels))`` with images uint8 ``(n, 3072)`` and labels int64 ``(n,)``.
    """
    root = _cifar_root(Path(folder))
    train = [_read_cifar_batch(root / n) for n in _CIFAR_TRAIN]
    test = _read_cifar_batch(root / _CIFAR_TEST)
    train_images = np.concatenate([b[0] for b in train])
    train_labels = np.concatenate([b[1] for b in train])
    return (train_images, train_labels), test


@lru_cache(maxsize=1)
def _bundled_mnist() -> tuple[np.ndarray, np.ndarray]:
    """Load the bundled 5k MNIST subset (installed package ``ngdref_data`` or repo ``data/``)."""
    sources: list[Any] = []
    try:
        from importlib.resources import files

        sources.append(files("ngdref_data") / _BUNDLED_MNIST)
    except ModuleNotFoundError:
        pass
    sources.append(Path(__file__).resolve().parents[1] / "data" / _BUNDLED_MNIST)
    for res in sources:
        if not res.is_file():
            continue
        try:
            with res.open("rb") as f, np.load(f, allow_pickle=False) as z:
                images, labels = z["images"], z["labels"]
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"cannot read bundled MNIST subset {res}: {exc}") from None
        if images.dtype != np.uint8 or images.ndim != 2 or labels.shape != images.shape[:1]:
            raise DataError(
                f"bundled MNIST subset {res} is malformed; regenerate it with data/extract_mnist.py"
            )
        images.setflags(write=False)
        labels = labels.astype(np.int64)
        labels.setflags(write=False)
        return images, labels
    raise DataError(
        f"bundled MNIST subset {_BUNDLED_MNIST} not found; regenerate it with data/extract_mnist.py"
    )


# --------------------------------------------------------------------------- #
# Sampling
# --------------------------------------------------------------------------- #
def _balanced_counts(n: int, k: int) -> list[int]:
    """Split ``n`` as evenly as possible into ``k`` parts, remainder to the first parts."""
    base, rem = divmod(n, k)
    return [base + (i < rem) for i in range(k)]


def _check_count(value: Any, name: str, minimum: int) -> int:
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if not is_int or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_classes_exist(classes: tuple[int, ...], labels: np.ndarray, name: str) -> None:
    available = np.unique(labels)
    for c in classes:
        if c not in available:
            shown = ", ".join(str(int(a)) for a in available[:20])
            if available.size > 20:
                shown += f", ... ({available.size} classes)"
            raise DataError(f"class {c} does not exist in {name} (available classes: {shown})")


def _sample_indices(
    labels: np.ndarray,
    classes: tuple[int, ...],
    counts: list[int],
    rng: np.random.Generator,
    name: str,
    what: str,
) -> list[np.ndarray]:
    """Per class ``classes[k]``, draw ``counts[k]`` distinct random indices of that class."""
    picked = []
    for c, n_c in zip(classes, counts):
        pool = np.flatnonzero(labels == c)
        if n_c > pool.size:
            fit = min(int(np.sum(labels == k)) for k in classes) * len(classes)
            option = "--n-test" if "test" in what else "--n-train" if "train" in what else "--n-train + --n-test"
            raise DataError(f"class {c} has {pool.size} {what} in {name}; requested {n_c}: use {option} ≤ {fit} "
                            f"for classes {','.join(str(k) for k in classes)}, or --data PATH for a larger set")
        picked.append(rng.permutation(pool)[:n_c])
    return picked


def _finish(
    x_train: np.ndarray,
    labels_train: np.ndarray,
    x_test: np.ndarray,
    labels_test: np.ndarray,
    classes: tuple[int, ...],
    name: str,
) -> Dataset:
    """Normalise, check Assumption 2 on the training inputs, encode targets."""
    x_train = normalise_rows(x_train)
    x_test = normalise_rows(x_test)
    validate_inputs(x_train)
    return Dataset(
        x_train=x_train,
        y_train=encode_targets(labels_train, classes),
        x_test=x_test,
        y_test=encode_targets(labels_test, classes),
        labels_train=labels_train.astype(np.int64),
        labels_test=labels_test.astype(np.int64),
        classes=classes,
        name=name,
    )


def _from_pools(
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray] | None,
    classes: tuple[int, ...],
    n_train: int,
    n_test: int,
    rng: np.random.Generator,
    name: str,
) -> Dataset:
    """Class-balanced, seeded, disjoint train/test draw from raw image pools.

    With ``test is None`` both splits come from the one pool without overlap;
    otherwise the training samples come from ``train`` and the test samples
    from ``test``.
    """
    images, labels = train
    _check_classes_exist(classes, labels, name)
    c_train = _balanced_counts(n_train, len(classes))
    c_test = _balanced_counts(n_test, len(classes))
    if test is None:
        # one pool: draw train + test together per class, so the splits are disjoint
        for c, a, b in zip(classes, c_train, c_test):
            available = int(np.sum(labels == c))
            if a + b > available:
                fit = min(int(np.sum(labels == k)) for k in classes) * len(classes)
                remedy = f"--n-train ≤ {fit - n_test}" if n_test < fit else f"--n-train + --n-test ≤ {fit}"
                raise DataError(
                    f"class {c} has {available} samples in {name}; "
                    f"requested {a + b} ({a} train + {b} test): use {remedy} for classes "
                    f"{','.join(str(k) for k in classes)}, or --data PATH for a larger set"
                )
        both = [a + b for a, b in zip(c_train, c_test)]
        picked = _sample_indices(labels, classes, both, rng, name, "samples")
        tr = [idx[:a] for idx, a in zip(picked, c_train)]
        te = [idx[a:] for idx, a in zip(picked, c_train)]
        test_images, test_labels = images, labels
    else:
        test_images, test_labels = test
        tr = _sample_indices(labels, classes, c_train, rng, name, "training samples")
        te = _sample_indices(test_labels, classes, c_test, rng, name, "test samples")
    idx_tr = rng.permutation(np.concatenate(tr))
    idx_te = rng.permutation(np.concatenate(te))
    return _finish(
        images[idx_tr].astype(np.float64),
        labels[idx_tr],
        test_images[idx_te].astype(np.float64),
        test_labels[idx_te],
        classes,
        name,
    )


def _gaussian(
    classes: tuple[int, ...], n_train: int, n_test: int, input_dim: int, rng: np.random.Generator
) -> Dataset:
    """Synthetic inputs x_i ~ N(0, 1) (Section C.3.1), normalised; random balanced labels."""
    x_train = rng.standard_normal((n_train, input_dim))
    x_test = rng.standard_normal((n_test, input_dim))
    labels = []
    for n in (n_train, n_test):
        lab = np.repeat(np.asarray(classes, dtype=np.int64), _balanced_counts(n, len(classes)))
        labels.append(rng.permutation(lab))
    return _finish(x_train, labels[0], x_test, labels[1], classes, "gaussian")


def load_dataset(
    source: str | PathLike = "mnist",
    classes: Any = (0, 7),
    n_train: int = 100,
    n_test: int = 100,
    seed: int | None = 0,
    input_dim: int = 100,
) -> Dataset:
    """Build a normalised, class-balanced train/test set.

    Parameters
    ----------
    source
        ``"mnist"``: the bundled 5,000-image MNIST training subset (500 per
        class); train and test are disjoint draws from it.  ``"gaussian"``:
        ``x_i ~ N(0, 1)`` in ``input_dim`` dimensions (Section C.3.1) with labels
        drawn at random from ``classes``.  Anything else is a folder holding
        the MNIST IDX files or the CIFAR-10 python batches; training samples
        are drawn from the training files, test samples from the test files.
    classes
        At least two distinct class labels; their order fixes the target
        encoding (see :func:`encode_targets`).  The default (0, 7) is the
        two-class MNIST task of Figure 1.
    n_train, n_test
        Numbers of samples N and N', split as evenly as possible across the
        classes (the remainder goes to the first classes).
    seed
        Seed for ``np.random.default_rng``; equal seeds give identical datasets.
    input_dim
        Input dimension M0 for ``"gaussian"`` (ignored otherwise).

    Every input row is flattened, cast to float64 and scaled to ``||x||_2 = 1``;
    the training rows are checked to be distinct (Assumption 2, Section 3.1).
    """
    cls = _check_classes(classes)
    n_train = _check_count(n_train, "n_train", 1)
    n_test = _check_count(n_test, "n_test", 0)
    rng = np.random.default_rng(seed)

    if isinstance(source, str) and source == "mnist":
        return _from_pools(_bundled_mnist(), None, cls, n_train, n_test, rng, "mnist")
    if isinstance(source, str) and source == "gaussian":
        input_dim = _check_count(input_dim, "input_dim", 1)
        return _gaussian(cls, n_train, n_test, input_dim, rng)

    folder = Path(source)
    expected = (
        "'mnist', 'gaussian', or a folder with MNIST IDX files (train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images/labels-..., .gz or not) or CIFAR-10 "
        f"python batches (data_batch_1..5, test_batch, maybe in {_CIFAR_SUBDIR}/)"
    )
    if not folder.is_dir():
        raise DataError(f"unknown data source {_where(Path(str(source)))!r}: expected {expected}")
    name = str(source)
    if any(_find_idx_file(folder, n) for n in _IDX_FILES.values()):
        train, test = load_mnist_idx(folder)
    elif any(
        (root / n).is_file()
        for root in (folder, folder / _CIFAR_SUBDIR)
        for n in (*_CIFAR_TRAIN, _CIFAR_TEST)
    ):
        train, test = load_cifar10(folder)
    else:
        raise DataError(f"no recognisable data in {_where(folder)}: expected {expected}")
    return _from_pools(train, test, cls, n_train, n_test, rng, name)


# --------------------------------------------------------------------------- #
# Forster transformation
# --------------------------------------------------------------------------- #
def forster_transform(
    x: Any, tol: float = 1e-12, max_iter: int = 10_000, *, return_map: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Forster transformation of ``N >= M0`` inputs in general position.

    Finds an invertible linear map such that the transformed, renormalised rows
    ``xbar_n = x_n B / ||x_n B||`` satisfy ``Xbar^T Xbar = (N / M0) I`` while
    ``||xbar_n||_2 = 1`` (Forster 2002).  Zhang, Martens & Grosse (2019) use it
    to make K-FAC converge fast; in the paper it makes the first-layer factor
    isotropic when ``M0 < N`` so that ``Theta_bar = alpha I`` with
    ``alpha = N (L - 1) + M0`` (Section B.3.1(ii), Eqs. S.110-S.111).

    The standard fixed-point iteration ``X <- normalise_rows(X (X^T X)^(-1/2))``
    is run until ``||(M0/N) X^T X - I||_2 <= tol``.  It is carried out on the
    accumulated map ``B`` (``X = normalise_rows(x B)``), so the result is
    exactly a linear image of the input and round-off cannot mask a failure.

    Parameters
    ----------
    x
        ``(N, M0)`` inputs with no zero rows (they are normalised first).
    tol
        Tolerance on the spectral norm of ``(M0/N) X^T X - I``.
    max_iter
        Maximum number of iterations.
    return_map
        Also return the ``(M0, M0)`` matrix ``B``; new inputs (e.g. test
        samples) are transformed consistently by ``normalise_rows(x_new @ B)``.

    Raises :class:`DataError` if ``N < M0`` (the transform is then unnecessary:
    Section B.3.1(i) covers ``M0 >= N``), if ``x`` is rank-deficient, or if the
    iteration does not converge (points not in general position, e.g. more
    than ``k N / M0`` of them in some ``k``-dimensional subspace).
    """
    x0 = normalise_rows(x)
    n, m = x0.shape
    if n < m:
        raise DataError(
            f"Forster transform needs N >= M0, got N={n} < M0={m}; for M0 >= N it is "
            "unnecessary (Section B.3.1(i))"
        )
    if not (tol > 0):
        raise DataError(f"tol must be positive, got {tol!r}")
    max_iter = _check_count(max_iter, "max_iter", 1)
    eps = np.finfo(np.float64).eps
    b = np.eye(m)
    err = np.inf
    for _ in range(max_iter):
        xb = normalise_rows(x0 @ b)
        w, v = np.linalg.eigh(xb.T @ xb)
        if w[0] <= m * eps * w[-1]:
            rank = int(np.sum(w > m * eps * w[-1]))
            raise DataError(
                f"Forster transform needs inputs spanning R^{m}, but they have rank {rank}"
            )
        err = float(np.max(np.abs(w * (m / n) - 1.0)))
        if err <= tol:
            return (xb, b) if return_map else xb
        b = b @ ((v * w**-0.5) @ v.T)
        b /= np.max(np.abs(b))
        s = np.linalg.svd(b, compute_uv=False)
        if s[-1] <= 1e-12 * s[0]:
            raise DataError(
                "Forster transform diverged (map condition number > 1e12): inputs are not in "
                "general position"
            )
    raise DataError(
        f"Forster transform did not converge in {max_iter} iterations "
        f"(||(M0/N) X^T X - I|| = {err:.2e} > tol {tol:.0e}); inputs may not be in general position"
    )
