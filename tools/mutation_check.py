"""A small mutation check of the metric, pre-processing, label and split code.

Each mutant is a one-line change of a source file (an exact fragment and its replacement) and the
targeted tests that should notice it. For every mutant the file is changed in place, the named tests
run (``pytest -x -q``) with a time limit, and the file is put back byte for byte (its SHA-256 and
modification time are checked afterwards). A mutant is *killed* when the tests fail (or run past the
limit); a *survivor* is a change that no test notices, i.e. a missing assertion.

Usage::

    python tools/mutation_check.py              # every mutant; the last line is a JSON summary
    python tools/mutation_check.py --list       # the mutants, without running anything
    python tools/mutation_check.py --only NAME  # one mutant (repeatable; shell wildcards: 'ap-*')

The tests of every mutant first run once on the unchanged tree; a failure there stops the check (a
mutant cannot be judged against tests that fail anyway). Exit status: 0 when the kill rate reaches
``--min-rate`` (default 0.9), 1 below it, 2 on a broken mutant list or failing baseline.

While a mutant is applied the source file really is changed: do not run other tests of these modules
at the same time.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

MB = "tests/common/test_metrics_boxes.py"
MM = "tests/common/test_metrics_masks.py"
PP = "tests/common/test_preprocess.py"
LB = "tests/calc_seg/test_calc_seg_labels.py"
CT = "tests/datasets/test_canonical_tools.py"
INF = "tests/calc_seg/test_calc_seg_inference.py"
NL = "tests/mass_det/test_mass_det_model.py"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    original: str  # exact fragment; it must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # pytest node ids (or files) that should fail on the mutant


def _m(name, file, original, replacement, *tests) -> Mutant:
    return Mutant(name, file, original, replacement, tuple(tests))


AP, MATCH, FROC = "common/metrics/ap.py", "common/metrics/matching.py", "common/metrics/froc.py"
BREAST, ART, LAT = "common/breast.py", "common/artifacts.py", "common/laterality.py"
CALC, LABELS, SPLITS = "common/calcifications.py", "calc_seg/data/labels.py", "datasets/splits.py"

MUTANTS: list[Mutant] = [
    # ---------------------------------------------------------------- metrics: COCO / VOC AP
    _m("ap-tied-iou-first-gt", AP,
       "best == best.max())[-1]", "best == best.max())[0]",
       f"{MB}::test_ap_tied_iou_takes_the_last_gt_like_pycocotools"),
    _m("ap-iou-strict", AP,
       "over = ious >= thr", "over = ious > thr",
       f"{MB}::test_ap_iou_of_exactly_one_half_is_a_match"),
    _m("ap-ignored-gt-not-last", AP,
       "for part in (slice(0, n_keep), slice(n_keep, G)):", "for part in (slice(0, G),):",
       f"{MB}::test_ap50_coco_equals_pycocotools_on_random_cases"),
    _m("ap-no-max-dets", AP,
       "        order = order[:max_dets]", "        order = order",
       f"{MB}::test_ap50_coco_tie_order_truncation_and_crowd_match_pycocotools"),
    _m("ap-ties-reversed", AP,
       'order = np.argsort(-sc, kind="mergesort")',
       'order = np.argsort(sc, kind="mergesort")[::-1]',
       f"{MB}::test_ap50_coco_tie_order_truncation_and_crowd_match_pycocotools"),
    _m("ap-crowd-matched-once", AP,
       "cand = (~gt_taken | crowd) & over[d]", "cand = ~gt_taken & over[d]",
       f"{MB}::test_ap50_coco_tie_order_truncation_and_crowd_match_pycocotools"),
    _m("ap-coco-no-envelope", AP,
       "    pr = np.maximum.accumulate(pr[::-1])[::-1]  # precision envelope", "    pass",
       f"{MB}::test_ap_precision_envelope_lifts_an_early_false_positive"),
    _m("ap-coco-recall-right", AP,
       'inds = np.searchsorted(rc, REC_THRS, side="left")',
       'inds = np.searchsorted(rc, REC_THRS, side="right")',
       f"{MB}::test_ap_hand_worked_duplicate_is_false_positive_for_ap_only"),
    # (reading the envelope at mpre[i] instead of mpre[i + 1] in the VOC sum is an equivalent
    # mutant: a step of recall is a true positive, whose precision is never below that of the
    # point before it, so the envelope is equal at both ends of every step)
    _m("ap-voc-no-envelope", AP,
       "    mpre = np.maximum.accumulate(mpre[::-1])[::-1]", "    pass",
       f"{MB}::test_ap_precision_envelope_lifts_an_early_false_positive"),
    # ---------------------------------------------------------------- metrics: matching
    _m("iou-crowd-union", MATCH,
       "union = np.where(np.asarray(gt_crowd, dtype=bool)[None, :], da, union)", "pass",
       f"{MB}::test_box_iou_matches_pycocotools_including_crowd"),
    _m("center-border-excluded", MATCH,
       "(cx <= gt[None, :, 0] + gt[None, :, 2])", "(cx < gt[None, :, 0] + gt[None, :, 2])",
       f"{MB}::test_center_rule_border_included_and_iou_rule_exact_threshold"),
    _m("froc-iou-strict", MATCH,
       "return box_iou(dt, gt, crowd) >= thr", "return box_iou(dt, gt, crowd) > thr",
       f"{MB}::test_center_rule_border_included_and_iou_rule_exact_threshold"),
    _m("froc-iop-strict", MATCH,
       "return box_iop(dt, gt) >= thr", "return box_iop(dt, gt) > thr",
       f"{MB}::test_center_rule_border_included_and_iou_rule_exact_threshold"),
    _m("crowd-hits-counted-fp", MATCH,
       "pred_ignored = ~pred_hit & hits[:, crowd].any(axis=1)",
       "pred_ignored = ~pred_hit & False",
       f"{MB}::test_crowd_region_is_not_a_lesion_and_its_hits_are_ignored"),
    _m("lesion-score-min", MATCH,
       "return np.where(hits, scores[:, None], -np.inf).max(axis=0)",
       "return np.where(hits, scores[:, None], np.inf).min(axis=0)",
       f"{MB}::test_one_prediction_finds_every_lesion_it_hits_and_lesion_scores_are_max"),
    _m("mask-iop-strict", MATCH,
       "tp = iop >= iop_thr", "tp = iop > iop_thr",
       f"{MM}::test_iop_threshold_half_outside_prediction_is_false_positive"),
    _m("mask-binarize-strict", MATCH,
       "label_components(prob >= binarize)", "label_components(prob > binarize)",
       f"{MM}::test_eight_connectivity_binarize_and_max_score"),
    _m("type-point-last-wins", MATCH,
       "if k > 0 and types[k - 1] is None:", "if k > 0:",
       f"{MM}::test_first_listed_type_point_of_a_component_wins"),
    # ---------------------------------------------------------------- metrics: FROC
    _m("froc-lowest-threshold-dropped", FROC,
       "np.append(s_sorted[1:] != s_sorted[:-1], True)",
       "np.append(s_sorted[1:] != s_sorted[:-1], False)",
       f"{MB}::test_froc_hand_worked_with_tie_duplicate_hit_and_lesion_free_image"),
    _m("froc-lesion-at-threshold", FROC,
       'n_found = l_cum[np.searchsorted(-l_sorted, -thresholds, side="right")]',
       'n_found = l_cum[np.searchsorted(-l_sorted, -thresholds, side="left")]',
       f"{MB}::test_froc_hand_worked_with_tie_duplicate_hit_and_lesion_free_image"),
    _m("froc-fp-weights-ignored", FROC,
       "fp_cum = np.cumsum((fp * pw)[order])", "fp_cum = np.cumsum(fp[order].astype(float))",
       f"{MB}::test_froc_weights_count_like_repeated_items"),
    _m("froc-fp-level-strict", FROC,
       "ok = fppi <= float(k)", "ok = fppi < float(k)",
       f"{MB}::test_froc_hand_worked_with_tie_duplicate_hit_and_lesion_free_image"),
    # ---------------------------------------------------------------- pre-processing: breast region
    _m("breast-first-component", BREAST,
       "best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))", "best = 1",
       f"{PP}::test_breast_mask_ignores_flecks_that_come_first_in_raster_order"),
    _m("breast-final-first-component", BREAST,
       "cv2.compare(labels, int(np.argmax(areas[1:]) + 1), cv2.CMP_EQ)",
       "cv2.compare(labels, 1, cv2.CMP_EQ)",
       f"{PP}::test_breast_mask_ignores_flecks_that_come_first_in_raster_order"),
    _m("breast-background-included", BREAST,
       "background, cv2.CMP_GT)", "background, cv2.CMP_GE)",
       f"{PP}::test_breast_mask_removes_text_and_markers"),
    _m("breast-band-not-refined", BREAST,
       "mask = cv2.bitwise_or(inner_full, cv2.bitwise_and(outer_full, fg255))",
       "mask = cv2.bitwise_or(inner_full, outer_full)",
       f"{PP}::test_breast_mask_fills_holes_and_handles_large_images"),
    _m("breast-recovery-ignores-foreground", BREAST,
       "mask = cv2.bitwise_or(region, cv2.bitwise_and(grown, coarse))",
       "mask = cv2.bitwise_or(region, grown)",
       f"{PP}::test_breast_mask_ignores_flecks_that_come_first_in_raster_order"),
    # ---------------------------------------------------------------- pre-processing: artifacts
    _m("artifact-floor-inclusive", ART,
       "cols = np.flatnonzero(r > threshold)", "cols = np.flatnonzero(r >= threshold)",
       f"{PP}::test_artifact_excess_must_beat_the_floor_strictly"),
    _m("artifact-floor-dropped", ART,
       "threshold = max(k_spread * spread, float(min_excess))",
       "threshold = min(k_spread * spread, float(min_excess))",
       f"{PP}::test_artifact_excess_must_beat_the_floor_strictly"),
    _m("artifact-median-truncated", ART,
       "med = (neigh[3] + neigh[4] + 1) // 2", "med = (neigh[3] + neigh[4]) // 2",
       f"{PP}::test_artifact_median_rounds_half_up"),
    _m("artifact-wide-runs-kept", ART,
       "if run.size <= max_run and r[run].min() >= sharpness * shoulder:",
       "if r[run].min() >= sharpness * shoulder:",
       f"{PP}::test_wide_vertical_structures_are_not_artifacts"),
    _m("artifact-sharpness-strict", ART,
       "r[run].min() >= sharpness * shoulder", "r[run].min() > sharpness * shoulder",
       f"{PP}::test_artifact_pulse_must_be_sharp_inside_and_few"),
    # (dropping the border-column filter is an equivalent mutant: with the median's "nearest"
    # padding 8 of the 15 values around the first or last column are that column itself, so its
    # excess is never positive; the filter is a guard)
    _m("artifact-spread-ignored", ART,
       "spread = 1.4826 * float(np.median(np.abs(r - np.median(r))))", "spread = 0.0",
       f"{PP}::test_artifact_excess_must_beat_the_floor_strictly"),
    _m("artifact-too-many-columns", ART,
       "if cols.size > max_columns:", "if cols.size > max_columns + 1:",
       f"{PP}::test_artifact_pulse_must_be_sharp_inside_and_few"),
    _m("artifact-dots-not-counted", ART,
       "cols = [c for c, n in zip(cols, dots) if n >= min_dots]",
       "cols = [c for c, n in zip(cols, dots) if n >= 0]",
       f"{PP}::test_calcification_dots_do_not_trigger"),
    _m("artifact-max-neighbour", ART,
       "cv2.min(out, d, dst=out)", "cv2.max(out, d, dst=out)",
       f"{PP}::test_min_neighbour_difference_hand_computed"),
    _m("artifact-mask-ignored", ART,
       "out[m, x] = med[m].astype(np.uint8)", "out[:, x] = med.astype(np.uint8)",
       f"{PP}::test_artifact_repair_is_the_neighbourhood_median"),
    # ---------------------------------------------------------------- pre-processing: laterality
    _m("laterality-tie-flips", LAT,
       'return "left" if left >= right else "right"', 'return "left" if left > right else "right"',
       f"{PP}::test_laterality_flip_and_inverse"),
    _m("laterality-point-off-by-one", LAT,
       "p[:, 0] = width - 1 - p[:, 0]", "p[:, 0] = width - p[:, 0]",
       f"{PP}::test_laterality_flip_and_inverse"),
    _m("laterality-xywh-width", LAT,
       "b[:, 0] = width - b[:, 0] - b[:, 2]", "b[:, 0] = width - b[:, 0]",
       f"{PP}::test_laterality_flip_and_inverse"),
    _m("laterality-unflip-always", LAT,
       "return flip_boxes_xyxy(b, width) if flipped else b.copy()",
       "return flip_boxes_xyxy(b, width)",
       f"{PP}::test_laterality_flip_and_inverse"),
    # ---------------------------------------------------------------- calcification labels
    _m("vessel-elongation-ignored", CALC,
       "if length >= vessel_min_length and length * length / area >= vessel_min_elongation:",
       "if length >= vessel_min_length:",
       f"{LB}::test_long_but_wide_component_is_not_a_vessel"),
    _m("vessel-elongation-strict", CALC,
       "length * length / area >= vessel_min_elongation",
       "length * length / area > vessel_min_elongation",
       f"{LB}::test_long_but_wide_component_is_not_a_vessel"),
    _m("large-area-strict", CALC,
       'return "large" if area >= large_min_area else "dot"',
       'return "large" if area > large_min_area else "dot"',
       f"{LB}::test_long_but_wide_component_is_not_a_vessel"),
    _m("components-4-connected", CALC,
       "n, labels = cv2.connectedComponents(m, connectivity=8, ltype=cv2.CV_32S)",
       "n, labels = cv2.connectedComponents(m, connectivity=4, ltype=cv2.CV_32S)",
       f"{CT}::test_calc_components_8_connectivity_and_types"),
    _m("min-area-truncated", CALC,
       "return max(1, int(round(min_area_mm2 / (r * c))))",
       "return max(1, int(min_area_mm2 / (r * c)))",
       LB),
    _m("growth-one-ring-short", CALC,
       "r = d[min(min_area, d.size) - 1]", "r = d[min(min_area, d.size) - 2]",
       f"{LB}::test_growth_takes_the_smallest_disc_that_reaches_the_area"),
    _m("growth-leaves-voronoi-cell", CALC,
       "grow = cell & (dist <= r)", "grow = dist <= r",
       f"{LB}::test_neighbours_do_not_merge_and_large_stay"),
    _m("labels-elongation-param-dropped", LABELS,
       '"vessel_min_elongation": self.vessel_min_elongation,',
       '"vessel_min_elongation": VESSEL_MIN_ELONGATION,',
       f"{LB}::test_long_but_wide_component_is_not_a_vessel"),
    _m("labels-exclusion-not-grown", LABELS,
       "excluded = np.isin(grown, excluded_ids)", "excluded = np.isin(labels, excluded_ids)",
       f"{LB}::test_process_mask_types_exclusion_and_canonical_preference"),
    _m("labels-canonical-type-ignored", LABELS,
       "from_ann = _canonical_types(labels, canonical) if params.prefer_canonical_type else {}",
       "from_ann = {}",
       LB),
    # ---------------------------------------------------------------- patient split
    _m("split-never-shuffled", SPLITS,
       "order = np.random.default_rng(seed).permutation(len(ids))",
       "order = np.arange(len(ids))",
       f"{CT}::test_patient_split_is_shuffled_by_the_seed"),
    _m("split-ratios-over-images", SPLITS,
       "ids = sorted({str(p) for p in patient_ids})", "ids = sorted(str(p) for p in patient_ids)",
       f"{CT}::test_split_ratios_count_patients_not_images"),
    _m("split-counts-truncated", SPLITS,
       "n_train = int(round(ratios[0] * len(ids)))", "n_train = int(ratios[0] * len(ids))",
       f"{CT}::test_split_ratios_count_patients_not_images"),
    # ---------------------------------------------------------------- model code named in the issue
    _m("calc-skip-background-forced", "calc_seg/inference.py",
       "if breast_mask is not None and skip_background:", "if breast_mask is not None:",
       f"{INF}::test_skip_background_false_evaluates_every_tile_despite_the_mask"),
    _m("calc-breast-cover-misses-last-column", "calc_seg/inference.py",
       "int(last[y : y + window].max()) + 1", "int(last[y : y + window].max())",
       f"{INF}::test_breast_placement_covers_every_breast_pixel_with_no_more_tiles"),
    _m("calc-breast-cover-end-anchor-overshoots", "calc_seg/inference.py",
       "return [max(start + span - window - k * stride, 0)",
       "return [max(start + span - window - k * window, 0)",
       f"{INF}::test_span_steps_cover_the_span_inside_the_frame"),
    _m("nonlocal-divides-by-n", "mass_det/modeling/nonlocal_block.py",
       "/ phi.shape[-1]  # (B, N, M)", "/ theta.shape[-1]  # (B, N, M)",
       f"{NL}::test_nonlocal_subsampled_affinity_is_normalised_by_the_pooled_positions"),
]


# ------------------------------------------------------------------------------------ machinery
class _Stop(Exception):
    """Raised from a signal handler so that the restore in ``finally`` still runs."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_list(mutants: list[Mutant]) -> list[str]:
    """Problems of the mutant list: unknown files, fragments absent or repeated, no-op changes."""
    problems, names = [], set()
    for m in mutants:
        if m.name in names:
            problems.append(f"{m.name}: duplicate name")
        names.add(m.name)
        path = REPO / m.file
        if not path.is_file():
            problems.append(f"{m.name}: no file {m.file}")
            continue
        n = path.read_text(encoding="utf-8").count(m.original)
        if n != 1:
            problems.append(f"{m.name}: the fragment occurs {n} times in {m.file}")
        if m.original == m.replacement:
            problems.append(f"{m.name}: the replacement equals the original")
        if not m.tests:
            problems.append(f"{m.name}: no tests")
        for t in m.tests:
            if not (REPO / t.split("::")[0]).is_file():
                problems.append(f"{m.name}: no test file {t.split('::')[0]}")
    return problems


def _pytest(tests: tuple[str, ...] | list[str], timeout: float) -> tuple[str, float, str]:
    """Run the tests; (outcome "pass" | "fail" | "timeout" | "error", seconds, output tail)."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = None
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        log.seek(0)
        tail = log.read().decode("utf-8", "replace")[-3000:]
    dt = time.perf_counter() - t0
    if rc is None:
        return "timeout", dt, tail
    # 0: passed; 1: a test failed; 2-4: interrupted / internal / usage error; 5: nothing collected
    return {0: "pass", 1: "fail"}.get(rc, "error"), dt, tail


def run_mutant(m: Mutant, timeout: float) -> tuple[str, float, str]:
    """Apply ``m`` in place, run its tests, restore the file exactly; (outcome, seconds, output)."""
    path = REPO / m.file
    original = path.read_bytes()
    digest = _sha256(original)
    st = path.stat()
    text = original.decode("utf-8")
    if text.count(m.original) != 1:
        raise RuntimeError(f"{m.name}: fragment not found exactly once in {m.file}")
    mutated = text.replace(m.original, m.replacement).encode("utf-8")
    # a cached .pyc is trusted when the source's mtime (whole seconds) and size match: give every
    # mutant its own mtime so that no bytecode of another version of the file is ever reused
    shift = 1000 + int(_sha256(mutated)[:8], 16) % 1_000_000
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}

    def stop(signum, frame):
        raise _Stop(f"signal {signum}")

    for s in previous:
        signal.signal(s, stop)
    try:
        path.write_bytes(mutated)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + shift * 1_000_000_000))
        return _pytest(m.tests, timeout)
    finally:
        path.write_bytes(original)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        for s, h in previous.items():
            signal.signal(s, h)
        if _sha256(path.read_bytes()) != digest:
            raise RuntimeError(f"{m.file} was not restored exactly after {m.name}")


def _select(names: list[str] | None) -> list[Mutant]:
    if not names:
        return list(MUTANTS)
    picked = [m for m in MUTANTS if any(fnmatch.fnmatchcase(m.name, n) for n in names)]
    unknown = [n for n in names if not any(fnmatch.fnmatchcase(m.name, n) for m in MUTANTS)]
    if unknown:
        raise SystemExit(f"no mutant named {', '.join(unknown)} (see --list)")
    return picked


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--only", action="append", metavar="NAME",
                    help="run only this mutant (repeatable; shell-style wildcards)")
    ap.add_argument("--timeout", type=float, default=180.0,
                    help="seconds per pytest run (default 180); running past it counts as killed")
    ap.add_argument("--min-rate", type=float, default=0.9,
                    help="kill rate below which the exit status is 1 (default 0.9)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the run of the tests on the unchanged tree")
    args = ap.parse_args(argv)

    problems = check_list(MUTANTS)
    if problems:
        print("broken mutant list:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    mutants = _select(args.only)
    if args.list:
        for m in mutants:
            print(f"{m.name:38s} {m.file}\n    - {m.original}\n    + {m.replacement}\n"
                  f"    tests: {' '.join(m.tests)}")
        print(f"{len(mutants)} mutants")
        return 0

    if not args.no_baseline:
        tests = list(dict.fromkeys(t for m in mutants for t in m.tests))
        outcome, dt, tail = _pytest(tests, args.timeout * 2)
        print(f"baseline: {len(tests)} test targets {outcome} in {dt:.1f} s", flush=True)
        if outcome != "pass":
            print(tail, file=sys.stderr)
            return 2

    rows = []
    t_all = time.perf_counter()
    for i, m in enumerate(mutants, 1):
        outcome, dt, tail = run_mutant(m, args.timeout)
        killed = outcome in ("fail", "timeout")
        status = {"fail": "killed", "timeout": "killed (timeout)", "pass": "SURVIVED",
                  "error": "ERROR"}[outcome]
        rows.append((m, status, killed, dt))
        print(f"[{i:2d}/{len(mutants)}] {m.name:38s} {status:16s} {dt:5.1f} s", flush=True)
        if outcome == "error":
            print("    " + "\n    ".join(tail.strip().splitlines()[-15:]), flush=True)

    killed = sum(r[2] for r in rows)
    print()
    print(f"{'mutant':38s} {'file':38s} {'result':16s} {'s':>5s}")
    for m, status, _, dt in rows:
        print(f"{m.name:38s} {m.file:38s} {status:16s} {dt:5.1f}")
    rate = killed / len(rows) if rows else 0.0
    took = time.perf_counter() - t_all
    print(f"\n{killed}/{len(rows)} killed ({100 * rate:.0f} %) in {took:.0f} s")
    summary = {
        "mutants": len(rows),
        "killed": killed,
        "kill_rate": round(rate, 4),
        "survivors": [m.name for m, _, k, _ in rows if not k],
    }
    print(json.dumps(summary))
    return 0 if rate >= args.min_rate else 1


if __name__ == "__main__":
    sys.exit(main())
