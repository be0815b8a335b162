"""Label processing on hand-made masks: component types and the 900-px dilation (paper §4.2.1)."""

import numpy as np

from calc_seg.data.labels import LabelParams, process_mask
from common.calcifications import classify_component, grow_small_components, label_components


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_classify_dot_vessel_large():
    p = LabelParams()
    assert classify_component(_disc((40, 40), 20, 20, 3), **p.type_rule) == "dot"
    line = np.zeros((30, 200), bool)
    line[14:17, 10:190] = True  # 180 x 3: long and thin
    assert classify_component(line, **p.type_rule) == "vessel"
    arc = np.zeros((200, 200), bool)  # curved vessel: low axis ratio, still a thin skeleton
    arc[_disc((200, 200), 100, 100, 80) & ~_disc((200, 200), 100, 100, 76)] = True
    arc[100:, :] = False
    assert classify_component(arc, **p.type_rule) == "vessel"
    assert classify_component(_disc((120, 120), 60, 60, 30), **p.type_rule) == "large"  # ~2800 px blob
    short = np.zeros((20, 40), bool)
    short[9:11, 5:25] = True  # elongated but shorter than VESSEL_MIN_LENGTH
    assert classify_component(short, **p.type_rule) == "dot"


def test_thresholds_come_from_params():
    blob = _disc((120, 120), 60, 60, 30)
    assert classify_component(blob, **LabelParams(large_min_area=5000).type_rule) == "dot"


def test_long_but_wide_component_is_not_a_vessel():
    # a 30 x 100 bar: its skeleton (73 px) is longer than VESSEL_MIN_LENGTH, but length**2 / area
    # = 73**2 / 3000 = 1.8 is far below VESSEL_MIN_ELONGATION: a large region, not a vessel
    bar = np.zeros((40, 110), bool)
    bar[5:35, 5:105] = True
    p = LabelParams()
    assert p.vessel_min_length <= 73 and p.vessel_min_elongation > 1.8
    assert classify_component(bar, **p.type_rule) == "large"
    # the elongation threshold is inclusive and read from the parameters: 73**2 / 3000 = 1.7763...
    at = LabelParams(vessel_min_elongation=73 * 73 / 3000)
    assert classify_component(bar, **at.type_rule) == "vessel"
    above = LabelParams(vessel_min_elongation=73 * 73 / 3000 + 1e-3)
    assert classify_component(bar, **above.type_rule) == "large"
    # the area threshold of a large region is inclusive too
    assert classify_component(bar, **LabelParams(large_min_area=3000).type_rule) == "large"
    assert classify_component(bar, **LabelParams(large_min_area=3001).type_rule) == "dot"


def test_single_pixel_dilated_to_min_area():
    m = np.zeros((100, 100), bool)
    m[50, 50] = True
    grown = grow_small_components(label_components(m)[0], 900)
    area = int((grown == 1).sum())
    assert 900 <= area <= 900 + 2 * np.pi * 18  # one disc ring at most
    ys, xs = np.nonzero(grown)
    assert abs(ys.mean() - 50) < 0.5 and abs(xs.mean() - 50) < 0.5  # a disc around the dot


def test_growth_takes_the_smallest_disc_that_reaches_the_area():
    # around one pixel the discs hold 1, 5, 9, 13, 21, ... pixels (all pixels at the radius count):
    # each minimum area gets the first of these counts that reaches it
    m = np.zeros((60, 60), bool)
    m[30, 30] = True
    labels = label_components(m)[0]
    yy, xx = np.mgrid[:60, :60]
    d2 = (yy - 30) ** 2 + (xx - 30) ** 2
    discs = np.array([(d2 <= r2).sum() for r2 in np.unique(d2[d2 <= 15**2])])
    for min_area in range(2, 200):
        area = int((grow_small_components(labels, min_area) == 1).sum())
        assert area == discs[discs >= min_area].min(), min_area


def test_dilation_in_corner_is_clipped_but_reaches_area():
    m = np.zeros((100, 100), bool)
    m[0, 0] = True
    grown = grow_small_components(label_components(m)[0], 900)
    assert (grown == 1).sum() >= 900 and grown.shape == (100, 100)


def test_neighbours_do_not_merge_and_large_stay():
    m = np.zeros((120, 160), bool)
    m[60, 40] = m[60, 52] = True  # two dots 12 px apart: their discs would overlap
    big = _disc(m.shape, 60, 120, 20)  # 1257 px, unchanged
    m |= big
    labels, n = label_components(m)
    grown = grow_small_components(labels, 900)
    assert n == 3
    a, b = labels[60, 40], labels[60, 52]
    for i in (a, b):  # each grows only inside its own Voronoi cell and stays one piece
        assert (grown == i).sum() >= 900
        assert label_components(grown == i)[1] == 1
    # the boundary between the two grown dots is their bisector (x = 46): no pixel crosses it
    assert (np.nonzero(grown == a)[1] <= 46).all() and (np.nonzero(grown == b)[1] >= 46).all()
    big_label = labels[60, 120]
    assert np.array_equal(grown == big_label, labels == big_label)


def test_process_mask_types_exclusion_and_canonical_preference():
    m = np.zeros((200, 300), bool)
    m[20, 20] = True  # dot
    m[100:103, 40:250] = True  # vessel
    m |= _disc(m.shape, 160, 60, 30)  # large
    out = process_mask(m, LabelParams())
    types = sorted(c["type"] for c in out.components)
    assert types == ["dot", "large", "vessel"]
    assert all(c["type_source"] == "shape" for c in out.components)
    assert out.excluded[101, 100] and out.excluded[160, 60] and not out.excluded[20, 20]
    # the vessel (630 px) grew to the minimum area (rows 80-129 hold nothing else); all of its
    # grown extent is excluded, not only the annotated pixels
    grown = out.train_mask[80:130] & ~m[80:130]
    assert grown.sum() >= 900 - 630 and out.excluded[80:130][grown].all()
    assert out.train_mask.sum() > m.sum()  # the dot grew to 900 px
    for c in out.components:  # the point lies in its component
        x, y = c["point"]
        assert out.labels[y, x] == c["label"]
    # calcifications.json says the "vessel" is a dot: the annotation wins
    out2 = process_mask(m, LabelParams(), canonical=[{"calc_type": "dot", "point": [100, 101]}])
    vessel = [c for c in out2.components if c["bbox"][0] == 40][0]
    assert vessel["type"] == "dot" and vessel["type_source"] == "canonical"
    assert not out2.excluded[101, 100]
    out3 = process_mask(m, LabelParams(prefer_canonical_type=False),
                        canonical=[{"calc_type": "dot", "point": [100, 101]}])
    assert out3.excluded[101, 100]


def test_empty_mask():
    out = process_mask(np.zeros((50, 60), bool))
    assert out.components == [] and not out.train_mask.any() and not out.excluded.any()


def test_min_area_is_physical_with_pixel_fallback():
    from common.calcifications import min_area_pixels

    assert min_area_pixels([0.085, 0.085]) == 900  # the paper's 900 px at 85 µm
    assert min_area_pixels(0.05) == 2600  # film scanned at 50 µm: more pixels for the same area
    assert min_area_pixels([0.07, 0.07]) == 1327  # INbreast
    assert min_area_pixels(None) == 900 and min_area_pixels(None, fallback_px=25) == 25
    assert min_area_pixels([0.1, 0.1], min_area_mm2=0, fallback_px=30) == 30
    assert min_area_pixels([0.0, 0.1]) == 900  # an unusable spacing falls back to pixels


def test_process_mask_uses_the_spacing():
    m = np.zeros((200, 200), bool)
    m[100, 100] = True
    params = LabelParams(min_area=50, min_area_mm2=6.5)
    coarse = process_mask(m, params, pixel_spacing=[0.5, 0.5])  # 6.5 / 0.25 = 26 px
    fine = process_mask(m, params, pixel_spacing=[0.1, 0.1])  # 650 px
    none = process_mask(m, params)
    assert (coarse.min_area, fine.min_area, none.min_area) == (26, 650, 50)
    assert 26 <= coarse.train_mask.sum() < 40 and 650 <= fine.train_mask.sum() < 700
    assert 50 <= none.train_mask.sum() < 64
