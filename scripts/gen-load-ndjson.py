#!/usr/bin/env python3
"""Write a synthetic, US Core-shaped NDJSON file for load measurements.

Usage: scripts/gen-load-ndjson.py [--uuid] [RESOURCES] > FILE.ndjson   (default 150000;
seeded: the same arguments always give the same file)

Ids read like `pt-12-obs-3`; with --uuid every id (and every reference) is a random UUID
instead, as in Synthea's exports, which is the harder case for a store's indexes.

Per patient, roughly what Synthea writes for a few years of a patient's record: the Patient
(identifiers, name, telecom, address, US Core race/ethnicity extensions), Encounters,
Conditions (problem list and encounter diagnoses), vital-sign Observations (blood pressure with
components, heart rate, BMI) and laboratory Observations (LOINC, valueQuantity, reference
ranges), MedicationRequests, Immunizations, Procedures and DocumentReferences; resources of
0.5–2 kB, like Synthea's.
"""

import json
import random
import re
import sys
import uuid

LABS = [
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 70, 140),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.5, 9.0),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 140, 260),
    ("2571-8", "Triglycerides", "mg/dL", 60, 250),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 11, 17),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4, 11),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.4),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 135, 146),
]
VITALS = [
    ("8867-4", "Heart rate", "/min", 55, 100),
    ("9279-1", "Respiratory rate", "/min", 12, 20),
    ("8310-5", "Body temperature", "Cel", 36.1, 37.8),
    ("29463-7", "Body weight", "kg", 10, 120),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 16, 38),
]
CONDITIONS = [
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("195967001", "Asthma"),
    ("55822004", "Hyperlipidemia"),
    ("444814009", "Viral sinusitis"),
    ("10509002", "Acute bronchitis"),
]
MEDS = [
    ("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("895994", "120 ACTUAT Fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler"),
    ("617320", "atorvastatin 40 MG Oral Tablet"),
]
VACCINES = [("140", "Influenza, seasonal, injectable, preservative free"), ("113", "Td (adult) preservative free"),
            ("133", "Pneumococcal conjugate PCV 13")]
PROCEDURES = [("430193006", "Medication Reconciliation (procedure)"), ("710824005", "Assessment of health and social care needs")]
FAMILY = ["Garcia", "Smith", "Nguyen", "Okafor", "Delgado", "Kowalski", "Haddad", "Johnson", "Müller", "Rossi"]
GIVEN = ["Rosa", "James", "Lena", "Maya", "Omar", "Chen", "Ana", "Peter", "Fatima", "Lucas"]
CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
UCORE = "http://hl7.org/fhir/us/core/StructureDefinition/"


def when(rng):
    return "20%02d-%02d-%02dT%02d:%02d:00-05:00" % (
        rng.randint(12, 24), rng.randint(1, 12), rng.randint(1, 28), rng.randint(8, 17), rng.randint(0, 59))


def patient(rng, pid, n):
    fam, giv = rng.choice(FAMILY), rng.choice(GIVEN)
    return {
        "resourceType": "Patient", "id": pid,
        "meta": {"profile": [UCORE + "us-core-patient"]},
        "extension": [
            {"url": UCORE + "us-core-race", "extension": [
                {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2106-3", "display": "White"}},
                {"url": "text", "valueString": "White"}]},
            {"url": UCORE + "us-core-ethnicity", "extension": [
                {"url": "ombCategory", "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": "2186-5", "display": "Not Hispanic or Latino"}},
                {"url": "text", "valueString": "Not Hispanic or Latino"}]},
            {"url": UCORE + "us-core-birthsex", "valueCode": rng.choice("FM")}],
        "identifier": [
            {"system": "https://github.com/synthetichealth/synthea", "value": "%08x-synthetic-%d" % (rng.getrandbits(32), n)},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR", "display": "Medical Record Number"}]},
             "system": "http://hospital.smarthealthit.org", "value": "MRN%07d" % n},
            {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]},
             "system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-%02d-%04d" % (n % 100, n % 10000)}],
        "name": [{"use": "official", "family": fam, "given": [giv, rng.choice(GIVEN)], "prefix": [rng.choice(["Mr.", "Ms.", "Mrs."])]}],
        "telecom": [{"system": "phone", "value": "555-%03d-%04d" % (n % 1000, rng.randint(0, 9999)), "use": "home"},
                    {"system": "email", "value": "%s.%s%d@example.org" % (giv.lower(), fam.lower(), n)}],
        "gender": rng.choice(["female", "male"]),
        "birthDate": "19%02d-%02d-%02d" % (rng.randint(30, 99), rng.randint(1, 12), rng.randint(1, 28)),
        "address": [{"line": ["%d Main Street" % rng.randint(1, 999)], "city": rng.choice(["Boston", "Springfield", "Worcester"]),
                     "state": "MA", "postalCode": "0%04d" % rng.randint(1000, 2999), "country": "US"}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-US", "display": "English"}]}}],
    }


def quantity(rng, unit, lo, hi):
    return {"value": round(rng.uniform(lo, hi), 1), "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}


def observation(rng, oid, pid, eid, cat, code):
    t = when(rng)
    o = {
        "resourceType": "Observation", "id": oid,
        "meta": {"profile": [UCORE + ("us-core-observation-lab" if cat == "laboratory" else "us-core-vital-signs")]},
        "status": "final",
        "category": [{"coding": [{"system": CAT, "code": cat, "display": cat.replace("-", " ").title()}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code[0], "display": code[1]}], "text": code[1]},
        "subject": {"reference": "Patient/" + pid},
        "encounter": {"reference": "Encounter/" + eid},
        "effectiveDateTime": t, "issued": t.replace("-05:00", ".000-05:00"),
        "valueQuantity": quantity(rng, code[2], code[3], code[4]),
    }
    if cat == "laboratory":
        o["referenceRange"] = [{"low": {"value": code[3], "unit": code[2]}, "high": {"value": code[4], "unit": code[2]}}]
    return o


def blood_pressure(rng, oid, pid, eid):
    t = when(rng)
    comp = lambda c, d, lo, hi: {"code": {"coding": [{"system": "http://loinc.org", "code": c, "display": d}]},
                                 "valueQuantity": quantity(rng, "mm[Hg]", lo, hi)}
    return {
        "resourceType": "Observation", "id": oid, "meta": {"profile": [UCORE + "us-core-blood-pressure"]},
        "status": "final",
        "category": [{"coding": [{"system": CAT, "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}], "text": "Blood pressure"},
        "subject": {"reference": "Patient/" + pid}, "encounter": {"reference": "Encounter/" + eid},
        "effectiveDateTime": t, "issued": t,
        "component": [comp("8480-6", "Systolic blood pressure", 100, 160), comp("8462-4", "Diastolic blood pressure", 60, 100)],
    }


def records(n_total):
    rng = random.Random(42)
    out = 0
    n = 0
    while out < n_total:
        pid = "pt-%d" % n
        batch = [patient(rng, pid, n)]
        encounters = []
        for e in range(rng.randint(4, 8)):
            eid = "%s-enc-%d" % (pid, e)
            encounters.append(eid)
            t = when(rng)
            batch.append({
                "resourceType": "Encounter", "id": eid, "meta": {"profile": [UCORE + "us-core-encounter"]},
                "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003", "display": "Encounter for check up"}],
                          "text": "Encounter for check up"}],
                "subject": {"reference": "Patient/" + pid},
                "participant": [{"individual": {"reference": "Practitioner/prac-%d" % (n % 50), "display": "Dr. Maya Patel"}}],
                "period": {"start": t, "end": t.replace(":00-05:00", ":45-05:00")},
                "serviceProvider": {"reference": "Organization/org-%d" % (n % 10)},
            })
        for c in rng.sample(CONDITIONS, rng.randint(1, 3)):
            batch.append({
                "resourceType": "Condition", "id": "%s-cond-%s" % (pid, c[0]),
                "meta": {"profile": [UCORE + "us-core-condition-problems-health-concerns"]},
                "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}],
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": c[0], "display": c[1]}], "text": c[1]},
                "subject": {"reference": "Patient/" + pid}, "encounter": {"reference": "Encounter/" + encounters[0]},
                "onsetDateTime": when(rng), "recordedDate": when(rng),
            })
        k = 0
        for eid in encounters:
            batch.append(blood_pressure(rng, "%s-obs-%d" % (pid, k), pid, eid)); k += 1
            for v in rng.sample(VITALS, 3):
                batch.append(observation(rng, "%s-obs-%d" % (pid, k), pid, eid, "vital-signs", v)); k += 1
            for lab in rng.sample(LABS, rng.randint(2, 5)):
                batch.append(observation(rng, "%s-obs-%d" % (pid, k), pid, eid, "laboratory", lab)); k += 1
        for i, m in enumerate(rng.sample(MEDS, rng.randint(0, 2))):
            batch.append({
                "resourceType": "MedicationRequest", "id": "%s-med-%d" % (pid, i),
                "meta": {"profile": [UCORE + "us-core-medicationrequest"]},
                "status": "active", "intent": "order",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/medicationrequest-category", "code": "community"}]}],
                "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": m[0], "display": m[1]}], "text": m[1]},
                "subject": {"reference": "Patient/" + pid}, "encounter": {"reference": "Encounter/" + encounters[-1]},
                "authoredOn": when(rng), "requester": {"reference": "Practitioner/prac-%d" % (n % 50)},
                "dosageInstruction": [{"sequence": 1, "text": "Take one tablet daily", "timing": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "d"}}}],
            })
        for i, v in enumerate(rng.sample(VACCINES, rng.randint(1, 2))):
            batch.append({
                "resourceType": "Immunization", "id": "%s-imm-%d" % (pid, i), "meta": {"profile": [UCORE + "us-core-immunization"]},
                "status": "completed",
                "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": v[0], "display": v[1]}], "text": v[1]},
                "patient": {"reference": "Patient/" + pid}, "encounter": {"reference": "Encounter/" + encounters[i]},
                "occurrenceDateTime": when(rng), "primarySource": True,
            })
        p = rng.choice(PROCEDURES)
        batch.append({
            "resourceType": "Procedure", "id": "%s-proc-0" % pid, "meta": {"profile": [UCORE + "us-core-procedure"]},
            "status": "completed",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": p[0], "display": p[1]}], "text": p[1]},
            "subject": {"reference": "Patient/" + pid}, "encounter": {"reference": "Encounter/" + encounters[1]},
            "performedPeriod": {"start": when(rng), "end": when(rng)},
        })
        batch.append({
            "resourceType": "DocumentReference", "id": "%s-doc-0" % pid, "meta": {"profile": [UCORE + "us-core-documentreference"]},
            "status": "current",
            "type": {"coding": [{"system": "http://loinc.org", "code": "34117-2", "display": "History and physical note"}]},
            "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category", "code": "clinical-note"}]}],
            "subject": {"reference": "Patient/" + pid}, "date": when(rng),
            "author": [{"reference": "Practitioner/prac-%d" % (n % 50)}],
            "content": [{"attachment": {"contentType": "text/plain", "data": "UGF0aWVudCBzZWVuIGZvciBhIGNoZWNrLXVwLiBObyBjb21wbGFpbnRzLg=="}}],
            "context": {"encounter": [{"reference": "Encounter/" + encounters[1]}]},
        })
        for r in batch:
            if out >= n_total:
                return
            yield r
            out += 1
        n += 1


def main():
    args = sys.argv[1:]
    uuids = "--uuid" in args
    args = [a for a in args if a != "--uuid"]
    n = int(args[0]) if args else 150000
    rng = random.Random(7)
    names = {}

    def name(key):
        if key not in names:
            names[key] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        return names[key]

    ref = re.compile(r'"reference":"([A-Za-z]+)/([^"]+)"')
    w = sys.stdout.write
    for r in records(n):
        if uuids:
            r["id"] = name(r["resourceType"] + "/" + r["id"])
        line = json.dumps(r, ensure_ascii=False, separators=(",", ":"))
        if uuids:
            line = ref.sub(lambda m: '"reference":"%s/%s"' % (m[1], name(m[1] + "/" + m[2])), line)
        w(line)
        w("\n")


if __name__ == "__main__":
    main()
