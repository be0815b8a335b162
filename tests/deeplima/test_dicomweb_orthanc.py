"""``deeplima predict --dicomweb``: a round trip through a real PACS.

The test starts Orthanc with its DICOMweb plugin on a free loopback port (storage in a temporary
folder), uploads synthetic studies with STOW-RS, runs ``python -m deeplima predict --dicomweb``
(``--study`` and ``--since``), then asks Orthanc for the SEG and SR series the run stored and checks
that there is one of each per mammogram, referencing it; a rerun with ``--resume`` stores nothing.
Errors (no server, an HTTP error, an unknown study, a redirect to another host) are one ``error:``
line with exit status 2.

Without Orthanc or its DICOMweb plugin the test is skipped, and fails when ``CI`` is set (CI
installs them: ``apt-get install orthanc orthanc-dicomweb``).
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("detectron2")
pydicom = pytest.importorskip("pydicom")
requests = pytest.importorskip("requests")
dicomweb_api = pytest.importorskip("dicomweb_client.api")

from deeplima.bundle import random_bundle  # noqa: E402
from deeplima.cli import main  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ORTHANC = os.environ.get("DEEPLIMA_ORTHANC") or shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN = os.environ.get("DEEPLIMA_ORTHANC_DICOMWEB",
                        "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
TINY_MASS_OPTS = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
                  "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64"]
# one date per synthetic study, in the order of their patient ids
DATES = ("20230101", "20240105", "20240210")
START_TIMEOUT_S = 30


def _unavailable(reason: str):
    """Skip, or fail under CI where Orthanc is expected."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI installs orthanc and orthanc-dicomweb)")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """GET without any proxy from the environment: (status, body)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def _client(url: str):
    session = requests.Session()
    session.trust_env = False
    return dicomweb_api.DICOMwebClient(url, session=session)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """The base URL (``http://127.0.0.1:PORT``) of an Orthanc with DICOMweb at ``/dicom-web``."""
    if not Path(ORTHANC).is_file():
        _unavailable(f"Orthanc is not installed ({ORTHANC} missing)")
    if not Path(PLUGIN).exists():
        _unavailable(f"the Orthanc DICOMweb plugin is not installed ({PLUGIN} missing)")
    base = tmp_path_factory.mktemp("orthanc")
    port = _free_port()
    config = {
        "Name": "deeplima-test",
        "StorageDirectory": str(base / "storage"),
        "IndexDirectory": str(base / "index"),
        "HttpPort": port,
        "DicomServerEnabled": False,
        "DicomPort": _free_port(),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
    }
    (base / "config.json").write_text(json.dumps(config, indent=2))
    log_path = base / "orthanc.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([ORTHANC, str(base / "config.json")], cwd=base, stdout=log,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def log_tail() -> str:
        return log_path.read_text(errors="replace")[-2000:]

    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Orthanc exited with status {proc.returncode} at start:\n"
                            f"{log_tail()}")
            try:
                if _get(f"{url}/system")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not answer on {url}/system within {START_TIMEOUT_S} s:"
                            f"\n{log_tail()}")
            time.sleep(0.2)
        if _get(f"{url}/dicom-web/studies")[0] != 200:
            _unavailable(f"Orthanc runs but its DICOMweb plugin did not load:\n{log_tail()}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def pacs(orthanc, synthetic_dataset, tmp_path_factory):
    """Three synthetic studies (CC and MLO each) stored on Orthanc with the dates of ``DATES``,
    a tiny random bundle and an output folder."""
    torch.set_num_threads(1)
    root = synthetic_dataset(n=3, seed=21, height=256, width=208)
    by_study = defaultdict(list)
    for path in sorted((root / "images").rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        by_study[(str(ds.PatientID), str(ds.StudyInstanceUID))].append(ds)
    assert len(by_study) == len(DATES)
    studies, mg = [], {}
    for (_, uid), date in zip(sorted(by_study), DATES):
        for ds in by_study[(_, uid)]:
            ds.StudyDate = date
        _client(f"{orthanc}/dicom-web").store_instances(by_study[(_, uid)])
        studies.append(uid)
        mg[uid] = {str(ds.SOPInstanceUID) for ds in by_study[(_, uid)]}
    base = tmp_path_factory.mktemp("dicomweb")
    bundle = random_bundle(base / "bundle", mass_opts=TINY_MASS_OPTS)
    return {"url": f"{orthanc}/dicom-web", "studies": studies, "mg": mg, "dates": DATES,
            "bundle": bundle.root, "out": base / "pred"}


def _predict(pacs, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "deeplima", "predict", "--dicomweb", pacs["url"], *args,
         "--model", str(pacs["bundle"]), "--output", str(pacs["out"]), "--device", "cpu",
         "--threads", "1", "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _derived(pacs, study: str) -> dict[str, list]:
    """The SEG and SR instances of ``study`` on the server (QIDO-RS, then WADO-RS)."""
    client = _client(pacs["url"])
    found = {}
    for modality in ("SEG", "SR"):
        found[modality] = []
        for s in client.search_for_series(study_instance_uid=study,
                                          search_filters={"Modality": modality}):
            series = s["0020000E"]["Value"][0]
            for i in client.search_for_instances(study_instance_uid=study,
                                                 series_instance_uid=series):
                found[modality].append(client.retrieve_instance(
                    study, series, i["00080018"]["Value"][0]))
    return found


def _references(ds) -> set[str]:
    return {str(e.value) for e in ds.iterall() if e.keyword == "ReferencedSOPInstanceUID"}


def _check_study(pacs, study: str) -> None:
    """One SEG and one SR per mammogram of ``study`` on the server, each referencing its image."""
    sources = pacs["mg"][study]
    found = _derived(pacs, study)
    for modality in ("SEG", "SR"):
        objects = found[modality]
        assert len(objects) == len(sources), (modality, len(objects), len(sources))
        referenced = [_references(ds) & sources for ds in objects]
        assert all(len(r) == 1 for r in referenced), (modality, referenced)
        assert set().union(*referenced) == sources
        assert all(str(ds.StudyInstanceUID) == study for ds in objects)


def _record(pacs) -> dict:
    return json.loads((pacs["out"] / "dicomweb.json").read_text())


@pytest.fixture(scope="module")
def study_run(pacs):
    first = pacs["studies"][0]
    return first, _predict(pacs, "--study", first)


def test_study_is_retrieved_predicted_and_stored_back(pacs, study_run):
    study, run = study_run
    assert run.returncode == 0, run.stderr[-3000:]
    sources = pacs["mg"][study]
    retrieved = pacs["out"] / "dicomweb" / study
    assert {p.stem for p in retrieved.glob("*.dcm")} == sources
    images = json.loads((pacs["out"] / "images.json").read_text())
    assert len(images) == len(sources)
    _check_study(pacs, study)
    for other in pacs["studies"][1:]:  # only the study asked for
        assert _derived(pacs, other) == {"SEG": [], "SR": []}
        assert not (pacs["out"] / "dicomweb" / other).exists()
    rec = _record(pacs)
    entries = rec["studies"][study]["instances"]
    assert set(entries) == sources and all(e["status"] == "stored" for e in entries.values())
    assert all(len(e["stored"]) == 2 for e in entries.values())
    last = rec["last_run"]
    assert (last["n_retrieved"], last["n_stored"], last["failures"]) == (2, 4, [])


@pytest.fixture(scope="module")
def since_run(pacs, study_run):
    return _predict(pacs, "--since", "2024-01-01")


def test_since_processes_the_studies_from_that_date(pacs, study_run, since_run):
    assert since_run.returncode == 0, since_run.stderr[-3000:]
    first, later = pacs["studies"][0], pacs["studies"][1:]
    for study in later:
        _check_study(pacs, study)
    _check_study(pacs, first)  # untouched: still one SEG and SR per image
    last = _record(pacs)["last_run"]
    assert (last["n_instances"], last["n_retrieved"], last["n_stored"]) == (4, 4, 8)


def test_resume_stores_nothing_again_and_skips_our_own_objects(pacs, study_run, since_run,
                                                              capsys):
    # in this process (the command line itself ran above): the same run, without a second start
    rc = main(["predict", "--dicomweb", pacs["url"], "--since", "20230101", "--resume",
               "--model", str(pacs["bundle"]), "--output", str(pacs["out"]), "--device", "cpu",
               "--threads", "1", "--no-progress"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    assert "0 DICOM object(s) stored, 12 already stored; 0 failed" in capsys.readouterr().out
    last = _record(pacs)["last_run"]
    # the SEG and SR series now in every study are not taken as images
    assert last["n_instances"] == 6 and last["n_already_retrieved"] == 6
    assert (last["n_retrieved"], last["n_stored"], last["n_already_stored"]) == (0, 0, 12)
    summary = json.loads((pacs["out"] / "run.json").read_text())
    assert (summary["n_done"], summary["n_skipped"], summary["n_failed"]) == (0, 6, 0)
    for study in pacs["studies"]:
        _check_study(pacs, study)


# ------------------------------------------------------------------------------------- errors
def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _main(pacs, url: str, *args: str) -> int:
    return main(["predict", "--dicomweb", url, *args, "--model", str(pacs["bundle"]),
                 "--output", str(pacs["out"].parent / "errors"), "--device", "cpu",
                 "--no-progress"])


def test_a_server_that_cannot_be_reached_is_one_error_line(pacs, capsys):
    url = f"http://127.0.0.1:{_free_port()}/dicom-web"
    assert _main(pacs, url, "--study", pacs["studies"][0]) == 2
    line = _error_line(capsys)
    assert url in line and "cannot reach the server" in line


def test_an_unknown_study_and_an_http_error_are_one_error_line(pacs, orthanc, capsys):
    assert _main(pacs, pacs["url"], "--study", "1.2.3.4.5.6") == 2
    line = _error_line(capsys)
    assert pacs["url"] in line and "study 1.2.3.4.5.6 not found" in line
    url = f"{orthanc}/no-dicom-web-here"
    assert _main(pacs, url, "--since", "20240101") == 2
    line = _error_line(capsys)
    assert url in line and "HTTP 404" in line


def test_a_redirect_to_another_host_is_refused(pacs, capsys):
    hits = []

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the handler's name in http.server
            hits.append(self.path)
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:{_free_port()}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        assert _main(pacs, url, "--since", "20240101") == 2
    finally:
        server.shutdown()
        server.server_close()
    line = _error_line(capsys)
    assert url in line and "redirect to another server" in line and hits


@pytest.mark.parametrize("args, expected", [
    (["--study", "1.2.3"], "--study and --since need --dicomweb"),
    (["some.dcm", "--dicomweb", "http://127.0.0.1:9/dicom-web", "--study", "1.2.3"],
     "--dicomweb takes no INPUT"),
    (["--dicomweb", "http://127.0.0.1:9/dicom-web"], "--dicomweb needs --study"),
    (["--dicomweb", "http://127.0.0.1:9/dicom-web", "--since", "2024-13-01"], "not a date"),
    (["--dicomweb", "http://127.0.0.1:9/dicom-web", "--study", "../../etc"], "not a DICOM UID"),
    (["--dicomweb", "ftp://127.0.0.1/dicom-web", "--study", "1.2.3"], "not an http://"),
])
def test_unusable_dicomweb_arguments(tmp_path, capsys, args, expected):
    # checked before the bundle is loaded and before anything is contacted
    rc = main(["predict", *args, "--model", str(tmp_path / "no-bundle"),
               "--output", str(tmp_path / "out")])
    assert rc == 2
    assert expected in _error_line(capsys)
