"""Tests of crossbar_emu.mnist: verifying, parsing, loading and downloading MNIST.

The real-data tests read the four MNIST files from the directory in CROSSBAR_EMU_DATA
and are skipped when it is unset or incomplete. The download tests start their own HTTP
servers on 127.0.0.1 and contact no other host.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import logging
import os
import shutil
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from crossbar_emu import mnist
from crossbar_emu.mnist import DataError, MnistFile

RECORDS = {record.name: record for record in mnist.MNIST_FILES}
TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"

# Published class counts of MNIST, digits 0 to 9.
TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """Directory of the real MNIST files, or a skip if it is not configured."""
    value = os.environ.get(mnist.ENV_VAR)
    if not value:
        pytest.skip(f"{mnist.ENV_VAR} is not set, so the real MNIST files cannot be found")
    directory = Path(value)
    missing = [name for name in RECORDS if not (directory / name).is_file()]
    if missing:
        pytest.skip(f"MNIST files missing from {directory}: {', '.join(missing)}")
    return directory


@pytest.fixture(scope="module")
def real_data(real_data_dir: Path) -> mnist.MnistData:
    return mnist.load_mnist(real_data_dir)


def link_files(source_dir: Path, target_dir: Path, names) -> None:
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        (target_dir / name).symlink_to(source_dir / name)


def write_flipped_copy(source: Path, target: Path, offset: int = 1000) -> None:
    """Write a copy of ``source`` with the byte at ``offset`` inverted."""
    content = bytearray(source.read_bytes())
    content[offset] ^= 0xFF
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(bytes(content))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def idx_bytes(magic: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(f">I{len(shape)}I", magic, *shape) + payload


def free_loopback_port() -> int:
    """Return a port on 127.0.0.1 that was free a moment ago and has no listener now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Mirror:
    """Local HTTP server that serves one directory and records the paths requested."""

    base_url: str
    request_paths: list[str]


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.request_paths.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args) -> None:
        pass  # keeps the test output free of access logs


@pytest.fixture
def start_mirror(request) -> Callable[[Path], Mirror]:
    """Factory that starts a ThreadingHTTPServer on 127.0.0.1 serving a directory."""
    servers: list[tuple[http.server.ThreadingHTTPServer, threading.Thread]] = []

    def stop_all() -> None:
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    request.addfinalizer(stop_all)

    def start(directory: Path) -> Mirror:
        directory.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(_RecordingHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.request_paths = []
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        servers.append((server, thread))
        port = server.server_address[1]
        return Mirror(base_url=f"http://127.0.0.1:{port}/", request_paths=server.request_paths)

    return start


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch) -> None:
    """Remove proxy settings so that urllib connects to the local servers directly."""
    for scheme in ("http", "https", "all"):
        monkeypatch.delenv(f"{scheme}_proxy", raising=False)
        monkeypatch.delenv(f"{scheme.upper()}_PROXY", raising=False)


# ---------------------------------------------------------------------------
# Real files
# ---------------------------------------------------------------------------


@pytest.mark.mnist
def test_checksum_table_matches_real_files(real_data_dir):
    for record in mnist.MNIST_FILES:
        path = real_data_dir / record.name
        mnist.verify_file(path, record)
        assert path.stat().st_size == record.size, record.name
        assert hashlib.md5(path.read_bytes()).hexdigest() == record.md5, record.name


@pytest.mark.mnist
def test_load_real_shapes_and_dtypes(real_data, real_data_dir):
    assert real_data.train_images.shape == (60000, 784)
    assert real_data.train_labels.shape == (60000,)
    assert real_data.test_images.shape == (10000, 784)
    assert real_data.test_labels.shape == (10000,)

    assert real_data.train_images.dtype == np.float32
    assert real_data.test_images.dtype == np.float32
    assert real_data.train_labels.dtype == np.int64
    assert real_data.test_labels.dtype == np.int64

    assert real_data.data_dir == real_data_dir


@pytest.mark.mnist
def test_load_real_pixel_range(real_data):
    for images in (real_data.train_images, real_data.test_images):
        assert images.min() == 0.0
        assert images.max() == 1.0
        # Pixels are bytes divided by 255, so 255 * pixel must be an integer.
        scaled = images[:100] * 255
        assert np.allclose(scaled, np.round(scaled), atol=1e-4)


@pytest.mark.mnist
def test_load_real_class_counts(real_data):
    assert np.bincount(real_data.train_labels).tolist() == TRAIN_CLASS_COUNTS
    assert np.bincount(real_data.test_labels).tolist() == TEST_CLASS_COUNTS


@pytest.mark.mnist
def test_load_missing_file_error(real_data_dir, tmp_path):
    link_files(real_data_dir, tmp_path, [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES])

    with pytest.raises(DataError) as excinfo:
        mnist.load_mnist(tmp_path)

    message = str(excinfo.value)
    assert TEST_LABELS in message
    assert RECORDS[TEST_LABELS].sha256 in message
    assert str(tmp_path.absolute()) in message
    assert "crossbar-emu data fetch" in message


@pytest.mark.mnist
def test_load_corrupt_file_error(real_data_dir, tmp_path):
    for name in RECORDS:
        shutil.copyfile(real_data_dir / name, tmp_path / name)
    write_flipped_copy(real_data_dir / TRAIN_LABELS, tmp_path / TRAIN_LABELS)
    corrupt_sha256 = sha256_of(tmp_path / TRAIN_LABELS)

    with pytest.raises(DataError) as excinfo:
        mnist.load_mnist(tmp_path)

    message = str(excinfo.value)
    assert TRAIN_LABELS in message
    assert RECORDS[TRAIN_LABELS].sha256 in message
    assert corrupt_sha256 in message
    assert str(tmp_path.absolute()) in message


@pytest.mark.mnist
def test_verify_truncated_file_reports_size(real_data_dir, tmp_path):
    content = (real_data_dir / TEST_LABELS).read_bytes()
    (tmp_path / TEST_LABELS).write_bytes(content[:100])

    with pytest.raises(DataError) as excinfo:
        mnist.verify_file(tmp_path / TEST_LABELS, RECORDS[TEST_LABELS])

    assert "100 bytes" in str(excinfo.value)


# ---------------------------------------------------------------------------
# Data directory
# ---------------------------------------------------------------------------


def test_resolve_argument_over_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(mnist.ENV_VAR, str(tmp_path / "from-env"))

    assert mnist.resolve_data_dir(tmp_path / "from-cli") == tmp_path / "from-cli"
    assert mnist.resolve_data_dir(str(tmp_path / "from-cli")) == tmp_path / "from-cli"


def test_resolve_environment_over_default(monkeypatch, tmp_path):
    monkeypatch.setenv(mnist.ENV_VAR, str(tmp_path / "from-env"))
    monkeypatch.chdir(tmp_path)

    assert mnist.resolve_data_dir(None) == tmp_path / "from-env"


def test_resolve_default_under_cwd(monkeypatch, tmp_path):
    monkeypatch.delenv(mnist.ENV_VAR, raising=False)
    monkeypatch.chdir(tmp_path)

    assert mnist.resolve_data_dir(None) == tmp_path / "data" / "mnist"


def test_resolve_empty_values_count_as_unset(monkeypatch, tmp_path):
    monkeypatch.setenv(mnist.ENV_VAR, "")
    monkeypatch.chdir(tmp_path)

    assert mnist.resolve_data_dir("") == tmp_path / "data" / "mnist"


def test_resolve_logs_source(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(mnist.ENV_VAR, str(tmp_path))
    caplog.set_level(logging.DEBUG, logger=mnist.__name__)

    mnist.resolve_data_dir(None)

    assert mnist.ENV_VAR in caplog.text


# ---------------------------------------------------------------------------
# IDX parser
# ---------------------------------------------------------------------------


def test_parse_idx_images():
    pixels = bytes(range(2 * 3 * 4))
    raw = idx_bytes(mnist.IDX_MAGIC_IMAGES, (2, 3, 4), pixels)

    array = mnist.parse_idx(raw, "images.idx", mnist.IDX_MAGIC_IMAGES)

    assert array.dtype == np.uint8
    assert array.shape == (2, 3, 4)
    assert array.ravel().tolist() == list(pixels)


def test_parse_idx_labels():
    raw = idx_bytes(mnist.IDX_MAGIC_LABELS, (5,), bytes([3, 1, 4, 1, 5]))

    array = mnist.parse_idx(raw, "labels.idx")

    assert array.shape == (5,)
    assert array.tolist() == [3, 1, 4, 1, 5]


def test_parse_idx_bad_magic():
    raw = idx_bytes(0x12345601, (5,), bytes(5))

    with pytest.raises(DataError) as excinfo:
        mnist.parse_idx(raw, "bad-magic.idx")

    assert "bad-magic.idx" in str(excinfo.value)
    assert "0x12345601" in str(excinfo.value)


def test_parse_idx_unexpected_magic():
    raw = idx_bytes(mnist.IDX_MAGIC_LABELS, (5,), bytes(5))

    with pytest.raises(DataError) as excinfo:
        mnist.parse_idx(raw, "labels.idx", mnist.IDX_MAGIC_IMAGES)

    assert "labels.idx" in str(excinfo.value)
    assert "0x00000803" in str(excinfo.value)


def test_parse_idx_unsupported_type():
    float_magic = 0x00000D01
    raw = idx_bytes(float_magic, (2,), bytes(8))

    with pytest.raises(DataError, match="0x0D"):
        mnist.parse_idx(raw, "floats.idx")


def test_parse_idx_truncated_payload():
    raw = idx_bytes(mnist.IDX_MAGIC_IMAGES, (2, 3, 4), bytes(23))

    with pytest.raises(DataError) as excinfo:
        mnist.parse_idx(raw, "short.idx")

    assert "short.idx" in str(excinfo.value)
    assert "truncated" in str(excinfo.value)


def test_parse_idx_truncated_header():
    raw = struct.pack(">II", mnist.IDX_MAGIC_IMAGES, 2)

    with pytest.raises(DataError, match="header"):
        mnist.parse_idx(raw, "header.idx")


def test_parse_idx_too_short_for_magic():
    with pytest.raises(DataError, match="magic number"):
        mnist.parse_idx(b"\x00\x00", "tiny.idx")


def test_parse_idx_trailing_bytes():
    raw = idx_bytes(mnist.IDX_MAGIC_LABELS, (3,), bytes(4))

    with pytest.raises(DataError, match="longer than its header says"):
        mnist.parse_idx(raw, "long.idx")


# ---------------------------------------------------------------------------
# Loader checks on synthetic files
# ---------------------------------------------------------------------------


def write_synthetic_set(directory: Path, monkeypatch, files: dict[str, bytes]) -> None:
    """Write the given file contents and make MNIST_FILES publish their checksums."""
    records = []
    for name, content in files.items():
        (directory / name).write_bytes(content)
        records.append(
            MnistFile(
                name=name,
                size=len(content),
                md5=hashlib.md5(content).hexdigest(),
                sha256=hashlib.sha256(content).hexdigest(),
            )
        )
    monkeypatch.setattr(mnist, "MNIST_FILES", tuple(records))


def synthetic_images(count: int) -> bytes:
    return gzip.compress(idx_bytes(mnist.IDX_MAGIC_IMAGES, (count, 28, 28), bytes(count * 784)))


def synthetic_labels(count: int) -> bytes:
    return gzip.compress(idx_bytes(mnist.IDX_MAGIC_LABELS, (count,), bytes(count)))


def test_load_count_mismatch(tmp_path, monkeypatch):
    files = {
        TRAIN_IMAGES: synthetic_images(2),
        TRAIN_LABELS: synthetic_labels(3),
        TEST_IMAGES: synthetic_images(1),
        TEST_LABELS: synthetic_labels(1),
    }
    write_synthetic_set(tmp_path, monkeypatch, files)

    with pytest.raises(DataError) as excinfo:
        mnist.load_mnist(tmp_path)

    message = str(excinfo.value)
    assert TRAIN_IMAGES in message
    assert TRAIN_LABELS in message
    assert "2 images" in message
    assert "3 labels" in message


def test_load_wrong_magic_names_file(tmp_path, monkeypatch):
    files = {
        TRAIN_IMAGES: synthetic_labels(2),
        TRAIN_LABELS: synthetic_labels(2),
        TEST_IMAGES: synthetic_images(1),
        TEST_LABELS: synthetic_labels(1),
    }
    write_synthetic_set(tmp_path, monkeypatch, files)

    with pytest.raises(DataError) as excinfo:
        mnist.load_mnist(tmp_path)

    assert TRAIN_IMAGES in str(excinfo.value)
    assert "magic number" in str(excinfo.value)


def test_load_invalid_gzip_names_file(tmp_path, monkeypatch):
    files = {
        TRAIN_IMAGES: b"not a gzip stream",
        TRAIN_LABELS: synthetic_labels(2),
        TEST_IMAGES: synthetic_images(1),
        TEST_LABELS: synthetic_labels(1),
    }
    write_synthetic_set(tmp_path, monkeypatch, files)

    with pytest.raises(DataError) as excinfo:
        mnist.load_mnist(tmp_path)

    assert TRAIN_IMAGES in str(excinfo.value)
    assert "decompressed" in str(excinfo.value)


# ---------------------------------------------------------------------------
# Downloads from local mirrors
# ---------------------------------------------------------------------------


def part_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.part"))


@pytest.mark.mnist
def test_fetch_all_four_files(real_data_dir, tmp_path, start_mirror):
    mirror = start_mirror(tmp_path / "mirror")
    link_files(real_data_dir, tmp_path / "mirror", RECORDS)
    target_dir = tmp_path / "data" / "mnist"

    paths = mnist.fetch_mnist(target_dir, base_urls=(mirror.base_url,), timeout=10)

    assert paths == [target_dir / record.name for record in mnist.MNIST_FILES]
    for record in mnist.MNIST_FILES:
        mnist.verify_file(target_dir / record.name, record)
        assert not (target_dir / record.name).is_symlink()
    assert part_files(target_dir) == []
    assert sorted(mirror.request_paths) == sorted(f"/{name}" for name in RECORDS)


@pytest.mark.mnist
def test_fetch_skips_corrupt_mirror(real_data_dir, tmp_path, start_mirror, caplog):
    target_dir = tmp_path / "data"
    link_files(real_data_dir, target_dir, [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES])
    write_flipped_copy(real_data_dir / TEST_LABELS, tmp_path / "bad" / TEST_LABELS)
    corrupt_sha256 = sha256_of(tmp_path / "bad" / TEST_LABELS)
    link_files(real_data_dir, tmp_path / "good", [TEST_LABELS])
    bad_mirror = start_mirror(tmp_path / "bad")
    good_mirror = start_mirror(tmp_path / "good")
    caplog.set_level(logging.INFO, logger=mnist.__name__)

    mnist.fetch_mnist(target_dir, base_urls=(bad_mirror.base_url, good_mirror.base_url), timeout=10)

    mnist.verify_file(target_dir / TEST_LABELS, RECORDS[TEST_LABELS])
    assert bad_mirror.request_paths == [f"/{TEST_LABELS}"]
    assert good_mirror.request_paths == [f"/{TEST_LABELS}"]
    assert part_files(target_dir) == []

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert bad_mirror.base_url + TEST_LABELS in warnings[0]
    assert corrupt_sha256 in warnings[0]
    assert RECORDS[TEST_LABELS].sha256 in warnings[0]


@pytest.mark.mnist
def test_fetch_only_corrupt_copy(real_data_dir, tmp_path, start_mirror):
    target_dir = tmp_path / "data"
    link_files(real_data_dir, target_dir, [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES])
    write_flipped_copy(real_data_dir / TEST_LABELS, tmp_path / "bad" / TEST_LABELS)
    corrupt_sha256 = sha256_of(tmp_path / "bad" / TEST_LABELS)
    bad_mirror = start_mirror(tmp_path / "bad")

    with pytest.raises(DataError) as excinfo:
        mnist.fetch_mnist(target_dir, base_urls=(bad_mirror.base_url,), timeout=10)

    message = str(excinfo.value)
    assert TEST_LABELS in message
    assert "checksum" in message
    assert corrupt_sha256 in message
    assert bad_mirror.base_url + TEST_LABELS in message
    assert not (target_dir / TEST_LABELS).exists()
    assert part_files(target_dir) == []


def test_fetch_unreachable_mirror(tmp_path):
    port = free_loopback_port()
    target_dir = tmp_path / "data"

    with pytest.raises(DataError) as excinfo:
        mnist.fetch_mnist(target_dir, base_urls=(f"http://127.0.0.1:{port}/",), timeout=5)

    message = str(excinfo.value)
    assert TRAIN_IMAGES in message
    assert f"http://127.0.0.1:{port}/{TRAIN_IMAGES}" in message
    assert "connection refused" in message
    assert str(target_dir.absolute()) in message
    assert mnist.ENV_VAR in message
    assert "--data-dir" in message
    assert not (target_dir / TRAIN_IMAGES).exists()
    assert part_files(target_dir) == []


def test_fetch_invalid_base_url(tmp_path):
    with pytest.raises(DataError) as excinfo:
        mnist.fetch_mnist(tmp_path / "data", base_urls=("no-scheme",), timeout=5)

    assert f"no-scheme/{TRAIN_IMAGES}: unknown url type" in str(excinfo.value)
    assert part_files(tmp_path / "data") == []


def test_fetch_reports_http_404(tmp_path, start_mirror):
    empty_mirror = start_mirror(tmp_path / "empty")

    with pytest.raises(DataError) as excinfo:
        mnist.fetch_mnist(tmp_path / "data", base_urls=(empty_mirror.base_url,), timeout=10)

    assert "HTTP 404" in str(excinfo.value)


@pytest.mark.mnist
def test_fetch_keeps_valid_file(real_data_dir, tmp_path, start_mirror):
    target_dir = tmp_path / "data"
    target_dir.mkdir()
    shutil.copyfile(real_data_dir / TRAIN_IMAGES, target_dir / TRAIN_IMAGES)
    before = (target_dir / TRAIN_IMAGES).stat()
    mirror = start_mirror(tmp_path / "mirror")
    link_files(real_data_dir, tmp_path / "mirror", RECORDS)

    mnist.fetch_mnist(target_dir, base_urls=(mirror.base_url,), timeout=10)

    after = (target_dir / TRAIN_IMAGES).stat()
    assert f"/{TRAIN_IMAGES}" not in mirror.request_paths
    assert sorted(mirror.request_paths) == sorted(
        f"/{name}" for name in (TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
    )
    assert after.st_ino == before.st_ino
    assert after.st_mtime_ns == before.st_mtime_ns


@pytest.mark.mnist
def test_fetch_replaces_invalid_file(real_data_dir, tmp_path, start_mirror):
    target_dir = tmp_path / "data"
    link_files(real_data_dir, target_dir, [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES])
    write_flipped_copy(real_data_dir / TEST_LABELS, target_dir / TEST_LABELS)
    mirror = start_mirror(tmp_path / "mirror")
    link_files(real_data_dir, tmp_path / "mirror", [TEST_LABELS])

    mnist.fetch_mnist(target_dir, base_urls=(mirror.base_url,), timeout=10)

    mnist.verify_file(target_dir / TEST_LABELS, RECORDS[TEST_LABELS])
    assert mirror.request_paths == [f"/{TEST_LABELS}"]


@pytest.mark.mnist
def test_fetch_failure_leaves_existing_file(real_data_dir, tmp_path, start_mirror):
    target_dir = tmp_path / "data"
    link_files(real_data_dir, target_dir, [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES])
    write_flipped_copy(real_data_dir / TEST_LABELS, target_dir / TEST_LABELS, offset=10)
    existing_content = (target_dir / TEST_LABELS).read_bytes()
    write_flipped_copy(real_data_dir / TEST_LABELS, tmp_path / "bad" / TEST_LABELS, offset=20)
    bad_mirror = start_mirror(tmp_path / "bad")

    with pytest.raises(DataError):
        mnist.fetch_mnist(target_dir, base_urls=(bad_mirror.base_url,), timeout=10)

    assert (target_dir / TEST_LABELS).read_bytes() == existing_content
    assert part_files(target_dir) == []


@pytest.mark.mnist
def test_fetch_rejects_oversized_response(real_data_dir, tmp_path, start_mirror):
    target_dir = tmp_path / "data"
    link_files(real_data_dir, target_dir, [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES])
    oversized = (real_data_dir / TEST_LABELS).read_bytes() + bytes(200_000)
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / TEST_LABELS).write_bytes(oversized)
    mirror = start_mirror(tmp_path / "big")

    with pytest.raises(DataError) as excinfo:
        mnist.fetch_mnist(target_dir, base_urls=(mirror.base_url,), timeout=10)

    assert "longer than the expected 4542 bytes" in str(excinfo.value)
    assert not (target_dir / TEST_LABELS).exists()
    assert part_files(target_dir) == []


@pytest.mark.mnist
def test_fetch_base_url_without_slash(real_data_dir, tmp_path, start_mirror):
    target_dir = tmp_path / "data"
    link_files(real_data_dir, target_dir, [TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES])
    link_files(real_data_dir, tmp_path / "root" / "mnist", [TEST_LABELS])
    mirror = start_mirror(tmp_path / "root")

    mnist.fetch_mnist(target_dir, base_urls=(mirror.base_url + "mnist",), timeout=10)

    assert mirror.request_paths == [f"/mnist/{TEST_LABELS}"]
    mnist.verify_file(target_dir / TEST_LABELS, RECORDS[TEST_LABELS])


@pytest.mark.mnist
def test_fetch_progress_callback(real_data_dir, tmp_path, start_mirror):
    target_dir = tmp_path / "data"
    link_files(real_data_dir, target_dir, [TRAIN_IMAGES, TEST_IMAGES, TEST_LABELS])
    link_files(real_data_dir, tmp_path / "mirror", [TRAIN_LABELS])
    mirror = start_mirror(tmp_path / "mirror")
    calls: list[tuple[str, int, int]] = []

    def record_progress(name: str, bytes_done: int, bytes_total: int) -> None:
        calls.append((name, bytes_done, bytes_total))

    mnist.fetch_mnist(
        target_dir, base_urls=(mirror.base_url,), timeout=10, progress=record_progress
    )

    size = RECORDS[TRAIN_LABELS].size
    assert calls[0] == (TRAIN_LABELS, 0, size)
    assert calls[-1] == (TRAIN_LABELS, size, size)
    done_values = [bytes_done for _, bytes_done, _ in calls]
    assert done_values == sorted(done_values)
