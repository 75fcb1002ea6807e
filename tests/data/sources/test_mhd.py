import collections

import numpy as np
import pytest
import torch

from pyromv.data import MHD
from pyromv.data.sources import clear_cache


def _release_tuple(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = torch.rand(n, 1, 28, 28, generator=g)
    traj = torch.randn(n, 200, generator=g)
    sound = torch.rand(n, 3, 32, 32, generator=g)
    norm_t = {"min": torch.tensor(-1.0), "max": torch.tensor(1.0)}
    norm_a = {"min": torch.tensor(0.0), "max": torch.tensor(5.0)}
    return labels, images, traj, sound, norm_t, norm_a


@pytest.fixture
def mhd_root(tmp_path):
    clear_cache()
    root = tmp_path / "MHD"
    root.mkdir()
    content = {s: _release_tuple(n, k) for k, (s, n) in enumerate((("train", 12), ("test", 6)))}
    for s, c in content.items():
        torch.save(c, root / f"mhd_{s}.pt")
    yield root, content
    clear_cache()


def _nexus_unstack(sound):
    """The Nexus code's per-sample layout: cat the 3 chunks on dim 0, add a channel, transpose."""
    return torch.stack(
        [
            torch.cat([s[i] for i in range(s.size(0))], 0).unsqueeze(0).permute(0, 2, 1)
            for s in sound
        ]
    )


def test_mhd_reads_the_release_tuple(mhd_root):
    root, content = mhd_root
    cfg = MHD(root=str(root))
    ds = cfg.load("train")
    labels, images, traj, sound, _, _ = content["train"]
    assert ds.names == ["image", "sound", "trajectory", "label"]
    torch.testing.assert_close(ds.data["image"], images)
    torch.testing.assert_close(ds.data["trajectory"], traj)
    torch.testing.assert_close(ds.data["sound"], _nexus_unstack(sound))
    assert ds.data["sound"].shape == (12, 1, 32, 96)
    torch.testing.assert_close(ds.data["label"][:, 0], labels)
    torch.testing.assert_close(ds.labels, labels)
    assert {m.name: m.shape for m in cfg.modalities()} == {
        "image": (1, 28, 28),
        "sound": (1, 32, 96),
        "trajectory": (200,),
        "label": (1,),
    }
    stacked = MHD(root=str(root), unstack_sound=False, label_modality=False)
    ds = stacked.load("test")
    assert ds.names == ["image", "sound", "trajectory"]
    torch.testing.assert_close(ds.data["sound"], content["test"][3])
    assert len(MHD(root=str(root), max_rows=5).load("train")) == 5


def test_mhd_errors(tmp_path, mhd_root):
    with pytest.raises(FileNotFoundError, match=r"mhd_train\.pt"):
        MHD(root=str(tmp_path / "nothing")).load("train")
    root, content = mhd_root
    bad = list(content["test"])
    bad[2] = torch.randn(6, 150)
    torch.save(tuple(bad), root / "mhd_test.pt")
    with pytest.raises(ValueError, match=r"mhd_test\.pt: trajectories must have shape \(6, 200\)"):
        MHD(root=str(root)).load("test")
    torch.save(content["test"][:2], root / "mhd_test.pt")
    with pytest.raises(ValueError, match="expected a tuple"):
        MHD(root=str(root)).load("test")
    # a pickled object outside tensors and containers is refused, its code never runs
    torch.save(collections.Counter(a=1), root / "mhd_test.pt")
    with pytest.raises(ValueError, match=r"mhd_test\.pt"):
        MHD(root=str(root)).load("test")
    bad = list(content["test"])
    bad[0] = torch.full((6,), 11)
    torch.save(tuple(bad), root / "mhd_test.pt")
    with pytest.raises(ValueError, match="0..9"):
        MHD(root=str(root)).load("test")
    bad[0] = content["test"][0]
    bad[1] = bad[1].clone()
    bad[1][0, 0, 0, 0] = float("nan")
    torch.save(tuple(bad), root / "mhd_test.pt")
    with pytest.raises(ValueError, match="non-finite"):
        MHD(root=str(root)).load("test")
    assert np.isfinite(content["train"][1].numpy()).all()
