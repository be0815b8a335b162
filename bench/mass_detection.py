"""Mass detector benchmark: CPU inference time (Table 1 models, fast path, stock R50-FPN), quality.

    python bench/mass_detection.py [--speed [--choices] | --quality] [--threads 2] [--repeats 5]
                             [--quality-iters N] [--quality-studies N] [--out bench_out/mass_det]
                             [--opts KEY VALUE ...]
    python bench/mass_detection.py --bundle BUNDLE --inputs IMAGE_OR_FOLDER ... [--threads 2]

Without ``--speed``, ``--quality`` or ``--bundle`` the first two parts run.

Speed: seconds per image on the CPU at the configured test size (short edge ``INPUT.MIN_SIZE_TEST``
= 1200, a 2560 x 3328 detector aspect, so 1200 x 1560 px), randomly initialised weights (the cost
does not depend on them), best of ``--repeats`` interleaved runs after one warm-up (on a shared CPU
other processes only add time, so the minimum is the estimate; medians and CPU times are printed
too). Models: the three Table 1 configs as built (float32 eager; target FPN+FL+NL <= 1.15 x FPN),
the FPN+FL+NL model with the predictor's fast path (``MODEL.INFERENCE``: folded FrozenBN,
channels-last, bf16 backbone and RPN head where the CPU computes bf16 natively) and detectron2's
stock COCO Faster R-CNN R50-FPN (``COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml``, float32 eager) on
the same input; target: fast FPN+FL+NL <= 0.6 x the stock model. Per-stage seconds (ResNet stages,
the non-local block, FPN, RPN head, proposal generation, ROI heads) of the FL+NL model, its fast
path and the stock model, and the largest differences between the fast path's raw outputs and
float32 eager (same weights) are printed, and go into the JSON line (``stages``,
``fast_over_coco``, ``speed.fast_vs_fp32_raw``). ``--choices`` adds the FL+NL model with each
subset of the fast path (:data:`FAST_PATH_CHOICES`), timed in the same interleaved runs.

Bundle (``--bundle``): the predictor's fast path against float32 eager on a trained model bundle's
mass detector (``deeplima bundle``; ``make demo`` writes one) and images of it: seconds per image,
|Δscore| and box differences of paired detections, and whether the findings at each of the
bundle's operating points are the same (:func:`bench_bundle`).

Quality: the CPU recipe ``faster_rcnn_R18_FPN_FL_NL_scratch_cpu.yaml`` (the paper's FPN + focal loss
+ non-local detector as a ResNet-18 with GroupNorm, from random initialisation: no ImageNet weights
offline) trained as shipped on synthetic studies of the demo's size (640 x 512), only the data, the
run length and the output folder set here; evaluated on the held-out (val + test) images: AP50,
recall, sensitivity at 1/2/5/10 FP/image (target: >= 0.80 at 1 FP/image) and, at the 1 FP/image
threshold, the sensitivity per mass contrast level of the generator (low masses hide in dense
breasts). The last line printed is a JSON object; with ``--quality`` its top level also carries
``ap50_coco``, ``recall`` and ``sensitivity_at_fp``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2 import model_zoo  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

import mass_det  # noqa: E402,F401  (registers the project's backbones, ROI heads and RPN)
from common.canonical import load_canonical_dicts  # noqa: E402
from common.inputs import collect_inputs  # noqa: E402
from common.io import read_json  # noqa: E402
from common.metrics.matching import match_image_boxes  # noqa: E402
from common.preprocess import preprocess  # noqa: E402
from datasets.synthetic import generate  # noqa: E402
from deeplima.bundle import load_bundle  # noqa: E402
from deeplima.operating_point import threshold_at_fp  # noqa: E402
from mass_det.ablate import CONFIG_DIR, build_run_cfg, run_row  # noqa: E402
from mass_det.config import get_mass_det_cfg  # noqa: E402
from mass_det.inference import MassPredictor, prepare_for_inference  # noqa: E402
from mass_det.modeling import NonLocalBlock2D  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]  # the default --out is the repository's bench_out/
CONFIGS = {
    "vanilla": "faster_rcnn_R50_C4_vanilla.yaml",
    "fpn": "faster_rcnn_R50_FPN.yaml",
    "fpn_fl_nl": "faster_rcnn_R50_FPN_FL_NL.yaml",
}
# The reference of the fast path's target (FL+NL with MODEL.INFERENCE <= 0.6 x this model).
STOCK_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
FAST_TARGET = 0.6
# MODEL.INFERENCE with every switch off: the model as built, float32 eager.
FAST_PATH_OFF = ["MODEL.INFERENCE.BF16", "False", "MODEL.INFERENCE.CHANNELS_LAST", "False",
                 "MODEL.INFERENCE.FOLD_FROZEN_BN", "False"]
# Subsets of the fast path measured by --speed --choices (each name lists what is on).
FAST_PATH_CHOICES = {
    "fpn_fl_nl_fold": ["MODEL.INFERENCE.BF16", "False", "MODEL.INFERENCE.CHANNELS_LAST", "False"],
    "fpn_fl_nl_fold_cl": ["MODEL.INFERENCE.BF16", "False"],
    "fpn_fl_nl_fold_bf16": ["MODEL.INFERENCE.CHANNELS_LAST", "False"],
    "fpn_fl_nl_cl_bf16": ["MODEL.INFERENCE.FOLD_FROZEN_BN", "False"],
}
# The CPU recipe (ResNet-18 GN from scratch, FPN + focal loss + non-local), trained as shipped.
QUALITY_CONFIG = "faster_rcnn_R18_FPN_FL_NL_scratch_cpu.yaml"
# Data of the quality run; its length is the config's SOLVER.MAX_ITER unless --quality-iters says.
QUALITY_STUDIES = 120


def _stock_coco_cfg():
    """Detectron2's stock COCO Faster R-CNN R50-FPN (``faster_rcnn_R_50_FPN_3x.yaml``) on the CPU:
    FrozenBN ResNet-50, FPN, 1000 proposals, 80 classes, float32 eager."""
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(STOCK_CONFIG), allow_unsafe=False)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


class StageTimer:
    """Seconds per stage of detectron2 R-CNN forward passes, from forward pre/post hooks (the CPU
    computes synchronously, so wall time between hooks is the stage's time).

    Stages of an FPN model: ``stem``, ``res2`` ... ``res5`` (res5 includes the non-local block),
    ``nonlocal`` (the block alone), ``fpn`` (backbone minus the bottom-up ResNet), ``rpn_head``
    (its convolutions), ``proposals`` (anchors, top-k, decoding, NMS), ``box_pooler``,
    ``box_head``, ``box_predictor`` (the two linear layers), ``box_postprocess`` (sigmoid /
    softmax, box decoding, per-class NMS), ``other`` (input normalisation and padding, resizing
    the boxes to the input frame). Each stage's time is its minimum over the recorded passes.
    The timer's pre-hooks run before any other, so under the fast path the casts at the trunk's
    boundary fall into the stage that triggers them: the feature maps' to float32 NCHW into
    ``box_pooler``, the RPN outputs' into ``rpn_head`` (the image's, 0.1 % of the pixels of the
    features, into ``fpn``).
    """

    def __init__(self, model):
        self.times: dict[str, list[float]] = {}
        self._handles = []
        self._pass: dict[str, float] = {}
        bottom_up = getattr(model.backbone, "bottom_up", None)
        self.modules = {"backbone": model.backbone,
                        "proposal_generator": model.proposal_generator,
                        "roi_heads": model.roi_heads}
        if bottom_up is not None:
            self.modules["bottom_up"] = bottom_up
            for name in ("stem", "res2", "res3", "res4", "res5"):
                if hasattr(bottom_up, name):
                    self.modules[name] = getattr(bottom_up, name)
            for m in bottom_up.modules():
                if isinstance(m, NonLocalBlock2D):
                    self.modules["nonlocal"] = m
        rpn_head = getattr(model.proposal_generator, "rpn_head", None)
        if rpn_head is not None:
            self.modules["rpn_head"] = rpn_head
        for name in ("box_pooler", "box_head", "box_predictor"):
            if hasattr(model.roi_heads, name):
                self.modules[name] = getattr(model.roi_heads, name)
        for name, m in self.modules.items():
            self._handles.append(m.register_forward_pre_hook(self._start(name), prepend=True))
            self._handles.append(m.register_forward_hook(self._stop(name)))

    def _start(self, name):
        def hook(mod, args):
            self._pass[name] = -time.perf_counter()
        return hook

    def _stop(self, name):
        def hook(mod, args, out):
            self._pass[name] += time.perf_counter()
        return hook

    def record(self, total: float) -> None:
        """Close one forward pass of ``total`` wall seconds."""
        t = dict(self._pass)
        self._pass.clear()
        stages = {k: t[k] for k in ("stem", "res2", "res3", "res4", "res5", "nonlocal") if k in t}
        if "bottom_up" in t:
            stages["fpn"] = t["backbone"] - t["bottom_up"]
        else:
            stages["backbone"] = t["backbone"]
        if "rpn_head" in t:
            stages["rpn_head"] = t["rpn_head"]
            stages["proposals"] = t["proposal_generator"] - t["rpn_head"]
        else:
            stages["proposal_generator"] = t["proposal_generator"]
        box = [k for k in ("box_pooler", "box_head", "box_predictor") if k in t]
        stages.update({k: t[k] for k in box})
        stages["box_postprocess"] = t["roi_heads"] - sum(t[k] for k in box)
        stages["other"] = total - t["backbone"] - t["proposal_generator"] - t["roi_heads"]
        for k, v in stages.items():
            self.times.setdefault(k, []).append(v)

    def summary(self) -> dict[str, float]:
        """``{stage: minimum seconds over the recorded passes}``."""
        return {k: min(v) for k, v in self.times.items()}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def compare_raw(ref, fast, inputs: list[dict]) -> dict:
    """Largest differences between the raw outputs of ``fast`` (the fast path) and ``ref`` (the
    same weights, float32 eager) on ``inputs``, each model fed the other's intermediate where the
    comparison needs the same input (rankings do not reshuffle what is compared):

    ``feature_rel``: max |Δ| / max |ref| per FPN level, largest over levels; ``objectness``: max
    |Δ| of the RPN logits (``objectness_max``: max |ref| for scale); ``box_score``: max |Δ| of the
    box classifier's probabilities on the reference's proposals; ``box_px``: max |Δ| of the
    decoded boxes there (pixels of the network's input, XYXY; ``box_px_rel``: relative to the
    larger side of each reference box); ``n_proposals``: how many proposals were compared.
    """
    with torch.no_grad():
        images = ref.preprocess_image(inputs)
        f_ref, f_fast = ref.backbone(images.tensor), fast.backbone(images.tensor)
        feature_rel = max(((f_fast[k].float() - f_ref[k]).abs().max()
                           / f_ref[k].abs().max().clamp(min=1e-12)).item() for k in f_ref)
        rpn = ref.proposal_generator
        names = rpn.in_features
        o_ref, _ = rpn.rpn_head([f_ref[k] for k in names])
        o_fast, _ = fast.proposal_generator.rpn_head([f_fast[k] for k in names])
        objectness = max((a - b).abs().max().item() for a, b in zip(o_ref, o_fast))
        objectness_max = max(a.abs().max().item() for a in o_ref)
        proposals, _ = rpn(images, f_ref, None)
        out = {}
        for name, (model, feats) in {"ref": (ref, f_ref), "fast": (fast, f_fast)}.items():
            heads = model.roi_heads
            x = heads.box_pooler([feats[f] for f in heads.box_in_features],
                                 [p.proposal_boxes for p in proposals])
            predictions = heads.box_predictor(heads.box_head(x))
            out[name] = (heads.box_predictor.predict_probs(predictions, proposals)[0],
                         heads.box_predictor.predict_boxes(predictions, proposals)[0])
    boxes = out["ref"][1].reshape(-1, 4)
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).clamp(min=1)
    box_diff = (out["fast"][1] - out["ref"][1]).reshape(-1, 4).abs().max(dim=1).values
    return {"feature_rel": feature_rel, "objectness": objectness,
            "objectness_max": objectness_max,
            "box_score": (out["fast"][0] - out["ref"][0]).abs().max().item(),
            "box_px": box_diff.max().item(), "box_px_rel": (box_diff / side).max().item(),
            "n_proposals": len(proposals[0])}


def bench_speed(threads: int, repeats: int, choices: bool = False) -> dict:
    """Best (minimum) seconds per image of each model, with medians and per-stage seconds.

    Models: the three Table 1 configs as built (float32 eager), the paper's FPN+FL+NL with the
    predictor's fast path (``mass_det.inference.prepare_for_inference``, the config's
    ``MODEL.INFERENCE`` switches) and detectron2's stock COCO R50-FPN (float32 eager), all with
    random weights on one uint8 image of the FL+NL config's test size; with ``choices`` also the
    FL+NL model with each subset of the fast path in :data:`FAST_PATH_CHOICES`. Runs are
    interleaved so that load from other processes on a shared CPU hits the models alike."""
    models, cfgs = {}, {}
    for name, config in CONFIGS.items():
        cfgs[name] = get_mass_det_cfg(str(CONFIG_DIR / config), ["MODEL.DEVICE", "cpu"])
    fast = {"fpn_fl_nl_fast": cfgs["fpn_fl_nl"]}
    if choices:
        fast.update({name: get_mass_det_cfg(str(CONFIG_DIR / CONFIGS["fpn_fl_nl"]),
                                            ["MODEL.DEVICE", "cpu", *opts])
                     for name, opts in FAST_PATH_CHOICES.items()})
    cfgs.update(fast)
    cfgs["coco_r50_fpn"] = _stock_coco_cfg()
    applied = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)  # the same weights for fpn_fl_nl and its fast paths
        models[name] = build_model(cfg).eval()
        if name in fast:
            applied[name] = prepare_for_inference(models[name], cfg)
    fast_path = applied["fpn_fl_nl_fast"]
    short = cfgs["fpn_fl_nl"].INPUT.MIN_SIZE_TEST
    h, w = int(round(short * 3328 / 2560)), short  # portrait mammogram, short edge = width
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen)
    inputs = [{"image": image, "height": h, "width": w}]
    timers = {name: StageTimer(models[name]) for name in ("fpn_fl_nl", "fpn_fl_nl_fast",
                                                          "coco_r50_fpn")}
    times: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for i in range(repeats + 1):
            for name, model in models.items():
                t0, c0 = time.perf_counter(), time.process_time()
                model(inputs)
                if i:  # the first round is a warm-up
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
                    if name in timers:
                        timers[name].record(times[name][-1])
                elif name in timers:
                    timers[name]._pass.clear()
    for timer in timers.values():
        timer.remove()
    out: dict = {}
    for name in models:
        # Best of N wall time (as timeit advises): other processes only ever add to a run's time.
        out[name] = {"seconds_per_image": min(times[name]),
                     "median_seconds": statistics.median(times[name]),
                     "cpu_seconds_per_image": min(cpu[name]), "runs": times[name], "size": [h, w]}
        if name in timers:
            out[name]["stages"] = timers[name].summary()
        print(f"speed {name:15s} {out[name]['seconds_per_image']:.2f} s/image at {h}x{w} "
              f"(best of {repeats}; median {out[name]['median_seconds']:.2f} s; CPU time "
              f"{out[name]['cpu_seconds_per_image']:.2f} s; {threads} threads)", flush=True)
    for name in timers:
        print(f"stages {name:15s} " + "  ".join(f"{k} {v:.3f}" for k, v in
                                                  out[name]["stages"].items()), flush=True)
    base = out["vanilla"]["seconds_per_image"]
    for name in models:
        out[name]["ratio_to_vanilla"] = out[name]["seconds_per_image"] / base
    out["fpn_fl_nl_over_fpn"] = (out["fpn_fl_nl"]["seconds_per_image"]
                                 / out["fpn"]["seconds_per_image"])
    out["fast_path"] = fast_path
    out["fast_over_coco"] = (out["fpn_fl_nl_fast"]["seconds_per_image"]
                             / out["coco_r50_fpn"]["seconds_per_image"])
    out["fast_over_fp32"] = (out["fpn_fl_nl_fast"]["seconds_per_image"]
                             / out["fpn_fl_nl"]["seconds_per_image"])
    out["fast_vs_fp32_raw"] = compare_raw(models["fpn_fl_nl"], models["fpn_fl_nl_fast"], inputs)
    for name in fast:
        out[name]["fast_path"] = applied[name]
        if name != "fpn_fl_nl_fast":
            out[name]["raw_vs_fp32"] = compare_raw(models["fpn_fl_nl"], models[name], inputs)
            out[name]["over_fp32"] = (out[name]["seconds_per_image"]
                                      / out["fpn_fl_nl"]["seconds_per_image"])
            print(f"choice {name:24s} {out[name]['seconds_per_image']:.2f} s/image "
                  f"({out[name]['over_fp32']:.3f} x float32 eager; {applied[name]}); raw "
                  "outputs vs float32: " + ", ".join(
                      f"{k} {v:.2e}" for k, v in out[name]["raw_vs_fp32"].items()), flush=True)
    return out


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) XYXY boxes -> (N, M) IoU."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


def bench_bundle(bundle_dir: str, inputs: list[str], iou: float = 0.9) -> dict:
    """The fast path against float32 eager on a trained bundle's mass detector.

    Both predictors (:class:`~mass_det.inference.MassPredictor`, the bundle's weights and config,
    ``MODEL.INFERENCE`` as configured vs. :data:`FAST_PATH_OFF`) see each pre-processed image of
    ``inputs`` (files or folders) twice; the second call is timed. Detections are paired by IoU >=
    ``iou`` (XYXY, image pixels): ``score_diff`` (percentiles of |Δscore| over the pairs),
    ``box_px`` (max |Δ| of a pair's coordinates). Per operating point of the bundle
    (``operating_points.json``), the findings (score >= threshold) of the two are counted and
    called identical when they are as many and pair up one to one.
    """
    bundle = load_bundle(bundle_dir)
    preds = {"fp32": MassPredictor.from_config(bundle.mass_cfg(FAST_PATH_OFF), device="cpu"),
             "fast": MassPredictor.from_config(bundle.mass_cfg(), device="cpu")}
    mammo = preds["fast"].cfg.INPUT.MAMMO
    ops = {fp: float(op["threshold"])
           for fp, op in (bundle.operating_points or {}).get("mass", {}).items()}
    seconds: dict[str, list[float]] = {k: [] for k in preds}
    diffs, box_px, n_det, n_paired = [], 0.0, {k: 0 for k in preds}, 0
    findings = {fp: {"fp32": 0, "fast": 0, "paired": 0, "identical_images": 0} for fp in ops}
    files = collect_inputs(inputs)
    for path in files:
        image = preprocess(str(path), remove_artifacts=bool(mammo.REMOVE_ARTIFACTS),
                           normalize_laterality=bool(mammo.NORMALIZE_LATERALITY)).image
        out = {}
        for name, pred in preds.items():
            pred(image)  # warm-up: oneDNN primitives are built on the first call of a shape
            t0 = time.perf_counter()
            out[name] = pred(image)
            seconds[name].append(time.perf_counter() - t0)
            n_det[name] += len(out[name][1])
        (b_ref, s_ref), (b_fast, s_fast) = out["fp32"], out["fast"]
        if len(s_ref) and len(s_fast):
            m = _box_iou(b_ref, b_fast)
            j = m.argmax(1)
            ok = m[np.arange(len(b_ref)), j] >= iou
            n_paired += int(ok.sum())
            diffs += np.abs(s_ref[ok] - s_fast[j[ok]]).tolist()
            box_px = max(box_px, float(np.abs(b_ref[ok] - b_fast[j[ok]]).max(initial=0)))
        for fp, thr in ops.items():
            f_ref, f_fast = b_ref[s_ref >= thr], b_fast[s_fast >= thr]
            paired = int((_box_iou(f_ref, f_fast).max(1) >= iou).sum()) if (
                len(f_ref) and len(f_fast)) else 0
            f = findings[fp]
            f["fp32"] += len(f_ref)
            f["fast"] += len(f_fast)
            f["paired"] += paired
            f["identical_images"] += int(len(f_ref) == len(f_fast) == paired)
    for f in findings.values():
        f["identical"] = f["identical_images"] == len(files)
    pct = dict(zip(("p50", "p90", "p99", "max"),
                   np.percentile(diffs, [50, 90, 99, 100]).tolist())) if diffs else {}
    result = {"bundle": str(bundle_dir), "images": len(files),
              "fast_path": preds["fast"].predictor.fast_path,
              "seconds_per_image": {k: statistics.median(v) for k, v in seconds.items()},
              "detections": n_det, "paired": n_paired, "pair_iou": iou, "score_diff": pct,
              "box_px": box_px, "findings": findings}
    print(f"bundle: {len(files)} images, median s/image float32 "
          f"{result['seconds_per_image']['fp32']:.3f}, fast path "
          f"{result['seconds_per_image']['fast']:.3f} ({result['fast_path']}); detections "
          f"{n_det['fp32']} / {n_det['fast']}, {n_paired} paired at IoU >= {iou}: |Δscore| "
          + ", ".join(f"{k} {v:.1e}" for k, v in pct.items()) + f", boxes <= {box_px:.2f} px",
          flush=True)
    for fp, f in findings.items():
        print(f"bundle: {fp} FP/image (threshold {ops[fp]:.4f}): findings float32 {f['fp32']}, "
              f"fast {f['fast']}, paired {f['paired']}; identical on "
              f"{f['identical_images']}/{len(files)} images", flush=True)
    return result


def sensitivity_by(dicts: list[dict], predictions: list[dict], froc: dict, key: str, k: float = 1,
                   hit: str = "iou", iou_thr: float = 0.5) -> dict:
    """Sensitivity per value of the annotation field ``key`` at the operating point of ``k``
    FP/image of ``froc`` (the whole set's curve, so every group shares one threshold).

    Boxes are XYWH in original image pixels (``dicts``: Detectron2 dataset dicts, ``predictions``:
    COCO results of the same images)."""
    thr = threshold_at_fp(froc, k)["threshold"]
    by_image: dict = {}
    for p in predictions:
        by_image.setdefault(p["image_id"], []).append(p)
    groups: dict[str, list[int]] = {}
    for d in dicts:
        preds = by_image.get(d["image_id"], [])
        anns = d["annotations"]
        m = match_image_boxes([p["bbox"] for p in preds], [p["score"] for p in preds],
                              [a["bbox"] for a in anns], hit=hit, thr=iou_thr)
        for a, score in zip(anns, m.lesion_scores):
            found = groups.setdefault(str(a.get(key, "unknown")), [0, 0])
            found[0] += int(score >= thr)
            found[1] += 1
    return {g: {"found": f, "lesions": n, "sensitivity": f / n}
            for g, (f, n) in sorted(groups.items())}


def bench_quality(out_dir: Path, iters: int | None, n_studies: int, height: int, width: int,
                  seed: int, device: str = "cpu", opts: list[str] | None = None) -> dict:
    """Train the CPU recipe as shipped (only data, run length and output folder set here, then
    ``opts``) on synthetic studies and evaluate it on their held-out (val + test) images."""
    setup_logger(name="detectron2")
    data = out_dir / f"synthetic_{n_studies}x{height}x{width}_seed{seed}"
    t0 = time.perf_counter()
    if not (data / "masses.json").is_file():
        generate(data, n=n_studies, seed=seed, height=height, width=width, progress=False)
    t_gen = time.perf_counter() - t0
    heldout = f"bench_mass_heldout_{data.name}"
    if heldout not in DatasetCatalog.list():
        DatasetCatalog.register(heldout, lambda: load_canonical_dicts(data, "mass", "val")
                                + load_canonical_dicts(data, "mass", "test"))
        MetadataCatalog.get(heldout).set(thing_classes=["mass"])
    config = CONFIG_DIR / QUALITY_CONFIG
    if iters is None:
        iters = get_mass_det_cfg(str(config)).SOLVER.MAX_ITER
    cfg = build_run_cfg(config, str(data),
                        out_dir / "fpn_fl_nl_cpu", iters, "val",
                        ["DATASETS.TEST", f"('{heldout}',)", "MODEL.DEVICE", device, *(opts or [])])
    t1 = time.perf_counter()
    row = run_row(cfg)
    t_train = time.perf_counter() - t1
    dicts = DatasetCatalog.get(heldout)
    train = load_canonical_dicts(data, "mass", "train")
    inference = Path(cfg.OUTPUT_DIR) / "inference" / heldout
    report = read_json(inference / "froc_report.json")["report"]
    predictions = read_json(inference / "predictions.json")
    by_contrast = sensitivity_by(dicts, predictions, report["froc"], "contrast_level",
                                 hit=cfg.TEST.FROC.HIT, iou_thr=cfg.TEST.FROC.IOU_THRESH)
    m = row["metrics"]
    result = {
        "config": QUALITY_CONFIG, "opts": list(opts or []), "iters": iters,
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH, "crop_size": cfg.INPUT.MAMMO.CROP_SIZE,
        "image_size": [height, width],
        "n_train_images": len(train), "n_train_masses": sum(len(d["annotations"]) for d in train),
        "n_heldout_images": len(dicts),
        "n_heldout_masses": sum(len(d["annotations"]) for d in dicts),
        "ap50_coco": report["ap50_coco"], "ap50_voc": report["ap50_voc"],
        "recall": report["recall"],
        "sensitivity_at_fp": report["sensitivity_at_fp"],
        "sensitivity_at_1fp_by_contrast": by_contrast,
        "device": device, "generate_seconds": t_gen, "train_eval_seconds": t_train,
    }
    print(f"quality: {result['n_train_images']} train images ({result['n_train_masses']} masses), "
          f"{result['n_heldout_images']} held-out images ({result['n_heldout_masses']} masses), "
          f"{iters} iterations in {t_train:.0f} s", flush=True)
    print(f"quality: AP50 (COCO) {m['AP50_COCO']:.3f}  AP50 (VOC) {m['AP50_VOC']:.3f}  "
          f"recall {m['recall']:.3f}  sensitivity at 1 FP/image {m['sens_at_1fp']:.3f} "
          f"(target >= 0.80); at 1 FP/image by contrast: "
          + ", ".join(f"{g} {v['found']}/{v['lesions']}" for g, v in by_contrast.items()),
          flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    part = parser.add_mutually_exclusive_group()
    part.add_argument("--speed", action="store_true", help="only the speed benchmark")
    part.add_argument("--quality", action="store_true", help="only the quality run")
    part.add_argument("--bundle", metavar="DIR",
                      help="only compare the fast path with float32 eager on this model bundle's "
                           "mass detector and --inputs (speed, scores, boxes, findings at each "
                           "operating point)")
    parser.add_argument("--inputs", nargs="+", default=[],
                        help="images (files, folders) of the --bundle comparison")
    parser.add_argument("--choices", action="store_true",
                        help="speed: also time the FL+NL model with each subset of the fast path "
                             "(folded FrozenBN, channels-last, bf16)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quality-iters", type=int, default=None,
                        help="training iterations (default: the config's SOLVER.MAX_ITER)")
    parser.add_argument("--quality-studies", type=int, default=QUALITY_STUDIES)
    parser.add_argument("--quality-height", type=int, default=640)
    parser.add_argument("--quality-width", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="device of the quality run (the speed run is always on the CPU)")
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "mass_det"))
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides of the quality run (KEY VALUE ...), e.g. "
                             "MODEL.FOCAL_LOSS.BOX_NORMALIZER foreground")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    summary: dict = {"threads": args.threads}
    if args.bundle:
        if not args.inputs:
            parser.error("--bundle needs --inputs")
        summary["bundle"] = bench_bundle(args.bundle, args.inputs)
        print(json.dumps(summary, default=float))
        return 0
    if not args.quality:
        speed = bench_speed(args.threads, args.repeats, args.choices)
        summary["speed"] = speed
        print(f"speed: FPN {speed['fpn']['ratio_to_vanilla']:.2f}x vanilla, FPN+FL+NL "
              f"{speed['fpn_fl_nl']['ratio_to_vanilla']:.2f}x vanilla, FPN+FL+NL / FPN = "
              f"{speed['fpn_fl_nl_over_fpn']:.3f} (target <= 1.15)", flush=True)
        raw = speed["fast_vs_fp32_raw"]
        print(f"speed: FPN+FL+NL fast path {speed['fast_path']} / stock COCO R50-FPN = "
              f"{speed['fast_over_coco']:.3f} (target <= {FAST_TARGET}); / float32 eager = "
              f"{speed['fast_over_fp32']:.3f}; raw outputs vs float32: features "
              f"{raw['feature_rel']:.2e} (relative), RPN logits {raw['objectness']:.2e} (of "
              f"{raw['objectness_max']:.2e}), box scores {raw['box_score']:.2e}, boxes "
              f"{raw['box_px']:.2f} px ({raw['box_px_rel']:.2e} of the box side)", flush=True)
        summary.update({"fast_over_coco": speed["fast_over_coco"],
                        "stages": {k: speed[k]["stages"] for k in
                                   ("fpn_fl_nl", "fpn_fl_nl_fast", "coco_r50_fpn")}})
    if not args.speed:
        quality = bench_quality(Path(args.out), args.quality_iters, args.quality_studies,
                                args.quality_height, args.quality_width, args.seed, args.device,
                                args.opts)
        summary["quality"] = quality
        if args.quality:
            summary.update({k: quality[k] for k in ("ap50_coco", "recall", "sensitivity_at_fp")})
    print(json.dumps(summary, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
