"""Paging a search by following its links while records arrive or Consents change
(adapter.services.search_paging). Review finding F1 (EHR integration review): the links carried
``_offset``, so a photo stored during the walk repeated a record newest first and in the
restricted views (keyed order: oldest first too), and ``total`` changed between pages."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.support.app import PATIENT, adapter_client, as_purpose, consent_resource, metadata, seen_as

OTHER = {"system": PATIENT["system"], "value": "MRN-0002"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _photo(client: Any, n: int, patient: dict[str, str] = PATIENT) -> str:
    """Store a photo (its pixels unique to ``n``) of ``patient``; its Media reference."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (n % 256, n // 256 % 256, 77)).save(out, "PNG")
    r = client.post("/photos", files={"file": ("p.png", out.getvalue(), "image/png"),
                                      "metadata": (None, __import__("json").dumps(metadata(patient=dict(patient))),
                                                   "application/json")})
    assert r.status_code == 201, r.text
    return str(r.json()["record"])


def _entries(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def _next(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)


def _walk(client: Any, first: Any, headers: dict[str, str], between: Any) -> tuple[list[str], set[int]]:
    """Follow ``next`` from the answer ``first``, calling ``between(page number, ids)`` after each
    page; every id shown and every total stated."""
    bundle, seen, totals, n = first.json(), [], set(), 1
    while n < 20:  # five records, two a page: offset paging walked on as long as records came
        assert first.status_code == 200, first.text
        seen += _entries(bundle)
        totals.add(bundle["total"])
        between(n, seen)
        url = _next(bundle)
        if url is None:
            return seen, totals
        first = client.get(url, headers=headers)
        bundle, n = first.json(), n + 1
    raise AssertionError(f"the walk did not end: {seen}")


@pytest.mark.parametrize(("purpose", "sort", "by_post"), [
    ("TREAT", "", False), ("TREAT", "_lastUpdated", False), ("TREAT", "-_lastUpdated", False),
    ("TREAT", "-_lastUpdated", True), ("TRAIN", "", False), ("TRAIN", "", True), ("HRESCH", "-_lastUpdated", False),
    ("HRESCH", "", False)])
def test_records_stored_during_a_walk_neither_repeat_nor_skip_one(tmp_path: Path, purpose: str, sort: str,
                                                                  by_post: bool) -> None:
    """Five photos; a walk of two a page, a photo stored after the first two pages (in a restricted
    view, whose order is its keyed ids, photos until one falls before the last one shown: offset
    paging then repeated one). The walk shows the five, each once, and the same total on every
    page (the snapshot of the first page); the new ones are found by a new search. Test seen
    failing: a repeat (newest first, and in the restricted views) and a growing total."""
    with adapter_client(tmp_path) as (client, services):
        stored = [_photo(client, n) for n in range(5)]
        assert client.post("/fhir/Consent", json=consent_resource(["TRAIN", "HRESCH"])).status_code == 201
        headers = as_purpose(purpose)
        shown = {seen_as(services, purpose, ref).split("/")[1]: ref for ref in stored}
        added: list[str] = []

        def store_one_more(page: int, seen: list[str]) -> None:
            if page > 2:
                return
            for n in range(40):
                ref = _photo(client, 100 * page + n)
                added.append(ref)
                if purpose == "TREAT" or seen_as(services, purpose, ref).split("/")[1] < seen[-1]:
                    return

        query = f"_count=2{'&_sort=' + sort if sort else ''}"
        first = client.post("/fhir/Media/_search", content=query, headers={**headers, **FORM}) if by_post \
            else client.get(f"/fhir/Media?{query}", headers=headers)
        seen, totals = _walk(client, first, headers, store_one_more)
        assert sorted(seen) == sorted(shown), (seen, sorted(shown))
        assert totals == {5}
        assert client.get("/fhir/Media?_summary=count", headers=headers).json()["total"] == 5 + len(added)


@pytest.mark.parametrize("purpose", ["TREAT", "TRAIN"])
def test_a_consent_withdrawn_during_a_walk_skips_none_of_the_records_still_permitted(tmp_path: Path,
                                                                                    purpose: str) -> None:
    """Two patients' photos, four each; after the first page, the patient of a photo on it
    withdraws the purpose's Consent. The next pages are decided afresh (none of that patient's
    photos is shown any more), and every photo of the other patient is shown once: with offset
    paging, the withdrawn photos of the first page pulled the rest back, and one was never shown.
    Test seen failing: one skipped."""
    with adapter_client(tmp_path) as (client, services):
        refs = {ref: patient for n in range(4) for patient in (PATIENT, OTHER)
                for ref in [_photo(client, n if patient is PATIENT else 50 + n, patient)]}
        consents = {}
        for patient in (PATIENT, OTHER):
            created = client.post("/fhir/Consent", json=consent_resource([purpose], patient=patient))
            assert created.status_code == 201, created.text
            consents[patient["value"]] = created.json()
        headers = as_purpose(purpose)
        patient_of = {seen_as(services, purpose, ref).split("/")[1]: patient for ref, patient in refs.items()}
        withdrawn: list[str] = []

        def withdraw(page: int, seen: list[str]) -> None:
            if page != 1:
                return
            value = patient_of[seen[0]]["value"]
            withdrawn.append(value)
            consent = consents[value]
            if purpose == "TREAT":  # the TREAT consent each photo was stored with too
                for found in client.get(f"/fhir/Consent?patient:identifier={PATIENT['system']}|{value}",
                                        headers=headers).json().get("entry", []):
                    client.put(f"/fhir/Consent/{found['resource']['id']}",
                               json={**found["resource"], "status": "inactive"})
            else:
                assert client.put(f"/fhir/Consent/{consent['id']}",
                                  json={**consent, "status": "inactive"}).status_code == 200

        seen, _ = _walk(client, client.get("/fhir/Media?_count=3", headers=headers), headers, withdraw)
        kept = sorted(i for i, p in patient_of.items() if p["value"] != withdrawn[0])
        on_first = seen[:3]
        assert len(seen) == len(set(seen))
        assert sorted(i for i in seen if patient_of[i]["value"] != withdrawn[0]) == kept
        assert all(patient_of[i]["value"] != withdrawn[0] for i in seen[3:]), (on_first, seen)


def test_a_cursor_is_sealed_and_bound_to_its_view(tmp_path: Path) -> None:
    """A ``_cursor`` is sealed (a changed one is 400), and a link of care's view followed under
    a restricted view's purpose is refused (400: its keys are other ids), not misread."""
    with adapter_client(tmp_path) as (client, _):
        for n in range(3):
            _photo(client, n)
        client.post("/fhir/Consent", json=consent_resource(["TRAIN"]))
        url = _next(client.get("/fhir/Media?_count=1", headers=as_purpose("TREAT")).json())
        assert url is not None and "_offset" not in url and "_cursor=" in url
        assert client.get(url, headers=as_purpose("ETREAT", **{"X-Break-Glass": "x"})).status_code in (200, 403)
        other_view = client.get(url, headers=as_purpose("TRAIN"))
        assert other_view.status_code == 400 and other_view.json()["issue"][0]["expression"] == ["_cursor"]
        changed = client.get(url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB"), headers=as_purpose("TREAT"))
        assert changed.status_code == 400
        both = client.get(url + "&_offset=1", headers=as_purpose("TREAT"))
        assert both.status_code == 400


def test_a_cursor_is_bound_to_its_search_not_to_the_page_size_or_format(tmp_path: Path) -> None:
    """Re-verification R4: a GET link's ``_cursor`` followed with another filter or order gave a
    plausible page of another search; now 400. The page size and format may change on the way."""
    with adapter_client(tmp_path) as (client, _):
        for n in range(4):
            _photo(client, n)
        treat = as_purpose("TREAT")
        url = _next(client.get("/fhir/Media?_count=1&_sort=-_lastUpdated", headers=treat).json())
        assert url is not None
        for changed in (url.replace("_sort=-_lastUpdated", "_sort=_lastUpdated"),
                        url.replace("_sort=-_lastUpdated&", ""),
                        url + "&patient:identifier=" + OTHER["value"],
                        url + "&_revinclude=Provenance:target"):
            refused = client.get(changed, headers=treat)
            assert refused.status_code == 400, (changed, refused.text)
            assert refused.json()["issue"][0]["expression"] == ["_cursor"]
        assert client.get(url, headers=treat).status_code == 200
        resized = client.get(url.replace("_count=1", "_count=2") + "&_format=xml", headers=treat)
        assert resized.status_code == 200, resized.text


def test_a_patient_identifier_without_a_system_matches_it_in_any_system(tmp_path: Path) -> None:
    """Review finding F3: ``patient:identifier=MRN-0001`` (a token without a system, which
    search.html#token matches in any system) was refused (400 "takes system|value"): an EHR with
    one MRN system sends the MRN alone. It matches the patient's records, alone, in an OR list
    and chained (``patient.identifier``); ``|MRN-0001`` (no system) still names no patient the
    adapter holds (400), and the pseudonymised view takes a bare pseudonym. Test seen failing: 400."""
    with adapter_client(tmp_path) as (client, _):
        mine, theirs = _photo(client, 1), _photo(client, 2, OTHER)
        treat = as_purpose("TREAT")
        for query in ("patient:identifier=MRN-0001", "subject:identifier=MRN-0001",
                      "patient.identifier=MRN-0001", "patient:identifier=MRN-0001,nobody",
                      f"patient:identifier=nobody,{PATIENT['system']}|MRN-0001"):
            found = client.get(f"/fhir/Media?{query}", headers=treat)
            assert found.status_code == 200, (query, found.text)
            assert _entries(found.json()) == [mine.split("/")[1]], query
        both = client.get("/fhir/Media?patient:identifier=MRN-0001,MRN-0002", headers=treat).json()
        assert sorted(_entries(both)) == sorted(r.split("/")[1] for r in (mine, theirs))
        assert client.get("/fhir/Media?patient:identifier=elsewhere|MRN-0001", headers=treat).json()["total"] == 0
        assert client.get("/fhir/Media?patient:identifier=|MRN-0001", headers=treat).status_code == 400
        client.post("/fhir/Consent", json=consent_resource(["HRESCH", "TRAIN"]))
        hresch = as_purpose("HRESCH")
        pseudonym = client.get("/fhir/Media", headers=hresch).json()["entry"][0]["resource"]["subject"]["identifier"]
        by_pseudonym = client.get(f"/fhir/Media?patient:identifier={pseudonym['value']}", headers=hresch)
        assert by_pseudonym.status_code == 200 and by_pseudonym.json()["total"] == 1
        # a value that is no pseudonym names nothing the view shows: refused as system|value is (400,
        # whatever the store holds), not answered 0 (review EHR F8)
        for query in ("patient:identifier=MRN-0001", "subject:identifier=MRN-0001",
                      f"patient:identifier={PATIENT['system']}|MRN-0001"):
            refused = client.get(f"/fhir/Media?{query}", headers=hresch)
            assert refused.status_code == 400 and "pseudonym" in refused.text, (query, refused.text)
            assert "MRN-0001" not in refused.text
        assert client.get("/fhir/Media?patient:identifier=MRN-0001", headers=as_purpose("TRAIN")).status_code == 400


@pytest.mark.parametrize("sort", ["", "-_lastUpdated"])
def test_a_consent_updated_during_a_walk_of_consents_is_shown_once_in_its_place(tmp_path: Path, sort: str) -> None:
    """A Consent search walked while Consents change: after the first page the one shown and one
    not shown yet are updated, and after the second a new one is recorded. An update gives a
    Consent a new lastUpdated: by it, the one shown would come again and the other go past the
    snapshot (never shown). The walk shows each of the four once, as they are now, at the place
    they had at the first page, with the same total; the new one is on no page. Test seen
    failing: the Consent updated before it was shown was skipped (snapshot on lastUpdated alone)."""
    with adapter_client(tmp_path) as (client, _):
        stored = [client.post("/fhir/Consent", json=consent_resource(["TREAT"], start=f"202{n}-01-01")).json()
                  for n in range(4)]
        by_id = {c["id"]: c for c in stored}
        treat = as_purpose("TREAT")

        def change(page: int, seen: list[str]) -> None:
            if page == 1:
                for consent in (by_id[seen[0]], next(c for c in stored if c["id"] not in seen)):
                    assert client.put(f"/fhir/Consent/{consent['id']}",
                                      json={**consent, "status": "inactive"}).status_code == 200
            elif page == 2:
                assert client.post("/fhir/Consent", json=consent_resource(["TREAT"])).status_code == 201

        first = client.get(f"/fhir/Consent?_count=1{'&_sort=' + sort if sort else ''}", headers=treat)
        order = [e["resource"]["id"] for e in first.json()["entry"]]
        seen, totals = _walk(client, first, treat, change)
        assert sorted(seen) == sorted(by_id) and totals == {4}, (seen, totals)
        assert seen[0] == order[0]
        assert client.get("/fhir/Consent?_summary=count", headers=treat).json()["total"] == 5
