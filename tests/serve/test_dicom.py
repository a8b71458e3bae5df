"""DICOM uploads: identifiers shown and used for de-duplication, never written to the logs."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from servekit import ServeRun, dicom_bytes

PATIENT = "PAT-4711-SECRET"
UID = "1.2.826.0.1.3680043.8.498.4711"


def study_dicom(serve_run: ServeRun, name: str, **elements: object) -> bytes:
    pixels = np.asarray(Image.open(serve_run.studies[name])).astype(np.uint16) * 16  # 12-bit range
    return dicom_bytes(pixels, BitsStored=12, **elements)


def test_dicom_identifiers_dedup_and_no_phi_in_logs(client: TestClient, serve_run: ServeRun,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    data = study_dicom(serve_run, "a", PatientID=PATIENT, StudyInstanceUID=UID, StudyDate="20240131",
                       PatientName="Doe^Jane")
    with caplog.at_level(logging.DEBUG):
        r = client.post("/v1/studies", files={"file": ("Doe_Jane.dcm", data, "application/dicom")})
        assert r.status_code == 201, r.text
        study = r.json()
        # Same StudyInstanceUID, other pixels: the stored study, not a duplicate row.
        again = client.post("/v1/studies", files={"file": ("x.dcm", study_dicom(serve_run, "c", PatientID=PATIENT,
                                                                                 StudyInstanceUID=UID), "x")})
        listing = client.get("/v1/studies?status=all").json()
        client.get(f"/v1/studies/{study['id']}")
        client.get(f"/v1/studies/{study['id']}/image")
        client.post(f"/v1/studies/{study['id']}/read")
    assert study["dicom"] == {"patient_id": PATIENT, "study_instance_uid": UID, "study_date": "2024-01-31"}
    assert study["image"]["format"] == "dicom" and len(study["result"]["findings"]) == 14
    assert again.status_code == 200 and again.json()["id"] == study["id"]
    assert listing["count"] == 1 and listing["studies"][0]["dicom"]["patient_id"] == PATIENT
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert "stored" in text  # the service did log the upload ...
    for secret in (PATIENT, UID, "Doe", "Jane", "20240131", "2024-01-31"):
        assert secret not in text, secret  # ... without any identifier


def test_malformed_identifiers_are_dropped_and_not_logged(client: TestClient, serve_run: ServeRun,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings():  # pydicom warns (with the values) while the test writes the bad file
        warnings.simplefilter("ignore")
        data = study_dicom(serve_run, "b", PatientID="P\x07" + "9" * 100, StudyInstanceUID="not.a.uid!",
                           StudyDate="31/01/2024")
    caplog.clear()  # pydicom logged the bad values while the test wrote them; only the service's logs count
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = client.post("/v1/studies", files={"file": ("x.dcm", data, "application/dicom")})
    said = "\n".join([r.getMessage() for r in caplog.records] + [str(w.message) for w in caught])
    for secret in ("not.a.uid", "31/01/2024", "9" * 20):
        assert secret not in said, said
    assert r.status_code == 201, r.text
    dicom = r.json()["dicom"]
    assert dicom["study_instance_uid"] is None and dicom["study_date"] is None
    assert dicom["patient_id"] == "P" + "9" * 63  # control character dropped, cut to the DICOM LO length


def test_dicom_without_identifiers(client: TestClient, serve_run: ServeRun) -> None:
    r = client.post("/v1/predict", files={"file": ("x.dcm", study_dicom(serve_run, "c"), "application/dicom")})
    assert r.status_code == 200 and r.json()["image"]["format"] == "dicom"
    r = client.post("/v1/studies", files={"file": ("x.dcm", study_dicom(serve_run, "c"), "application/dicom")})
    assert r.status_code == 201
    assert r.json()["dicom"] == {"patient_id": None, "study_instance_uid": None, "study_date": None}
