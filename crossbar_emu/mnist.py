"""Locate, verify, load and download the MNIST data set.

The data are the four original IDX files, gzip-compressed, as published on the MNIST
database page by Yann LeCun, Corinna Cortes and Christopher J.C. Burges. MNIST is
distributed under CC BY-SA 3.0. Every file is checked against its published SHA-256
before it is parsed, and a download is renamed into place only after it passes the check.

The module logs through ``logging.getLogger(__name__)``. It never prints and never
configures logging.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import struct
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

ENV_VAR = "CROSSBAR_EMU_DATA"

_DEFAULT_SUBDIR = Path("data") / "mnist"
_FETCH_COMMAND = "crossbar-emu data fetch"
_HASH_CHUNK_BYTES = 1 << 20
_DOWNLOAD_CHUNK_BYTES = 1 << 16
_USER_AGENT = "crossbar-emu (MNIST download)"

# IDX header: a big-endian 32-bit magic number 0x0000TTNN, where TT is the data type
# code and NN the number of dimensions, then one big-endian 32-bit size per dimension.
_IDX_TYPE_UBYTE = 0x08
IDX_MAGIC_LABELS = 0x00000801
IDX_MAGIC_IMAGES = 0x00000803

IMAGE_ROWS = 28
IMAGE_COLUMNS = 28
NUM_CLASSES = 10


class DataError(Exception):
    """Missing, corrupt or malformed data. The message is a complete sentence for the user."""


@dataclass(frozen=True)
class MnistFile:
    """Published name, size in bytes and checksums of one MNIST file."""

    name: str
    size: int
    md5: str
    sha256: str


MNIST_FILES: tuple[MnistFile, ...] = (
    MnistFile(
        name="train-images-idx3-ubyte.gz",
        size=9912422,
        md5="f68b3c2dcbeaaa9fbdd348bbdeb94873",
        sha256="440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    MnistFile(
        name="train-labels-idx1-ubyte.gz",
        size=28881,
        md5="d53e105ee54ea40749a09fcbcd1e9432",
        sha256="3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    MnistFile(
        name="t10k-images-idx3-ubyte.gz",
        size=1648877,
        md5="9fb629c4189551a2d022fa330f9573f3",
        sha256="8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    MnistFile(
        name="t10k-labels-idx1-ubyte.gz",
        size=4542,
        md5="ec29112dd5afa0611ce80d1b7f02629c",
        sha256="f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
)

DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# Each split: its name, the images file, the labels file and the published sample count.
_SPLITS = (
    ("train", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    ("test", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
)


@dataclass(frozen=True, eq=False)
class MnistData:
    """MNIST images flattened to 784 float32 pixels in [0, 1], and int64 labels 0 to 9."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    data_dir: Path


# ---------------------------------------------------------------------------
# Locating and verifying the files
# ---------------------------------------------------------------------------


def resolve_data_dir(cli_value: str | os.PathLike[str] | None) -> Path:
    """Return the MNIST data directory, which need not exist yet.

    The order of precedence is ``cli_value`` (the ``--data-dir`` option), then the
    CROSSBAR_EMU_DATA environment variable, then ``data/mnist`` under the current
    working directory. An empty string counts as unset, and ``~`` is expanded.
    """
    if cli_value is not None and os.fspath(cli_value) != "":
        data_dir = Path(cli_value).expanduser()
        logger.debug("MNIST data directory %s (from --data-dir)", data_dir)
        return data_dir

    env_value = os.environ.get(ENV_VAR, "")
    if env_value != "":
        data_dir = Path(env_value).expanduser()
        logger.debug("MNIST data directory %s (from %s)", data_dir, ENV_VAR)
        return data_dir

    data_dir = Path.cwd() / _DEFAULT_SUBDIR
    logger.debug("MNIST data directory %s (default under the working directory)", data_dir)
    return data_dir


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _how_to_get_files(directory: Path) -> str:
    return (
        f"Run `{_FETCH_COMMAND}` to download the MNIST files, or copy the four files into "
        f"{directory}. To use another directory, pass --data-dir or set {ENV_VAR}."
    )


def verify_file(path: str | os.PathLike[str], record: MnistFile) -> None:
    """Raise DataError unless the file at ``path`` exists and has ``record.sha256``.

    The message names the file, the expected checksum (and the actual one for a
    mismatch), the directory that was searched and how to get the file.
    """
    path = Path(path)
    directory = path.parent.absolute()

    if not path.is_file():
        raise DataError(
            f"The MNIST file {record.name} (sha256 {record.sha256}) was not found in "
            f"{directory}. {_how_to_get_files(directory)}"
        )

    try:
        actual_sha256 = _sha256_of_file(path)
        actual_size = path.stat().st_size
    except OSError as error:
        raise DataError(
            f"The MNIST file {record.name} in {directory} could not be read: {error}. "
            f"Check its permissions, or replace it: {_how_to_get_files(directory)}"
        ) from error

    if actual_sha256 != record.sha256:
        size_note = ""
        if actual_size != record.size:
            size_note = f" Its size is {actual_size} bytes instead of {record.size}."
        raise DataError(
            f"The MNIST file {record.name} in {directory} is corrupt or a different file: "
            f"its sha256 is {actual_sha256} but the expected sha256 is {record.sha256}."
            f"{size_note} Delete it and run `{_FETCH_COMMAND}`, or replace it with the "
            f"original file."
        )


# ---------------------------------------------------------------------------
# Parsing and loading
# ---------------------------------------------------------------------------


def parse_idx(raw_bytes: bytes, name: str, expected_magic: int | None = None) -> np.ndarray:
    """Parse uncompressed IDX data of unsigned bytes into a uint8 array of its shape.

    ``name`` is the file name used in error messages. If ``expected_magic`` is given,
    the magic number must equal it, for example IDX_MAGIC_IMAGES. The payload must hold
    exactly the product of the dimension sizes in bytes. Any violation raises DataError.
    The returned array is a read-only view of ``raw_bytes``.
    """
    if len(raw_bytes) < 4:
        raise DataError(
            f"{name} is not a valid IDX file: it has {len(raw_bytes)} bytes, fewer than "
            f"the 4 bytes of the magic number."
        )

    (magic,) = struct.unpack(">I", raw_bytes[:4])
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"{name} is not a valid IDX file for this use: its magic number is "
            f"0x{magic:08X} but 0x{expected_magic:08X} was expected."
        )

    type_code = (magic >> 8) & 0xFF
    num_dims = magic & 0xFF
    if magic >> 16 != 0 or num_dims == 0:
        raise DataError(
            f"{name} is not a valid IDX file: its magic number 0x{magic:08X} does not have "
            f"the form 0x0000TTNN with at least one dimension."
        )
    if type_code != _IDX_TYPE_UBYTE:
        raise DataError(
            f"{name} has IDX data type code 0x{type_code:02X}, which is not supported. "
            f"Only unsigned bytes (0x08), the type of all MNIST files, are supported."
        )

    header_bytes = 4 + 4 * num_dims
    if len(raw_bytes) < header_bytes:
        raise DataError(
            f"{name} is not a valid IDX file: the header of {num_dims} dimensions needs "
            f"{header_bytes} bytes but the file has {len(raw_bytes)}."
        )
    shape = struct.unpack(f">{num_dims}I", raw_bytes[4:header_bytes])

    expected_payload = 1
    for size in shape:
        expected_payload *= size
    actual_payload = len(raw_bytes) - header_bytes
    if actual_payload != expected_payload:
        kind = "truncated" if actual_payload < expected_payload else "longer than its header says"
        raise DataError(
            f"{name} is not a valid IDX file: it is {kind}, with {actual_payload} data "
            f"bytes where the dimensions {shape} need {expected_payload}."
        )

    array = np.frombuffer(raw_bytes, dtype=np.uint8, count=expected_payload, offset=header_bytes)
    return array.reshape(shape)


def _read_idx_gz(path: Path, expected_magic: int) -> np.ndarray:
    try:
        raw_bytes = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as error:
        # gzip.BadGzipFile is a subclass of OSError.
        raise DataError(
            f"{path.name} in {path.parent.absolute()} could not be decompressed: {error}. "
            f"Delete it and run `{_FETCH_COMMAND}`."
        ) from error
    return parse_idx(raw_bytes, path.name, expected_magic)


def _load_split(
    data_dir: Path, images_name: str, labels_name: str, expected_count: int
) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx_gz(data_dir / images_name, IDX_MAGIC_IMAGES)
    labels = _read_idx_gz(data_dir / labels_name, IDX_MAGIC_LABELS)

    if images.shape[1:] != (IMAGE_ROWS, IMAGE_COLUMNS):
        raise DataError(
            f"{images_name} contains images of {images.shape[1]}x{images.shape[2]} pixels, "
            f"but MNIST images are {IMAGE_ROWS}x{IMAGE_COLUMNS}."
        )
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_name} contains {images.shape[0]} images but {labels_name} contains "
            f"{labels.shape[0]} labels, but the two counts must be equal."
        )
    if images.shape[0] != expected_count:
        raise DataError(
            f"{images_name} contains {images.shape[0]} images, but the MNIST file has "
            f"{expected_count}."
        )
    if labels.size > 0 and int(labels.max()) >= NUM_CLASSES:
        raise DataError(
            f"{labels_name} contains the label {int(labels.max())}, but MNIST labels are "
            f"0 to {NUM_CLASSES - 1}."
        )

    pixels = images.reshape(images.shape[0], IMAGE_ROWS * IMAGE_COLUMNS).astype(np.float32)
    pixels /= np.float32(255.0)
    return pixels, labels.astype(np.int64)


def load_mnist(data_dir: str | os.PathLike[str]) -> MnistData:
    """Verify the four MNIST files in ``data_dir`` and load them as arrays.

    Raises DataError for a missing, corrupt or malformed file.
    """
    data_dir = Path(data_dir)
    for record in MNIST_FILES:
        verify_file(data_dir / record.name, record)

    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, images_name, labels_name, expected_count in _SPLITS:
        arrays[split] = _load_split(data_dir, images_name, labels_name, expected_count)
        logger.debug("loaded %d %s samples from %s", expected_count, split, data_dir)

    return MnistData(
        train_images=arrays["train"][0],
        train_labels=arrays["train"][1],
        test_images=arrays["test"][0],
        test_labels=arrays["test"][1],
        data_dir=data_dir,
    )


# ---------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------

ProgressCallback = Callable[[str, int, int], None]


class _MirrorError(Exception):
    """Download failure at one URL. The message is a short reason such as "HTTP 404"."""


def _describe_url_error(error: urllib.error.URLError) -> str:
    reason = error.reason
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "timed out"
    return str(reason)


def _download_to(
    url: str,
    part_path: Path,
    record: MnistFile,
    timeout: float,
    progress: ProgressCallback | None,
) -> str:
    """Stream ``url`` into ``part_path`` and return the SHA-256 of the bytes received.

    Raises _MirrorError for a failure of the server or the network, and DataError if
    ``part_path`` cannot be written. A response longer than ``record.size`` is cut off
    with _MirrorError, so a wrong server cannot fill the disk.
    """
    try:
        request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        raise _MirrorError(f"HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise _MirrorError(_describe_url_error(error)) from error
    except (OSError, HTTPException, ValueError) as error:
        # Request and urlopen raise ValueError for a malformed URL or an unknown scheme.
        raise _MirrorError(str(error) or type(error).__name__) from error

    digest = hashlib.sha256()
    bytes_done = 0
    with response:
        try:
            part_file = open(part_path, "wb")
        except OSError as error:
            raise DataError(
                f"The download file {part_path} could not be created: {error}. Check the "
                f"permissions of {part_path.parent}."
            ) from error
        with part_file:
            if progress is not None:
                progress(record.name, 0, record.size)
            while True:
                try:
                    chunk = response.read(_DOWNLOAD_CHUNK_BYTES)
                except (OSError, HTTPException) as error:
                    raise _MirrorError(
                        f"download failed after {bytes_done} bytes: "
                        f"{str(error) or type(error).__name__}"
                    ) from error
                if not chunk:
                    break

                bytes_done += len(chunk)
                if bytes_done > record.size:
                    raise _MirrorError(
                        f"response is longer than the expected {record.size} bytes"
                    )
                digest.update(chunk)
                try:
                    part_file.write(chunk)
                except OSError as error:
                    raise DataError(
                        f"Writing the download file {part_path} failed: {error}. Check the "
                        f"free space and permissions of {part_path.parent}."
                    ) from error
                if progress is not None:
                    progress(record.name, bytes_done, record.size)

    return digest.hexdigest()


def _fetch_one(
    record: MnistFile,
    data_dir: Path,
    base_urls: tuple[str, ...],
    timeout: float,
    progress: ProgressCallback | None,
) -> Path:
    """Download one file from the first mirror that delivers a valid copy.

    The download goes to ``<name>.part`` and replaces the target only after its
    checksum matches, so an existing file is never replaced by an invalid one.
    """
    target = data_dir / record.name
    part_path = data_dir / (record.name + ".part")
    failures: list[str] = []

    for base_url in base_urls:
        if not base_url.endswith("/"):
            base_url += "/"
        url = base_url + record.name
        logger.info("downloading %s from %s", record.name, url)

        try:
            actual_sha256 = _download_to(url, part_path, record, timeout, progress)
        except _MirrorError as error:
            part_path.unlink(missing_ok=True)
            logger.warning("download of %s failed: %s", url, error)
            failures.append(f"{url}: {error}")
            continue
        except BaseException:
            # A local write failure (DataError) or an interrupt ends the whole fetch, so
            # the partial file is removed before the exception propagates.
            part_path.unlink(missing_ok=True)
            raise

        if actual_sha256 != record.sha256:
            part_path.unlink(missing_ok=True)
            logger.warning(
                "rejected %s: checksum mismatch, got sha256 %s but expected %s",
                url,
                actual_sha256,
                record.sha256,
            )
            failures.append(f"{url}: checksum mismatch: got {actual_sha256}")
            continue

        try:
            os.replace(part_path, target)
        except OSError as error:
            part_path.unlink(missing_ok=True)
            raise DataError(
                f"The verified download of {record.name} could not be moved to {target}: "
                f"{error}. Check that {target} is a regular file or absent and that "
                f"{data_dir} is writable."
            ) from error
        logger.info("downloaded %s from %s and verified its sha256", record.name, url)
        return target

    tried = "\n".join(f"  {failure}" for failure in failures)
    raise DataError(
        f"The MNIST file {record.name} (sha256 {record.sha256}) could not be downloaded "
        f"from any mirror. URLs tried:\n{tried}\n"
        f"Download the four MNIST files by hand and put them in {data_dir}, or put them "
        f"in another directory and pass it with --data-dir or set {ENV_VAR} to it."
    )


def _is_valid_file(path: Path, record: MnistFile) -> bool:
    if not path.is_file():
        return False
    try:
        return _sha256_of_file(path) == record.sha256
    except OSError as error:
        logger.warning("could not read %s, so it will be downloaded again: %s", path, error)
        return False


def fetch_mnist(
    data_dir: str | os.PathLike[str],
    base_urls: Iterable[str] = DEFAULT_MIRRORS,
    timeout: float = 30.0,
    progress: ProgressCallback | None = None,
) -> list[Path]:
    """Download the MNIST files that are missing or invalid in ``data_dir``.

    Creates ``data_dir`` if needed. A file whose checksum already matches is left
    untouched. Any other file is downloaded from ``base_urls`` in order, with the file
    name appended to each base URL, until one copy matches the published SHA-256.
    ``timeout`` is the socket timeout in seconds for each connection and read.
    ``progress``, if given, is called as ``progress(file_name, bytes_done, bytes_total)``,
    where ``bytes_total`` is the published size and ``bytes_done`` restarts at 0 for
    each mirror tried.

    Returns the paths of all four files in the order of MNIST_FILES. Raises DataError,
    naming every URL tried and its error, when no mirror delivers a valid copy of a file.
    Files fetched before that error stay in place.
    """
    if isinstance(base_urls, str):
        base_urls = (base_urls,)
    base_urls = tuple(base_urls)
    if not base_urls:
        raise ValueError("base_urls must contain at least one URL")

    data_dir = Path(data_dir).expanduser().absolute()
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"The MNIST data directory {data_dir} could not be created: {error}. Choose "
            f"another directory with --data-dir or {ENV_VAR}."
        ) from error

    paths: list[Path] = []
    for record in MNIST_FILES:
        target = data_dir / record.name
        if _is_valid_file(target, record):
            logger.info("%s is already present and valid in %s", record.name, data_dir)
            paths.append(target)
            continue
        if target.exists():
            logger.warning(
                "%s in %s is invalid and will be downloaded again", record.name, data_dir
            )
        paths.append(_fetch_one(record, data_dir, base_urls, timeout, progress))
    return paths
