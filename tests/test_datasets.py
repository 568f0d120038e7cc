"""Dataset registry: IDX reading, file lookup and download (simulated), dSprites, shapes, the contract."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pathlib
from urllib.error import URLError

import numpy as np
import pytest
import torch
from scipy import stats

from gan.latents import SPECS, LatentSpec
from structsearch import datasets
from structsearch.datasets import (
    DATASETS,
    Dataset,
    DatasetError,
    dsprites,
    get_dataset,
    list_datasets,
    mnist,
    search_dirs,
)
from structsearch.datasets import download as download_module
from structsearch.datasets.idx import encode_idx, parse_idx, read_idx
from structsearch.datasets.shapes import NODES, LinearSCM, parse_graph

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


class FakeResponse(io.BytesIO):
    """What urlopen returns, enough for ``download.fetch``."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path) -> list[str]:
    """No network, ever: urlopen raises (tests replace it to serve files); HOME and the env are empty."""
    calls: list[str] = []

    def refuse(url, timeout=None):
        calls.append(url)
        raise URLError("network disabled in tests")

    monkeypatch.setattr(download_module, "urlopen", refuse)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(datasets.DATA_ENV, raising=False)
    return calls


def small_shapes(**options) -> Dataset:
    return get_dataset("shapes", **{"n_train": 400, "n_test": 100, **options})


# IDX ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_raw_and_gz(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 3, 4), dtype=np.uint8)
    data = encode_idx(images)
    path = tmp_path / ("x-idx3-ubyte.gz" if gz else "x-idx3-ubyte")
    path.write_bytes(gzip.compress(data) if gz else data)
    assert data[:4] == bytes([0, 0, 0x08, 3])
    np.testing.assert_array_equal(read_idx(path), images)
    ints = np.arange(-3, 3, dtype=np.int32)
    np.testing.assert_array_equal(parse_idx(encode_idx(ints)), ints)


def test_idx_truncated_file_is_refused(tmp_path):
    data = encode_idx(np.zeros((10, 28, 28), dtype=np.uint8))
    path = tmp_path / "short-idx3-ubyte"
    path.write_bytes(data[:-100])
    with pytest.raises(DatasetError, match=r"short-idx3-ubyte.*truncated.*\(10, 28, 28\)"):
        read_idx(path)
    with pytest.raises(DatasetError, match="trailing bytes"):
        parse_idx(data + b"\0")
    gz = tmp_path / "short-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(data)[:-20])
    with pytest.raises(DatasetError, match="not a complete gzip file"):
        read_idx(gz)


def test_idx_wrong_magic_is_refused(tmp_path):
    path = tmp_path / "bad-idx1-ubyte"
    path.write_bytes(b"\x12\x34\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DatasetError, match=r"bad-idx1-ubyte: not an IDX file \(magic number 0x12340801"):
        read_idx(path)
    with pytest.raises(DatasetError, match="magic number 0x00000701"):  # unknown type byte
        parse_idx(b"\x00\x00\x07\x01" + (0).to_bytes(4, "big"))


# MNIST files: lookup, checksums, download -------------------------------------------------------


def test_real_mnist(mnist_dir):
    ds = get_dataset("mnist", data_dir=mnist_dir, download=False)
    assert (ds.n_train, ds.n_test, ds.n_classes, ds.image_shape) == (60000, 10000, 10, (1, 28, 28))
    assert ds.folder == mnist_dir  # the verified files were the real ones, not a download
    assert torch.bincount(ds.train_labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    images, labels = ds.test_images()
    assert images.shape == (10000, 1, 28, 28) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and torch.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert images.min() == -1 and images.max() == 1
    train, train_labels = ds.train_images()
    assert train.shape == (60000, 1, 28, 28) and torch.equal(train_labels, ds.train_labels)
    assert not torch.equal(train[:100], images[:100])  # the training split, not the test images
    assert ds.train_images(5)[0].shape == (5, 1, 28, 28)
    assert ds.spec_name == "mnist" and ds.factor_names == ()
    with pytest.raises(DatasetError, match="no ground-truth factors"):
        ds.sample_factors(4, np.random.default_rng(0))


def test_search_order(tmp_path, monkeypatch):
    home = pathlib.Path(os.environ["HOME"])
    cache = home / ".cache" / "structsearch" / "mnist"
    assert search_dirs("mnist") == [cache]
    monkeypatch.setenv(datasets.DATA_ENV, str(tmp_path / "env"))
    expected = [tmp_path / "arg" / "mnist", tmp_path / "arg", tmp_path / "env" / "mnist", tmp_path / "env", cache]
    assert search_dirs("mnist", tmp_path / "arg") == expected


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("allow_download", [True, False])
def test_missing_dataset_gives_clear_error(name, allow_download, offline):
    with pytest.raises(DatasetError) as info:
        get_dataset(name, download=allow_download)
    message = str(info.value)
    folder = pathlib.Path(os.environ["HOME"]) / ".cache" / "structsearch" / name
    assert str(folder) in message and "--data-dir" in message
    for file in mnist.SOURCES[name].files:
        assert file.name in message and file.sha256 in message
    if allow_download:  # every mirror was tried for the first file, then the error
        assert offline == [f"{mirror}train-images-idx3-ubyte.gz" for mirror in mnist.SOURCES[name].mirrors]
        assert "network disabled" in message
    else:
        assert offline == []


def tiny_source(tmp_path: pathlib.Path, mirrors=("http://mirror-a/", "http://mirror-b/")) -> tuple:
    """A fake 'mnist' with 6 train and 4 test images: its IdxSource and the raw file contents."""
    rng = np.random.default_rng(1)
    arrays = [
        rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=6, dtype=np.uint8),
        rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=4, dtype=np.uint8),
    ]
    contents = [encode_idx(a) for a in arrays]
    files = tuple(
        mnist.IdxFile(f.name, hashlib.sha256(c).hexdigest(), a.shape)
        for f, c, a in zip(mnist.SOURCES["mnist"].files, contents, arrays, strict=True)
    )
    return mnist.IdxSource("mnist", files, mirrors), {f.name: c for f, c in zip(files, contents, strict=True)}, arrays


def test_download_retries_mirrors_and_verifies(tmp_path, monkeypatch):
    source, contents, arrays = tiny_source(tmp_path)
    monkeypatch.setitem(mnist.SOURCES, "mnist", source)
    calls = []

    def serve(url, timeout=None):
        calls.append(url)
        if "mirror-a" in url:
            raise URLError("mirror a is down")
        return FakeResponse(gzip.compress(contents[url.rsplit("/", 1)[1].removesuffix(".gz")]))

    monkeypatch.setattr(download_module, "urlopen", serve)
    ds = get_dataset("mnist")
    cache = pathlib.Path(os.environ["HOME"]) / ".cache" / "structsearch" / "mnist"
    assert ds.folder == cache and len(calls) == 8
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{f.name}.gz" for f in source.files)
    np.testing.assert_array_equal(ds.train_labels.numpy(), arrays[1])
    images, labels = ds.test_images(3)
    np.testing.assert_array_equal(((images[:, 0] + 1) * 127.5).round().numpy(), arrays[2][:3])


def test_download_with_wrong_content_is_refused_and_leaves_nothing(tmp_path, monkeypatch):
    source, contents, _ = tiny_source(tmp_path, mirrors=("http://mirror-a/",))
    monkeypatch.setitem(mnist.SOURCES, "mnist", source)
    monkeypatch.setattr(download_module, "urlopen", lambda url, timeout=None: FakeResponse(gzip.compress(b"junk")))
    with pytest.raises(DatasetError, match=r"download failed: .*sha256 of the content is .*, expected"):
        get_dataset("mnist")
    cache = pathlib.Path(os.environ["HOME"]) / ".cache" / "structsearch" / "mnist"
    assert list(cache.iterdir()) == []  # no half-written or unverified file left behind


def test_corrupted_file_is_refused(tmp_path, monkeypatch):
    source, contents, _ = tiny_source(tmp_path)
    monkeypatch.setitem(mnist.SOURCES, "mnist", source)
    folder = tmp_path / "data" / "mnist"  # the <name>/ subfolder of --data-dir
    folder.mkdir(parents=True)
    for name, content in contents.items():
        (folder / name).write_bytes(content)
    get_dataset("mnist", data_dir=tmp_path / "data")  # intact: loads
    broken = bytearray(contents["t10k-labels-idx1-ubyte"])
    broken[-1] ^= 1
    (folder / "t10k-labels-idx1-ubyte").write_bytes(bytes(broken))  # same size, new mtime
    os.utime(folder / "t10k-labels-idx1-ubyte", ns=(1, 1))
    with pytest.raises(DatasetError) as info:
        get_dataset("mnist", data_dir=tmp_path / "data")
    message = str(info.value)
    assert str(folder / "t10k-labels-idx1-ubyte") in message and "checksum mismatch" in message
    assert source.files[3].sha256 in message and hashlib.sha256(broken).hexdigest() in message


def test_a_tampered_real_mnist_file_is_refused_even_with_its_size_and_mtime_restored(tmp_path, mnist_dir):
    """A check remembered by size and mtime was bypassed by restoring both; the content is what counts."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for file in mnist.SOURCES["mnist"].files:  # raw copies: a tampered byte keeps the size
        (folder / file.name).write_bytes(gzip.decompress((mnist_dir / f"{file.name}.gz").read_bytes()))
    assert get_dataset("mnist", data_dir=tmp_path).n_test == 10000  # intact: loads
    labels = folder / "t10k-labels-idx1-ubyte"
    stat = labels.stat()
    content = bytearray(labels.read_bytes())
    content[-1] = (content[-1] + 1) % 10  # one test label changed: still a well-formed IDX file
    labels.write_bytes(bytes(content))
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (labels.stat().st_size, labels.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    with pytest.raises(DatasetError, match=r"t10k-labels-idx1-ubyte: checksum mismatch, refusing to use it"):
        get_dataset("mnist", data_dir=tmp_path)


def test_real_checksums_refuse_a_plausible_fake(tmp_path):
    """With the pinned checksums, a well-formed but unofficial file is refused, not loaded."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for file in mnist.SOURCES["mnist"].files:
        (folder / f"{file.name}.gz").write_bytes(gzip.compress(encode_idx(np.zeros(file.shape[:1], np.uint8))))
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.gz: checksum mismatch.*expected ba891046"):
        get_dataset("mnist", data_dir=tmp_path)


# dSprites -------------------------------------------------------------------------------------------


def test_dsprites_flat_index_round_trip():
    rng = np.random.default_rng(0)
    factors = np.stack([rng.integers(k, size=1000) for k in dsprites.FACTOR_SIZES], axis=1)
    index = dsprites.factors_to_index(factors)
    np.testing.assert_array_equal(dsprites.index_to_factors(index), factors)
    with_color = np.concatenate([np.zeros((1000, 1), np.int64), factors], axis=1)
    np.testing.assert_array_equal(dsprites.factors_to_index(with_color), index)
    assert dsprites.factors_to_index(np.array([[0, 0, 0, 0, 1]]))[0] == 1  # posY fastest
    assert dsprites.factors_to_index(np.array([[2, 5, 39, 31, 31]]))[0] == dsprites.N_IMAGES - 1
    all_index = np.arange(dsprites.N_IMAGES)
    np.testing.assert_array_equal(dsprites.factors_to_index(dsprites.index_to_factors(all_index)), all_index)


def test_dsprites_shapes_of_arrays():
    ds = get_dataset("dsprites", n_test=50)
    assert (ds.n_train, ds.n_test, ds.image_shape, ds.source) == (737280, 50, (1, 64, 64), "procedural")
    factors = ds.sample_factors(20, np.random.default_rng(0))
    assert factors.shape == (20, 5) and factors.dtype == np.int64
    assert (factors >= 0).all() and (factors < np.array(ds.factor_sizes)).all()
    images = ds.observations_from_factors(factors)
    assert images.shape == (20, 1, 64, 64) and images.dtype == torch.float32
    assert set(images.unique().tolist()) == {-1.0, 1.0}
    test_images, test_factors = ds.test_factors(10)
    assert test_images.shape == (10, 1, 64, 64) and test_factors.shape == (10, 5)
    torch.testing.assert_close(ds.observations_from_factors(test_factors), test_images)
    with pytest.raises(DatasetError, match="orientation has 40 classes, got class 40"):
        ds.observations_from_factors(np.array([[0, 0, 40, 0, 0]]))


def render(shape: int, scale: int, orientation: int, pos_x: int, pos_y: int) -> np.ndarray:
    """One procedural sprite as a (64, 64) bool array."""
    return dsprites.render(torch.tensor([[shape, scale, orientation, pos_x, pos_y]]))[0, 0].numpy() > 0


def test_dsprites_stay_off_the_border():
    rows = [[s, 5, o, x, y] for s in range(3) for o in range(40) for x in (0, 31) for y in (0, 31)]
    images = dsprites.render(torch.tensor(rows))[:, 0] > 0  # (480, 64, 64)
    assert images.sum(dim=(1, 2)).min() > 50
    border = images[:, 0].any() | images[:, -1].any() | images[:, :, 0].any() | images[:, :, -1].any()
    assert not border


def test_dsprites_mass_grows_with_scale():
    for shape in range(3):
        for orientation in (0, 7, 13):
            mass = [render(shape, s, orientation, 15, 15).sum() for s in range(6)]
            assert all(a < b for a, b in zip(mass, mass[1:], strict=False)), (shape, orientation, mass)


def centroid(image: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(image)
    return rows.mean(), cols.mean()


def test_dsprites_centroid_moves_with_position():
    for shape in range(3):
        xs = [centroid(render(shape, 3, 0, p, 10)) for p in range(32)]
        ys = [centroid(render(shape, 3, 0, 10, p)) for p in range(32)]
        assert all(b[1] > a[1] for a, b in zip(xs, xs[1:], strict=False))  # posX moves right
        assert all(b[0] > a[0] for a, b in zip(ys, ys[1:], strict=False))  # posY moves down
        assert np.ptp([c[0] for c in xs]) < 0.5 and np.ptp([c[1] for c in ys]) < 0.5  # the other axis stays


def test_dsprites_heart_points_down_and_ellipse_is_elongated():
    def mass_above_box_centre(image: np.ndarray) -> float:
        rows = np.nonzero(image)[0]
        return (rows.min() + rows.max()) / 2 - rows.mean()  # > 0: mass in the upper part, tip down

    heart = render(2, 5, 0, 16, 16)
    rows = np.nonzero(heart)[0]
    widths = heart[rows.min() : rows.max() + 1].sum(axis=1)
    assert mass_above_box_centre(heart) > 1 and widths[-1] <= 3 and widths.argmax() < len(widths) / 2
    assert mass_above_box_centre(render(2, 5, 20, 16, 16)) < -1  # orientation ~pi: tip up
    ellipse = render(1, 5, 0, 16, 16)
    rows, cols = np.nonzero(ellipse)
    assert np.ptp(cols) > 1.7 * np.ptp(rows)
    rows, cols = np.nonzero(render(1, 5, 10, 16, 16))  # orientation ~pi/2: now tall
    assert np.ptp(rows) > 1.7 * np.ptp(cols)
    square = render(0, 5, 0, 16, 16)
    rows, cols = np.nonzero(square)
    assert square.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)  # axis-aligned and filled


def test_dsprites_npz_reader_and_checks(tmp_path):
    imgs = (np.random.default_rng(0).random((5, 64, 64)) < 0.3).astype(np.uint8)
    npz = tmp_path / "small.npz"
    np.savez_compressed(npz, imgs=imgs, latents_classes=np.zeros((5, 6), np.int64))
    packed = torch.from_numpy(dsprites.read_packed_images(npz, chunk_rows=2))
    assert packed.shape == (5, 64, 8)
    np.testing.assert_array_equal(dsprites._unpack(packed)[:, 0].numpy() > 0, imgs.astype(bool))
    (tmp_path / dsprites.FILE_NAME).write_bytes(b"not the real file")
    with pytest.raises(DatasetError, match=f"md5 [0-9a-f]+, expected {dsprites.FILE_MD5}"):
        get_dataset("dsprites", data_dir=tmp_path)
    assert get_dataset("dsprites", data_dir=tmp_path, source="procedural").source == "procedural"


def test_dsprites_deepmind_source_offline(tmp_path, offline):
    with pytest.raises(DatasetError, match=r"download=False.*--data-dir"):
        get_dataset("dsprites", source="deepmind", download=False)
    assert offline == []
    with pytest.raises(DatasetError, match=f"download failed.*{dsprites.FILE_NAME} \\(md5 {dsprites.FILE_MD5}"):
        get_dataset("dsprites", source="deepmind")
    assert offline == [dsprites.FILE_URL]
    get_dataset("dsprites")  # the default never touches the network
    assert offline == [dsprites.FILE_URL]


# shapes -----------------------------------------------------------------------------------------------


def test_shapes_seeded():
    a, b, c = small_shapes(seed=3), small_shapes(seed=3), small_shapes(seed=4)
    torch.testing.assert_close(a.test_images()[0], b.test_images()[0])
    torch.testing.assert_close(
        a.sample(32, torch.Generator().manual_seed(0)), b.sample(32, torch.Generator().manual_seed(0))
    )
    assert not torch.equal(a.test_images()[0], c.test_images()[0])
    assert not np.array_equal(a.train_factors, c.train_factors)
    assert not np.array_equal(a.test_factors()[1], a.train_factors[:100])  # test set from another seed


def partial_corr(f: np.ndarray, i: int, j: int, given: int) -> float:
    """Correlation of factors i and j within strata of factor ``given`` (0 when i, j independent given it)."""
    resid = f[:, [i, j]].astype(float)
    for level in np.unique(f[:, given]):
        rows = f[:, given] == level
        resid[rows] -= resid[rows].mean(axis=0)
    return float(np.corrcoef(resid.T)[0, 1])


@pytest.mark.parametrize("graph", ["collider", "chain", "fork", "independent"])
def test_shapes_factors_follow_the_graph(graph):
    ds = small_shapes(graph=graph)
    f = ds.sample_factors(40_000, np.random.default_rng(0))
    corr = np.corrcoef(f.T)
    strong, weak = 0.3, 0.03
    edges = {"collider": {(0, 2), (1, 2)}, "chain": {(0, 1), (1, 2)}, "fork": {(0, 1), (0, 2)}, "independent": set()}
    assert ds.true_edges == tuple(sorted((f"q{p + 1}", f"q{c + 1}") for p, c in edges[graph]))
    for p, c in edges[graph]:
        assert abs(corr[p, c]) > strong, (graph, p, c, corr)
    if graph == "collider":
        assert abs(corr[0, 1]) < weak  # f1 and f2 independent ...
        assert abs(partial_corr(f, 0, 1, given=2)) > 0.2  # ... but dependent given their child
    if graph == "chain":
        assert corr[0, 2] > strong and abs(partial_corr(f, 0, 2, given=1)) < weak
    if graph == "fork":
        assert corr[1, 2] > strong and abs(partial_corr(f, 1, 2, given=0)) < weak
    if graph == "independent":
        assert np.abs(corr - np.eye(3)).max() < weak
    train_corr = np.corrcoef(get_dataset("shapes", graph=graph, n_train=5000, n_test=0).train_factors.T)
    np.testing.assert_allclose(train_corr, corr, atol=0.06)  # the images follow the same model
    assert set(np.unique(f)) == set(range(16))  # every class is used


def test_shapes_graph_option():
    assert small_shapes().true_edges == (("q1", "q3"), ("q2", "q3"))  # the default: the paper's collider
    assert small_shapes(graph="q2->q1, q1->q3").true_edges == (("q1", "q3"), ("q2", "q1"))
    assert small_shapes(graph=[("q3", "q1")]).true_edges == (("q3", "q1"),)
    with pytest.raises(DatasetError, match="cycle through q1, q2"):
        small_shapes(graph="q1->q2, q2->q1")
    with pytest.raises(DatasetError, match="unknown graph 'zigzag'; expected one of collider, chain"):
        small_shapes(graph="zigzag")
    with pytest.raises(DatasetError, match="bad edge q1->q4"):
        small_shapes(graph="q1->q4")


def test_shapes_each_factor_is_visible_on_its_own():
    ds = small_shapes()

    def features(factors) -> np.ndarray:
        ink = (ds.observations_from_factors(np.array(factors))[:, 0].numpy() + 1) / 2  # (n, 32, 32)
        rows, cols = ink.sum(axis=2) > 0.5, ink.sum(axis=1) > 0.5
        return np.stack([cols.sum(axis=1), ink.sum(axis=(1, 2)), rows.sum(axis=1)], axis=1)  # width, mass, height

    levels = np.arange(16)
    width = features([[k, 5, 8] for k in levels])
    thick = features([[8, k, 8] for k in levels])
    height = features([[8, 5, k] for k in levels])
    assert np.all(np.diff(width[:, 0]) >= 0) and width[-1, 0] - width[0, 0] >= 14 and np.ptp(width[:, 2]) <= 1
    assert np.all(np.diff(thick[:, 1]) > 0) and thick[-1, 1] > 2.5 * thick[0, 1]
    assert np.all(np.diff(height[:, 2]) >= 0) and height[-1, 2] - height[0, 2] >= 14 and np.ptp(height[:, 0]) <= 1
    images = ds.observations_from_factors(np.array([[15, 15, 15], [0, 0, 0]]))
    assert images[:, :, [0, -1]].max() == -1 and images[:, :, :, [0, -1]].max() == -1


# shapes: intervention pairs -----------------------------------------------------------------------


def _legacy_sample(scm: LinearSCM, n: int, rng: np.random.Generator) -> np.ndarray:
    """``LinearSCM.sample`` as it was before the noise refactor (copied verbatim): the oracle."""
    classes = np.zeros((n, len(NODES)), dtype=np.int64)
    for v in scm.order:
        pa = scm.parents[v]
        if not pa:
            classes[:, v] = rng.integers(scm.n_levels, size=n)
            continue
        signal = scm.values(classes[:, pa]).sum(axis=1)
        value = scm.scale[v] * (signal + scm.noise * scm.signal_sd[v] * rng.standard_normal(n))
        classes[:, v] = np.rint((np.clip(value, -1, 1) + 1) / 2 * (scm.n_levels - 1))
    return classes


def _mechanism(scm: LinearSCM, v: int, classes: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """Child v's class from its parents' classes and its eps, by the module docstring's formula."""
    signal = scm.values(classes[:, scm.parents[v]]).sum(axis=1)
    value = np.clip(scm.scale[v] * (signal + scm.noise * scm.signal_sd[v] * eps), -1, 1)
    return np.rint((value + 1) / 2 * (scm.n_levels - 1)).astype(np.int64)


@pytest.mark.parametrize("graph", ["collider", "chain", "fork", "independent", "q3->q1, q3->q2, q1->q2"])
@pytest.mark.parametrize("n_levels", [16, 5])
def test_scm_sample_is_bit_identical_to_before_the_noise_refactor(graph, n_levels):
    scm = LinearSCM(parse_graph(graph), n_levels=n_levels, noise=0.5)
    for seed in (0, 1, [7, 1]):
        new_rng, old_rng = np.random.default_rng(seed), np.random.default_rng(seed)
        np.testing.assert_array_equal(scm.sample(3000, new_rng), _legacy_sample(scm, 3000, old_rng))
        assert new_rng.bit_generator.state == old_rng.bit_generator.state  # the same draws were consumed


def _pairs_with_noise(graph: str, n: int = 30_000, seed: int = 0):
    scm = LinearSCM(parse_graph(graph), n_levels=16, noise=0.5)
    before, after, target = scm.sample_pairs(n, np.random.default_rng(seed))
    noise = scm.draw_noise(n, np.random.default_rng(seed))  # sample_pairs draws the shared noise first
    np.testing.assert_array_equal(scm.from_noise(noise), before)
    return scm, before, after, target, noise


@pytest.mark.parametrize("graph", ["collider", "chain", "fork"])
def test_pairs_recompute_descendants_from_the_same_noise_and_keep_the_rest(graph):
    scm, before, after, target, noise = _pairs_with_noise(graph)
    for k in range(3):
        rows = target == k
        assert 0.3 < rows.mean() < 0.37  # the target is uniform over the factors
        desc = scm.descendants(k)
        for v in range(3):
            if v != k and v not in desc:  # non-descendants: exactly as before
                np.testing.assert_array_equal(after[rows, v], before[rows, v])
        for v in desc:  # descendants: the mechanism on the new parents, with the old eps
            np.testing.assert_array_equal(after[rows, v], _mechanism(scm, v, after[rows], noise[rows, v]))
            moved = rows & (after[:, k] != before[:, k])
            assert (after[moved, v] != before[moved, v]).mean() > 0.5  # and they do move with their cause


def test_chain_pairs_by_hand():
    """q1 -> q2 -> q3: do(q1) moves q2 and q3 as the mechanisms say; do(q3) leaves q1 and q2 alone."""
    scm, before, after, target, noise = _pairs_with_noise("chain")
    assert scm.descendants(0) == {1, 2} and scm.descendants(1) == {2} and scm.descendants(2) == set()
    do1, do3 = target == 0, target == 2
    q2 = _mechanism(scm, 1, after[do1], noise[do1, 1])
    np.testing.assert_array_equal(after[do1, 1], q2)
    np.testing.assert_array_equal(
        after[do1, 2], _mechanism(scm, 2, np.column_stack([after[do1, :1], q2, q2]), noise[do1, 2])
    )
    np.testing.assert_array_equal(after[do3, :2], before[do3, :2])
    assert (after[do3, 2] != before[do3, 2]).mean() > 0.8


@pytest.mark.parametrize("graph", ["collider", "chain", "fork"])
def test_the_new_value_follows_the_marginal_and_ignores_the_old_parents(graph):
    """chi^2 of the intervened factor's new classes against an independent sample of its marginal;
    the new value is independent of its old parents (a resampled noise term would not be)."""
    scm, before, after, target, _ = _pairs_with_noise(graph)
    marginal = scm.sample(30_000, np.random.default_rng(99))
    for k in range(3):
        rows = target == k
        counts = np.stack([np.bincount(after[rows, k], minlength=16), np.bincount(marginal[:, k], minlength=16)])
        counts = counts[:, counts.sum(axis=0) > 0]
        assert stats.chi2_contingency(counts).pvalue > 0.01, (graph, k)
        for p in scm.parents[k]:
            assert abs(np.corrcoef(before[:, k], before[:, p])[0, 1]) > 0.3  # dependent before ...
            assert abs(np.corrcoef(after[rows, k], after[rows, p])[0, 1]) < 0.03  # ... not after do(k)
        assert abs(np.corrcoef(after[rows, k], before[rows, k])[0, 1]) < 0.03  # a fresh draw


def test_the_marginal_check_has_power():
    """The chi^2 check above rejects a draw from a conditional instead of the marginal."""
    scm, before, after, target, _ = _pairs_with_noise("collider")
    marginal = scm.sample(30_000, np.random.default_rng(99))
    conditional = before[before[:, 0] > 7, 2][:10_000]  # height given a wide ring
    counts = np.stack([np.bincount(conditional, minlength=16), np.bincount(marginal[:, 2], minlength=16)])
    assert stats.chi2_contingency(counts[:, counts.sum(axis=0) > 0]).pvalue < 1e-6


def test_shapes_pairs_images_test_set_and_training_batches():
    ds = small_shapes(graph="chain")
    pairs = ds.sample_pairs(50, np.random.default_rng(0))
    assert len(pairs) == 50 and pairs.before.shape == pairs.after.shape == (50, 3)
    torch.testing.assert_close(pairs.images, ds.observations_from_factors(pairs.before))
    torch.testing.assert_close(pairs.images_after, ds.observations_from_factors(pairs.after))
    test = ds.test_pairs()
    assert len(test) == 100 and len(ds.test_pairs(10)) == 10
    np.testing.assert_array_equal(test.before, small_shapes(graph="chain").test_pairs().before)  # seeded
    assert not np.array_equal(test.before, ds.test_factors()[1])  # its own seed
    x, x_after = ds.sample_pair_batch(16, torch.Generator().manual_seed(5))
    assert x.shape == x_after.shape == (16, 1, 32, 32) and x.dtype == torch.float32
    index = torch.randint(ds.n_train, (16,), generator=torch.Generator().manual_seed(5))
    classes = ds._train_pair_classes[index].numpy()  # (16, 2, 3)
    torch.testing.assert_close(x, ds.observations_from_factors(classes[:, 0]))
    torch.testing.assert_close(x_after, ds.observations_from_factors(classes[:, 1]))
    assert ((classes[:, 0] != classes[:, 1]).sum(axis=1) <= 3).all() and (classes[:, 0] != classes[:, 1]).any()
    with pytest.raises(DatasetError, match="dataset 'dsprites' has no intervention pairs; use shapes"):
        get_dataset("dsprites", n_test=40).sample_pair_batch(4, torch.Generator())


# The common contract, over every dataset ---------------------------------------------------------


def build(name: str, request) -> Dataset:
    if name in ("mnist",):
        return get_dataset(name, data_dir=request.getfixturevalue("mnist_dir"))
    return small_shapes() if name == "shapes" else get_dataset(name, n_test=40)


@pytest.mark.parametrize("name", ["mnist", "dsprites", "shapes"])
def test_sample_contract(name, request):
    ds = build(name, request)
    batch = ds.sample(16, torch.Generator(ds.device).manual_seed(7))
    assert batch.shape == (16, *ds.image_shape) and batch.dtype == torch.float32 and batch.device == ds.device
    assert batch.min() >= -1 and batch.max() <= 1 and batch.max() > batch.min()
    torch.testing.assert_close(batch, ds.sample(16, torch.Generator(ds.device).manual_seed(7)))
    assert not torch.equal(batch, ds.sample(16, torch.Generator(ds.device).manual_seed(8)))
    images, labels = ds.test_images(5)
    assert images.shape == (5, *ds.image_shape) and images.dtype == torch.float32
    assert (labels is not None) == (ds.n_classes is not None)
    assert ds.spec_name in SPECS and ds.name in DATASETS
    if ds.factor_names:
        assert len(ds.factor_names) == len(ds.factor_sizes)
        _, factors = ds.test_factors(5)
        assert factors.shape == (5, len(ds.factor_names)) and factors.dtype == np.int64
        torch.testing.assert_close(ds.observations_from_factors(factors), images)
    if name == "shapes":
        assert len(ds.spec.codes) == len(ds.factor_names) and ds.spec.noise_dim <= 2


def test_registry_errors_and_listing(tmp_path, monkeypatch, offline):
    with pytest.raises(DatasetError, match="unknown dataset 'cifar'; expected one of mnist, fashion-mnist, dsprites"):
        get_dataset("cifar")
    with pytest.raises(DatasetError, match="shapes: unknown option.*colour; accepted: graph"):
        get_dataset("shapes", colour=1)

    def no_loading(*args, **kwargs):
        raise AssertionError("list_datasets must not read files")

    monkeypatch.setattr(mnist, "load_verified", no_loading)
    monkeypatch.setattr(dsprites, "read_packed_images", no_loading)
    rows = {row["name"]: row for row in list_datasets(tmp_path)}
    assert list(rows) == list(DATASETS) and offline == []
    assert rows["mnist"]["files"] == f"missing: {tmp_path}"
    assert rows["mnist"]["image_shape"] == (1, 28, 28) and rows["mnist"]["n_train"] == 60000
    assert rows["dsprites"]["files"] == rows["shapes"]["files"] == "procedural"
    (tmp_path / "dsprites").mkdir()
    (tmp_path / "dsprites" / dsprites.FILE_NAME).write_bytes(b"")
    assert list_datasets(tmp_path)[2]["files"] == str(tmp_path / "dsprites" / dsprites.FILE_NAME)


def test_mnist_folder_is_not_taken_for_fashion_mnist(mnist_dir, tmp_path, monkeypatch) -> None:
    """Both sets share file names and sizes; the lookup must not hand MNIST's files to fashion-mnist."""
    from structsearch.datasets import list_datasets

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("STRUCTSEARCH_DATA", raising=False)
    rows = {r["name"]: r["files"] for r in list_datasets(mnist_dir)}
    assert rows["mnist"] == str(mnist_dir)
    assert rows["fashion-mnist"].startswith("missing")
    with pytest.raises(DatasetError, match="--data-dir"):
        get_dataset("fashion-mnist", data_dir=mnist_dir, download=False)


# Anchors: known codes of training and test images ------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "dsprites", "shapes"])
def test_anchor_contract(name, request):
    """Every dataset's anchors: Q's layout, on the device, values in the codes' range, one-hot classes."""
    ds = build(name, request)
    spec = ds.spec
    index = np.array([3, 1, 11])
    targets, mask = ds.anchor_targets(spec, index)
    assert targets.shape == (3, spec.code_dim) and targets.dtype == torch.float32 and targets.device == ds.device
    assert len(mask) == len(spec.codes) and any(mask)
    for code, anchored, part in zip(spec.codes, mask, spec.split(targets)):
        if not anchored:
            assert torch.equal(part, torch.zeros_like(part))
        elif code.kind == "categorical":
            assert torch.equal(part.sum(1), torch.ones(3)) and set(part.unique().tolist()) <= {0.0, 1.0}
        else:
            assert part.min() >= -1 and part.max() <= 1
    test_targets, test_mask = ds.anchor_targets(spec, np.arange(5), split="test")
    assert test_targets.shape == (5, spec.code_dim) and test_mask == mask
    images = ds.train_images_at(torch.from_numpy(index).to(ds.device))
    assert images.shape == (3, *ds.image_shape) and images.min() >= -1 and images.max() <= 1


def test_shapes_anchors_are_the_factor_values():
    ds = small_shapes()
    targets, mask = ds.anchor_targets(ds.spec, np.array([0, 5, 7]))
    assert mask == (True, True, True)
    np.testing.assert_allclose(targets.numpy(), -1 + 2 * ds.train_factors[[0, 5, 7]] / 15, rtol=1e-6)
    torch.testing.assert_close(
        ds.train_images_at(torch.tensor([0, 5, 7])), ds.observations_from_factors(ds.train_factors[[0, 5, 7]])
    )
    test, _ = ds.anchor_targets(ds.spec, np.arange(4), split="test")
    np.testing.assert_allclose(test.numpy(), -1 + 2 * ds.test_factors(4)[1] / 15, rtol=1e-6)
    # Code i is factor i; a categorical code, or one past c3, is not anchored.
    spec = LatentSpec.parse("cat4,cont,cont,cont")
    targets, mask = ds.anchor_targets(spec, np.array([2]))
    assert mask == (False, True, True, False)
    np.testing.assert_allclose(targets[0, 4:6].numpy(), -1 + 2 * ds.train_factors[2, 1:] / 15, rtol=1e-6)
    assert targets[0, :4].abs().sum() == 0 and targets[0, 6] == 0
    with pytest.raises(DatasetError, match="shapes anchors continuous codes among c1..c3 .* have none"):
        ds.anchor_codes(LatentSpec.parse("cat10,cat4"))


def test_dsprites_anchors_shape_scale_and_position_but_not_orientation():
    ds = get_dataset("dsprites", n_test=40, source="procedural")
    factors = np.array([[2, 5, 17, 0, 31], [0, 0, 39, 16, 8]])  # shape, scale, orientation, posX, posY
    targets, mask = ds.anchor_targets(ds.spec, dsprites.factors_to_index(factors))
    assert mask == (False, True, False, True, True)  # five continuous codes: the shape is a class, not a value
    np.testing.assert_allclose(targets[:, [1, 3, 4]].numpy(), [[1, -1, 1], [-1, -1 + 32 / 31, -1 + 16 / 31]], atol=1e-6)
    spec = LatentSpec.parse("cat3,cont,cont,cont,cont")
    targets, mask = ds.anchor_targets(spec, dsprites.factors_to_index(factors))
    assert mask == (True, True, False, True, True)
    assert targets[:, :3].tolist() == [[0, 0, 1], [1, 0, 0]]
    _, test_factors = ds.test_factors(3)
    test, _ = ds.anchor_targets(spec, np.arange(3), split="test")
    assert test[:, :3].argmax(1).tolist() == test_factors[:, 0].tolist()
    with pytest.raises(DatasetError, match="dsprites anchors a categorical\\(3\\) c1"):
        ds.anchor_codes(LatentSpec.parse("cat4,cat2"))


def test_mnist_anchors_the_first_categorical_code_with_the_label(mnist_dir):
    ds = get_dataset("mnist", data_dir=mnist_dir)
    targets, mask = ds.anchor_targets(ds.spec, np.array([0, 1, 2]))
    assert mask == (True, False, False)
    assert targets[:, :10].argmax(1).tolist() == ds.train_labels[:3].tolist() == [5, 0, 4]
    test, _ = ds.anchor_targets(ds.spec, np.arange(4), split="test")
    assert test[:, :10].argmax(1).tolist() == ds.test_images(4)[1].tolist()
    assert ds.anchor_codes(LatentSpec.parse("cont,cat10")) == {1: 0}
    with pytest.raises(DatasetError, match="needs a categorical\\(10\\) code; codes cont,cont,cont;noise=62 have none"):
        ds.anchor_codes(SPECS["mnist3"])
    with pytest.raises(DatasetError, match="codes cat4,cont;noise=0 have categorical\\(4\\) first"):
        ds.anchor_codes(LatentSpec.parse("cat4,cont"))


def test_a_dataset_without_factors_or_labels_refuses_anchors():
    class Plain(Dataset):
        name, image_shape, spec_name, n_train, n_test = "plain", (1, 8, 8), "shapes", 4, 0

        def _train_images(self, index):
            return torch.zeros(len(index), 1, 8, 8)

        def test_images(self, n=None):
            return torch.zeros(0, 1, 8, 8), None

    with pytest.raises(DatasetError, match="dataset 'plain' has neither factor values nor labels to anchor codes"):
        Plain().anchor_targets(SPECS["shapes"], np.array([0]))
