"""CaloGAN HDF5 format: round trip, slices, dtypes, atomic and streaming writes, chunked reads and
every validation error."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from caloflow.data import DataFormatError, Showers, count_showers, read_showers, write_showers
from caloflow.geometry import LAYER_SHAPES, N_VOXELS, join_layers, split_layers, voxel_centres


def make_showers(n=7, seed=0) -> Showers:
    rng = np.random.default_rng(seed)
    voxels = rng.exponential(10.0, size=(n, N_VOXELS)) * (rng.random((n, N_VOXELS)) < 0.4)
    return Showers(voxels, rng.uniform(1, 100, n), rng.exponential(1.0, (n, 3)))


def write_raw(path, **arrays):
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return path


def valid_arrays(n=5):
    s = make_showers(n)
    layers = split_layers(s.voxels)
    return {
        "layer_0": layers[0],
        "layer_1": layers[1],
        "layer_2": layers[2],
        "energy": s.energy[:, None],
        "overflow": s.overflow,
    }


def test_geometry():
    assert [r * c for r, c in LAYER_SHAPES] == [288, 144, 72]
    phi, eta = voxel_centres(0)
    assert np.allclose(phi, [-160, 0, 160]) and eta[0] == pytest.approx(-237.5) and len(eta) == 96
    phi, eta = voxel_centres(2)
    assert np.allclose(np.diff(phi), 40) and np.allclose(np.diff(eta), 80)
    x = np.arange(3 * N_VOXELS).reshape(3, N_VOXELS)
    assert np.array_equal(join_layers(split_layers(x)), x)
    # the flattening is row-major over (phi, eta) inside each layer
    assert split_layers(x)[1][0, 1, 0] == 288 + 12


def test_round_trip_and_slices(tmp_path):
    s = make_showers(9)
    path = write_showers(tmp_path / "a.hdf5", s, dtype=np.float64)
    r = read_showers(path, dtype=np.float64)
    assert np.array_equal(r.voxels, s.voxels) and np.array_equal(r.energy, s.energy)
    assert np.array_equal(r.overflow, s.overflow)
    part = read_showers(path, 2, 5, dtype=np.float64)
    assert np.array_equal(part.voxels, s.voxels[2:5]) and len(part) == 3
    assert count_showers(path) == 9
    with h5py.File(path) as f:
        assert f["layer_0"].shape == (9, 3, 96) and f["layer_1"].shape == (9, 12, 12)
        assert (
            f["layer_2"].shape == (9, 12, 6)
            and f["energy"].shape == (9, 1)
            and f["overflow"].shape == (9, 3)
        )
    # only the final file is left behind
    assert [p.name for p in tmp_path.iterdir()] == ["a.hdf5"]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32])
def test_any_numeric_dtype_is_read(tmp_path, dtype):
    arrays = {k: v.astype(dtype) for k, v in valid_arrays().items()}
    arrays["energy"] = np.full((5, 1), 50, dtype=dtype)
    r = read_showers(write_raw(tmp_path / "d.hdf5", **arrays))
    assert r.voxels.dtype == np.float32 and np.allclose(
        r.voxels, join_layers([arrays[f"layer_{k}"] for k in range(3)])
    )


def test_overflow_is_optional(tmp_path):
    arrays = valid_arrays()
    del arrays["overflow"]
    r = read_showers(write_raw(tmp_path / "o.hdf5", **arrays))
    assert r.overflow.shape == (5, 3) and not r.overflow.any()


def test_failed_write_leaves_nothing(tmp_path):
    bad = Showers(np.zeros((2, 10)), np.ones(2))
    with pytest.raises(DataFormatError, match="expected"):
        write_showers(tmp_path / "x.hdf5", bad)
    assert list(tmp_path.iterdir()) == []


def _broken(tmp_path, name, mutate):
    arrays = valid_arrays()
    mutate(arrays)
    return write_raw(tmp_path / name, **arrays)


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda a: a.pop("layer_1"), r"key 'layer_1': missing"),
        (lambda a: a.pop("energy"), r"key 'energy': missing"),
        (
            lambda a: a.update(layer_2=np.zeros((5, 12, 5))),
            r"key 'layer_2': wrong shape \(5, 12, 5\), expected \(N, 12, 6\)",
        ),
        (lambda a: a.update(energy=np.ones(5)), r"key 'energy': wrong shape \(5,\)"),
        (
            lambda a: a.update(layer_0=np.zeros((4, 3, 96))),
            r"key 'layer_0': has 4 rows but 'energy' has 5",
        ),
        (
            lambda a: a["layer_1"].__setitem__((3, 2, 2), np.nan),
            r"key 'layer_1': non-finite value .* in row 3",
        ),
        (
            lambda a: a["overflow"].__setitem__((1, 0), np.inf),
            r"key 'overflow': non-finite value .* in row 1",
        ),
        (
            lambda a: a["layer_0"].__setitem__((2, 0, 5), -1.5),
            r"key 'layer_0': negative energy -1.5 MeV in row 2",
        ),
        (
            lambda a: a["energy"].__setitem__((4, 0), 0.0),
            r"key 'energy': incident energy <= 0 .* in row 4",
        ),
    ],
)
def test_validation_errors(tmp_path, mutate, pattern):
    path = _broken(tmp_path, "bad.hdf5", mutate)
    with pytest.raises(DataFormatError, match=pattern) as info:
        read_showers(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message


def test_row_numbers_refer_to_the_file_in_slices(tmp_path):
    path = _broken(tmp_path, "bad.hdf5", lambda a: a["layer_2"].__setitem__((4, 0, 0), -2.0))
    with pytest.raises(DataFormatError, match="in row 4"):
        read_showers(path, start=3)
    assert len(read_showers(path, stop=4)) == 4


def test_missing_and_non_hdf5_files(tmp_path):
    with pytest.raises(DataFormatError, match="no such file"):
        read_showers(tmp_path / "missing.hdf5")
    text = tmp_path / "text.hdf5"
    text.write_text("not hdf5")
    with pytest.raises(DataFormatError, match="not an HDF5 file"):
        read_showers(text)
    with pytest.raises(DataFormatError, match="is a directory"):
        read_showers(tmp_path)


# --- streaming output and chunked input ------------------------------------------------------
def _contents(path):
    with h5py.File(path, "r") as f:
        return {k: (f[k].dtype, f[k].shape, f[k][()].tobytes()) for k in f}, dict(f.attrs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shower_writer_equals_write_showers(tmp_path, dtype):
    from caloflow.data.io import ShowerWriter

    s = make_showers(23, seed=4)
    write_showers(tmp_path / "memory.hdf5", s, dtype=dtype, attrs={"seed": 4})
    with ShowerWriter(
        tmp_path / "stream.hdf5", dtype=dtype, attrs={"seed": 4}, block_rows=4
    ) as out:
        for start, stop in (
            (0, 3),
            (3, 3),
            (3, 4),
            (4, 14),
            (14, 23),
        ):  # across, at and inside blocks
            out.append(s[start:stop])
        assert out.n == 23
    assert _contents(tmp_path / "stream.hdf5") == _contents(tmp_path / "memory.hdf5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.hdf5", "stream.hdf5"]
    with h5py.File(tmp_path / "stream.hdf5") as f:
        assert f["layer_0"].maxshape == (None, 3, 96) and f["layer_0"].chunks is not None


def test_shower_writer_arrays_attrs_and_empty(tmp_path):
    from caloflow.data.io import ShowerWriter

    s = make_showers(5)
    with ShowerWriter(tmp_path / "a.hdf5", expected_rows=5) as out:
        out.append(s.voxels, s.energy)  # overflow defaults to zeros
        out.attrs["redrawn"] = 2  # attributes may be set until the end
    r = read_showers(tmp_path / "a.hdf5")
    assert np.array_equal(r.voxels, s.voxels.astype(np.float32)) and not r.overflow.any()
    assert _contents(tmp_path / "a.hdf5")[1] == {"redrawn": 2}
    with ShowerWriter(tmp_path / "empty.hdf5"):
        pass
    assert (
        count_showers(tmp_path / "empty.hdf5") == 0
        and len(read_showers(tmp_path / "empty.hdf5")) == 0
    )


def test_shower_writer_error_leaves_nothing_and_keeps_the_old_file(tmp_path):
    from caloflow.data.io import ShowerWriter

    old = write_showers(tmp_path / "x.hdf5", make_showers(3))
    before = old.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with ShowerWriter(old) as out:
            out.append(make_showers(10))
            raise RuntimeError("boom")
    with pytest.raises(DataFormatError, match=r"voxels have shape \(2, 10\)"):
        with ShowerWriter(old) as out:
            out.append(np.zeros((2, 10)), np.ones(2))
    with pytest.raises(DataFormatError, match="energy"):
        with ShowerWriter(old) as out:
            out.append(np.zeros((2, N_VOXELS)), np.ones(3))
    with pytest.raises(RuntimeError, match="outside"):
        ShowerWriter(tmp_path / "y.hdf5").append(make_showers(1))
    assert [p.name for p in tmp_path.iterdir()] == ["x.hdf5"] and old.read_bytes() == before


def test_iter_showers_reads_in_blocks(tmp_path):
    from caloflow.data.io import iter_showers

    s = make_showers(11)
    path = write_showers(tmp_path / "a.hdf5", s)
    blocks = list(iter_showers(path, block_rows=4, start=1, stop=10))
    assert [len(b) for b in blocks] == [4, 4, 1]
    joined = Showers.concatenate(blocks)
    assert np.array_equal(joined.voxels, read_showers(path, 1, 10).voxels)
    bad = _broken(tmp_path, "bad.hdf5", lambda a: a["layer_1"].__setitem__((4, 0, 0), -1.0))
    with pytest.raises(DataFormatError, match="in row 4"):
        list(iter_showers(bad, block_rows=2))


def test_disk_space_check(tmp_path):
    from caloflow.data.io import check_disk_space, estimated_file_size
    from caloflow.errors import CaloflowError

    assert estimated_file_size(1000) > 1000 * 508 * 4
    check_disk_space(
        tmp_path / "new" / "x.hdf5", 1000
    )  # a folder still to be created: its parent is measured
    with pytest.raises(
        CaloflowError, match=r"^--n 1000000000000: the output needs about 2\.07 PB on disk but"
    ):
        check_disk_space(tmp_path / "x.hdf5", 10**12)
    with pytest.raises(CaloflowError, match=r"^--energies e.hdf5: "):
        check_disk_space(tmp_path / "x.hdf5", 10**12, what="--energies e.hdf5")
