"""FAC maths on hand-made activations."""

from __future__ import annotations

import numpy as np
import pytest

from facsynth.errors import InputError
from facsynth.records import SampleFeatures
from facsynth.tools.fac import CoverageCounter, coverage, read_feature_ids


def sf(ids, acts, n_tokens=10):
    return SampleFeatures("h", n_tokens, np.asarray(ids, np.int32), np.asarray(acts, np.float32))


def test_fac_on_a_small_hand_made_case():
    # 6 features; F = {0, 1, 2, 3}; sample A fires 0 (0.3) and 1 (2.0), sample B fires 1 (0.1) and 5 (9.0)
    counter = CoverageCounter(6, [0.0, 0.5]).update([sf([0, 1], [0.3, 2.0]), sf([1, 5], [0.1, 9.0], 30)])
    at0 = coverage(counter, np.array([0, 1, 2, 3]), 0.0)
    assert (at0.covered, at0.total, at0.fac, at0.missing) == (2, 4, 0.5, [2, 3])
    at05 = coverage(counter, np.array([0, 1, 2, 3]), 0.5)
    assert (at05.covered, at05.fac, at05.missing) == (1, 0.25, [0, 2, 3])
    stats = {s.feature: (s.hits, s.max_act) for s in at0.stats}
    assert stats[1] == (2, pytest.approx(2.0)) and stats[2] == (0, 0.0)
    # length-controlled views: 2 F-features over 40 tokens; 4 active (any) over 40 tokens, 2 per sample
    assert at0.features_per_1k_tokens == pytest.approx(50.0)
    assert at0.mean_active_per_1k_tokens == pytest.approx(100.0)
    assert at0.mean_active_per_sample == pytest.approx(2.0)


def test_feature_set_as_mask_and_out_of_range_ids():
    counter = CoverageCounter(4, [0.0]).update([sf([3], [1.0])])
    mask = np.array([False, False, True, True])
    assert coverage(counter, mask, 0.0).fac == 0.5
    with pytest.raises(InputError, match="feature id 7 is out of range"):
        coverage(counter, np.array([1, 7]), 0.0)
    with pytest.raises(InputError, match="not counted"):
        coverage(counter, mask, 1.0)
    with pytest.raises(InputError, match="empty"):
        coverage(counter, np.zeros(4, bool), 0.0)


@pytest.mark.parametrize(
    "content",
    ["3\n1\n# comment\n2 3\n", "[3, 1, 2]", "FeatureID\tSummary\tWords\n1\tx\ty\n2\tx\ty\n3\tz\tw\n"],
)
def test_feature_files(tmp_path, content):
    path = tmp_path / "f.txt"
    path.write_text(content)
    assert read_feature_ids(path).tolist() == [1, 2, 3]


def test_bad_feature_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_feature_ids(tmp_path / "nope.txt")
    (tmp_path / "e.txt").write_text("  \n")
    with pytest.raises(InputError, match="no feature ids"):
        read_feature_ids(tmp_path / "e.txt")
    (tmp_path / "b.txt").write_text("1\nseven\n")
    with pytest.raises(InputError, match="integers"):
        read_feature_ids(tmp_path / "b.txt")
    (tmp_path / "u.txt").write_bytes(b"1\n\xff\xfe\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_feature_ids(tmp_path / "u.txt")
