"""Predict on the mammograms of a DICOMweb server (a PACS) and store the findings back on it.

``deeplima predict --dicomweb URL --study UID... | --since DATE --model BUNDLE --output DIR``:

1. QIDO-RS lists the studies (the ones named, or those with ``StudyDate >= DATE``), their series of
   modality MG and the instances of those series. Series of other modalities (among them the SEG
   and SR objects an earlier run stored) are never retrieved, and For-Processing or tomosynthesis
   instances are left out (listed as not processed).
2. WADO-RS retrieves each instance into ``DIR/dicomweb/<StudyInstanceUID>/<SOPInstanceUID>.dcm``
   (written atomically; a file already there is not retrieved again).
3. The pipeline writes the prediction folder ``DIR`` (:func:`deeplima.writer.write_predictions`),
   with a DICOM SEG and SR per image in the DICOM output folder.
4. STOW-RS stores each image's SEG and SR back on the server, one request per image.

``DIR/dicomweb.json`` records, per study and source instance, the local file, its status and the
SOP Instance UIDs of the objects stored from it, and the last run's counts and failures. An object
whose SOP Instance UID is recorded as stored is never stored again, so ``--resume`` (images whose
outputs are complete are not predicted again, their SEG and SR stay the same) stores nothing twice;
without it the images are predicted again and their new SEG and SR are stored as new objects.

Only the server of the URL is contacted: proxies and credentials from the environment are not
used, and a redirect to another scheme, host or port is refused. A server that cannot be reached,
an HTTP error while listing, or a study the server does not have is one
:class:`~common.errors.InputError` naming the URL; a failure that concerns one instance (its
retrieval, its storage) is listed for that instance and the run goes on.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from tqdm import tqdm

from common.dicom import dicom_bytes, is_uid
from common.errors import InputError
from common.io import atomic_write_bytes, atomic_write_json, os_error_reason, read_json

__all__ = [
    "RECORD_NAME",
    "RETRIEVED_DIR",
    "DicomwebRun",
    "check_url",
    "connect",
    "parse_date",
    "parse_uid",
]

#: File of the prediction folder recording what was retrieved and stored.
RECORD_NAME = "dicomweb.json"
#: Sub-folder of the prediction folder holding the retrieved instances.
RETRIEVED_DIR = "dicomweb"

# SOP classes of MG series that are not images for the models: raw detector data and tomosynthesis
_NOT_PROCESSED = {
    "1.2.840.10008.5.1.4.1.1.1.2.1": "a For-Processing mammogram (raw detector data)",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "a For-Processing X-ray image (raw detector data)",
    "1.2.840.10008.5.1.4.1.1.13.1.3": "a breast tomosynthesis volume",
    "1.2.840.10008.5.1.4.1.1.13.1.4": "a breast projection (For-Presentation tomosynthesis) image",
    "1.2.840.10008.5.1.4.1.1.13.1.5": "a breast projection (For-Processing tomosynthesis) image",
}
# DICOM JSON tags
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"
_SOP_CLASS, _MODALITY, _STUDY_DATE = "00080016", "00080060", "00080020"
_TIMEOUT_S = 60


# ------------------------------------------------------------------------------ argument checks
def parse_uid(text: str) -> str:
    """``text`` if it is a DICOM UID (digits and dots, at most 64 characters), else ValueError.

    UIDs name local files, so nothing else may pass."""
    if not is_uid(text):
        raise ValueError(f"not a DICOM UID (digits and dots, at most 64 characters): {text!r}")
    return text


def parse_date(text: str) -> str:
    """A date given as YYYYMMDD or YYYY-MM-DD, as a DICOM DA value (YYYYMMDD), else ValueError."""
    for fmt in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return datetime.datetime.strptime(text, fmt).strftime("%Y%m%d")
        except ValueError:
            pass
    raise ValueError(f"not a date (YYYYMMDD or YYYY-MM-DD): {text!r}")


# ------------------------------------------------------------------------------------ HTTP layer
class RedirectRefused(requests.exceptions.RequestException):
    """The server sent a redirect to another scheme, host or port."""


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return parts.scheme, (parts.hostname or "").lower(), port


class _SameServerSession(requests.Session):
    """A session that talks to one server only: no proxy or ``.netrc`` from the environment, and
    redirects followed only within the same scheme, host and port."""

    def __init__(self, url: str):
        super().__init__()
        self.trust_env = False
        self._origin = _origin(url)

    def get_redirect_target(self, resp):
        target = super().get_redirect_target(resp)
        if target is not None:
            where = urljoin(resp.url, target)
            if _origin(where) != self._origin:
                scheme, host, port = _origin(where)
                raise RedirectRefused(f"redirect to another server ({scheme}://{host}:{port}) "
                                      "refused")
        return target


def check_url(url: str) -> str:
    """``url`` without a trailing slash if it is ``http(s)://host[:port][/path]``, else an
    :class:`InputError`."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as e:
        raise InputError(url, f"not a usable DICOMweb URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(url, "not an http:// or https:// DICOMweb URL")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise InputError(url, "the DICOMweb URL must be scheme://host[:port]/path, without "
                              "credentials, query or fragment")
    return url.rstrip("/")


def connect(url: str, timeout: float = _TIMEOUT_S) -> DICOMwebClient:
    """A DICOMweb client of ``url`` (``http(s)://host[:port]/root``) that contacts no other
    server; a malformed URL is an :class:`InputError`."""
    url = check_url(url)
    try:
        client = DICOMwebClient(url, session=_SameServerSession(url), timeout=timeout)
    except ValueError as e:
        raise InputError(url, f"not a usable DICOMweb URL ({e})") from None
    # a few quick retries of busy answers (429, 503...) and dropped connections, not minutes
    client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=250)
    return client


def _reason(e: Exception) -> str:
    """One line saying why a request failed."""
    if isinstance(e, requests.HTTPError) and e.response is not None:
        r = e.response
        path = urlsplit(r.url).path if r.url else ""
        method = r.request.method if r.request is not None else "request"
        return f"HTTP {r.status_code} {r.reason or ''}".rstrip() + f" ({method} {path})"
    if isinstance(e, RedirectRefused):
        return str(e)
    if isinstance(e, requests.exceptions.Timeout):
        return "no answer in time (timeout)"
    if isinstance(e, requests.exceptions.ConnectionError):
        found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(e))
        return f"cannot reach the server ({found.group(1).strip() if found else 'no connection'})"
    if isinstance(e, requests.exceptions.TooManyRedirects):
        return "too many redirects"
    text = " ".join(str(e).split())[:300]
    return f"unexpected answer ({type(e).__name__}: {text})" if text else type(e).__name__


def _fatal(e: Exception) -> bool:
    """Failures that no later request can escape: the server is gone or sends us elsewhere."""
    return isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                          RedirectRefused, requests.exceptions.TooManyRedirects))


def _value(item: dict, tag: str) -> str | None:
    """The first value of ``tag`` in a DICOM JSON item, as a string (None when absent)."""
    entry = item.get(tag) if isinstance(item, dict) else None
    values = entry.get("Value") if isinstance(entry, dict) else None
    if not isinstance(values, list) or not values or values[0] is None:
        return None
    return str(values[0]).strip()


# ---------------------------------------------------------------------------------------- the run
class DicomwebRun:
    """One ``predict --dicomweb`` run over the prediction folder ``out``: :meth:`studies`,
    :meth:`retrieve`, the prediction (the caller's), :meth:`store`, :meth:`summary`."""

    def __init__(self, url: str, out: str | Path, progress: bool = True):
        self.url = url.rstrip("/")
        self.out = Path(out)
        self.progress = progress
        self.client = connect(self.url)
        self.failures: list[dict] = []
        self.counts = {"n_instances": 0, "n_retrieved": 0, "n_already_retrieved": 0,
                       "n_not_processed": 0, "n_stored": 0, "n_already_stored": 0}
        self.record = self._load_record()

    # ---------------------------------------------------------------- record
    def _load_record(self) -> dict:
        path = self.out / RECORD_NAME
        fresh = {"format": "deeplima-dicomweb", "version": 1, "url": self.url, "studies": {}}
        if not path.is_file():
            return fresh
        try:
            rec = read_json(path)
        except (InputError, OSError) as e:
            raise InputError(path, f"cannot read the record of earlier DICOMweb runs ({e}); "
                                   "move it away to start afresh") from None
        if not isinstance(rec, dict) or rec.get("format") != "deeplima-dicomweb" or not isinstance(
                rec.get("studies"), dict):
            raise InputError(path, "not a record of DICOMweb runs; move it away to start afresh")
        if rec.get("url") != self.url:  # what was stored on another server is not on this one
            return fresh
        return rec

    def _save_record(self) -> None:
        self.record["last_run"] = {**self.counts, "failures": self.failures}
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(self.out / RECORD_NAME, self.record)
        except OSError as e:
            raise InputError(self.out / RECORD_NAME, f"cannot be written ({os_error_reason(e)})"
                             ) from None

    def _study(self, study: str) -> dict:
        return self.record["studies"].setdefault(study, {"study_date": None, "instances": {}})

    def _fail(self, study: str, sop: str, reason: str) -> None:
        entry = self._study(study)["instances"].setdefault(sop, {})
        entry.update(status="failed", reason=reason)
        self.failures.append({"study": study, "instance": sop, "reason": reason,
                              "message": f"{study}/{sop}: {reason}"})

    # ---------------------------------------------------------------- QIDO
    def _query(self, what: str, call, **kw) -> list[dict]:
        """A QIDO-RS search; any failure ends the run (one line naming the URL)."""
        try:
            found = call(get_remaining=True, **kw)
        except (requests.exceptions.RequestException, ValueError) as e:
            raise InputError(self.url, f"{what}: {_reason(e)}") from None
        if not isinstance(found, list) or not all(isinstance(x, dict) for x in found):
            raise InputError(self.url, f"{what}: the answer is not a list of DICOM JSON objects")
        return found

    def studies(self, uids: Sequence[str] | None = None, since: str | None = None) -> list[str]:
        """The StudyInstanceUIDs to process: ``uids`` (each one checked on the server: a study it
        does not have is an :class:`InputError`), or the studies with ``StudyDate >= since``
        (YYYYMMDD), oldest first."""
        found: dict[str, str | None] = {}
        if uids:
            for uid in dict.fromkeys(uids):
                rows = self._query(f"search for study {uid}", self.client.search_for_studies,
                                   search_filters={"StudyInstanceUID": parse_uid(uid)})
                if not any(_value(r, _STUDY_UID) == uid for r in rows):
                    raise InputError(self.url, f"study {uid} not found on the server")
                found[uid] = next(_value(r, _STUDY_DATE) for r in rows
                                  if _value(r, _STUDY_UID) == uid)
        elif since is not None:
            since = parse_date(since)
            rows = self._query(f"search for studies since {since}", self.client.search_for_studies,
                               search_filters={"StudyDate": f"{since}-"})
            dated = []
            for r in rows:
                uid, date = _value(r, _STUDY_UID), _value(r, _STUDY_DATE)
                if not is_uid(uid):
                    continue  # not a study we could name a folder after
                if date is None or date < since:
                    continue  # a server that matched loosely
                dated.append((date, uid))
            for date, uid in sorted(set(dated)):
                found[uid] = date
        else:
            raise ValueError("either study UIDs or a date")
        for uid, date in found.items():
            self._study(uid)["study_date"] = date
        return list(found)

    def _instances(self, study: str) -> list[tuple[str, str, str | None]]:
        """``(series, sop, sop_class)`` of the instances of the MG series of ``study``."""
        out = []
        series = self._query(f"search for the MG series of study {study}",
                             self.client.search_for_series, study_instance_uid=study,
                             search_filters={"Modality": "MG"})
        for s in series:
            uid = _value(s, _SERIES_UID)
            # a server that ignores the filter must not feed us back our own SEG and SR
            if uid is None or _value(s, _MODALITY) not in (None, "MG"):
                continue
            if not is_uid(uid):
                continue
            rows = self._query(f"search for the instances of series {uid}",
                               self.client.search_for_instances, study_instance_uid=study,
                               series_instance_uid=uid)
            for r in rows:
                sop = _value(r, _SOP_UID)
                if is_uid(sop):
                    out.append((uid, sop, _value(r, _SOP_CLASS)))
        return list(dict.fromkeys(out))

    # ---------------------------------------------------------------- WADO
    def _path(self, study: str, sop: str) -> Path:
        return self.out / RETRIEVED_DIR / study / f"{sop}.dcm"

    def _retrieve_one(self, study: str, series: str, sop: str) -> Path:
        """WADO-RS of one instance into its file (atomic)."""
        ds = self.client.retrieve_instance(study, series, sop)
        if getattr(ds, "SOPInstanceUID", None) != sop or getattr(
                ds, "StudyInstanceUID", None) != study:
            raise ValueError("the server sent another instance than the one asked for")
        path = self._path(study, sop)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, dicom_bytes(ds))
        return path

    def retrieve(self, studies: Iterable[str]) -> list[Path]:
        """Retrieve the MG images of ``studies`` (those not here yet); returns the local files to
        predict on, in study and QIDO order. Failures of one instance are listed
        (:attr:`failures`); the server going away is an :class:`InputError`."""
        plan = []
        for study in studies:
            entries = self._study(study)["instances"]
            for series, sop, sop_class in self._instances(study):
                self.counts["n_instances"] += 1
                entry = entries.setdefault(sop, {})
                entry.update(series=series, sop_class=sop_class,
                             file=str(Path(RETRIEVED_DIR, study, f"{sop}.dcm")))
                if sop_class in _NOT_PROCESSED:
                    entry.update(status="not processed", reason=_NOT_PROCESSED[sop_class])
                    self.counts["n_not_processed"] += 1
                    continue
                plan.append((study, series, sop))
        files = []
        for study, series, sop in tqdm(plan, desc="DICOMweb retrieve", unit="img",
                                       disable=not self.progress):
            entry = self._study(study)["instances"][sop]
            path = self._path(study, sop)
            if path.is_file():
                self.counts["n_already_retrieved"] += 1
            else:
                try:
                    self._retrieve_one(study, series, sop)
                except requests.exceptions.RequestException as e:  # (an OSError too)
                    if _fatal(e):
                        self._save_record()
                        raise InputError(self.url, f"retrieve {sop}: {_reason(e)}") from None
                    self._fail(study, sop, f"cannot be retrieved: {_reason(e)}")
                    continue
                except OSError as e:  # the local file
                    raise InputError(path, f"cannot be written ({os_error_reason(e)})") from None
                except Exception as e:  # noqa: BLE001 - one instance fails, the others go on
                    self._fail(study, sop, f"cannot be retrieved: {_reason(e)}")
                    continue
                self.counts["n_retrieved"] += 1
            entry.update(status="retrieved")
            entry.pop("reason", None)
            files.append(path)
        self._save_record()
        return files

    # ---------------------------------------------------------------- STOW
    def _outputs(self, stem: str, dicom_dir: Path) -> list[Path]:
        """The DICOM objects written for the image ``stem``: those its per-image JSON names in
        ``files["dicom"]`` (relative to ``dicom_dir``), present and inside that folder."""
        try:
            rec = read_json(self.out / "per_image" / f"{stem}.json")
        except (InputError, OSError):
            return []
        files = rec.get("files") if isinstance(rec, dict) else None
        listed = files.get("dicom") if isinstance(files, dict) else None
        if not isinstance(listed, dict):
            return []
        root = dicom_dir.resolve()
        paths = [(dicom_dir / v).resolve() for v in listed.values() if isinstance(v, str)]
        return [p for p in paths if p.is_relative_to(root) and p.is_file()]

    def store(self, summary: dict, dicom_dir: str | Path) -> None:
        """STOW-RS of the SEG and SR of every image the prediction run ``summary`` (the
        ``run.json`` of :func:`~deeplima.writer.write_predictions`) has done or found done, one
        request per image; objects recorded as stored are not sent again."""
        dicom_dir = Path(dicom_dir)
        by_file = {}
        for study, st in self.record["studies"].items():
            for sop in st["instances"]:
                by_file[self._path(study, sop).resolve()] = (study, sop)
        for e in summary.get("skipped_inputs", ()):  # not a mammogram for the models
            key = by_file.get(Path(e["file"]).resolve())
            if key is not None:
                self._study(key[0])["instances"][key[1]].update(
                    status="not processed", reason=str(e.get("reason")))
                self.counts["n_not_processed"] += 1
        jobs = []
        for e in summary.get("inputs", ()):
            key = by_file.get(Path(e["file"]).resolve())
            if key is None:
                continue
            entry = self._study(key[0])["instances"][key[1]]
            entry["prediction"] = e.get("status")
            entry["stem"] = e.get("stem")
            if e.get("status") == "failed" or e.get("error"):
                # listed in the prediction folder's failures: nothing to store for it
                entry.update(status="failed", reason="prediction failed: "
                             + str(e.get("error") or "see failures.txt"))
            elif e.get("status") in ("done", "skipped"):
                jobs.append((key, entry))
        for (study, sop), entry in tqdm(jobs, desc="DICOMweb store", unit="img",
                                        disable=not self.progress):
            self._store_image(study, sop, entry, dicom_dir)
            self._save_record()
        self._save_record()

    def _store_image(self, study: str, sop: str, entry: dict, dicom_dir: Path) -> None:
        stored = entry.setdefault("stored", {})
        paths = self._outputs(entry["stem"], dicom_dir)
        if not paths:
            self._fail(study, sop, f"no DICOM SEG or SR of image {entry['stem']} in {dicom_dir}")
            return
        todo = []
        for p in paths:
            try:
                ds = pydicom.dcmread(p)
                uid = str(ds.SOPInstanceUID)
            except Exception as e:  # noqa: BLE001 - an unreadable output fails this image
                self._fail(study, sop, f"{p}: not a readable DICOM file ({type(e).__name__}: "
                                       f"{' '.join(str(e).split())[:200]})")
                return
            if uid in stored:
                self.counts["n_already_stored"] += 1
            else:
                todo.append((p, uid, ds))
        if not todo:
            entry.update(status="stored")
            entry.pop("reason", None)
            return
        try:
            answer = self.client.store_instances([ds for _, _, ds in todo])
        except Exception as e:  # noqa: BLE001 - one image fails, the others go on
            if _fatal(e):
                self._save_record()
                raise InputError(self.url, f"store the outputs of {sop}: {_reason(e)}") from None
            self._fail(study, sop, f"cannot be stored: {_reason(e)}")
            return
        failed = {}
        for item in getattr(answer, "FailedSOPSequence", None) or ():
            code = getattr(item, "FailureReason", None)
            failed[str(getattr(item, "ReferencedSOPInstanceUID", ""))] = (
                f"failure reason {int(code):04X}H" if code is not None else "refused")
        for p, uid, ds in todo:
            if uid in failed:
                continue
            stored[uid] = {"sop_class": str(ds.SOPClassUID), "modality": str(
                getattr(ds, "Modality", "")), "file": str(p)}
            self.counts["n_stored"] += 1
        if failed:
            self._fail(study, sop, "the server refused "
                       + ", ".join(f"{uid} ({why})" for uid, why in failed.items()))
            return
        entry.update(status="stored")
        entry.pop("reason", None)

    # ---------------------------------------------------------------- report
    def summary(self) -> dict[str, Any]:
        """Counts and failures of this run (also ``last_run`` of the record)."""
        return {**self.counts, "failures": list(self.failures), "url": self.url}

    def report_lines(self) -> list[str]:
        """The console summary: one line, then one per failure (``failed: ...``)."""
        c = self.counts
        lines = [f"DICOMweb {self.url}: {c['n_instances']} MG instance(s), {c['n_retrieved']} "
                 f"retrieved, {c['n_already_retrieved']} already here, {c['n_not_processed']} "
                 f"not processed; {c['n_stored']} DICOM object(s) stored, {c['n_already_stored']} "
                 f"already stored; {len(self.failures)} failed"]
        lines += [f"  failed: {f['message']}" for f in self.failures]
        return lines
