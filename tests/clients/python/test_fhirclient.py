"""A public app built on `fhirclient`, the SMART on FHIR Python client, completes a standalone
launch against `fhirgate serve`: the library reads the CapabilityStatement's oauth-uris, builds
the authorization URL with PKCE S256, exchanges the code, reads the patient through its FHIR
models and refreshes its token."""

import json

import requests
from fhirclient import client
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient

from conftest import FHIRCLIENT_REDIRECT
from harness import User
from idtoken import verify_id_token

CLIENT_ID = "fhirclient-app"


def test_fhirclient_standalone_launch(fhirgate):
    saved = []
    settings = {
        "app_id": CLIENT_ID,
        "api_base": fhirgate.fhir,
        "redirect_uri": FHIRCLIENT_REDIRECT,
        # fhirclient adds `launch/patient` itself when it has no patient yet
        "scope": "openid fhirUser offline_access patient/*.rs",
    }
    smart = client.FHIRClient(settings=settings, save_func=lambda s: saved.append(json.dumps(s)))
    assert not smart.ready
    url = smart.authorize_url                         # fetches {fhir}/metadata
    assert url.startswith(f"{fhirgate.base}/auth/authorize?"), url
    assert "code_challenge_method=S256" in url and f"client_id={CLIENT_ID}" in url

    amy = User(fhirgate, "amy", "amy-pass")
    callback = amy.authorize(url)
    assert callback.startswith(FHIRCLIENT_REDIRECT + "?"), f"{callback}\n{amy.trace()}"

    # an app reloads its state between the redirect and the callback: do the same
    smart = client.FHIRClient(state=json.loads(saved[-1]), save_func=lambda s: saved.append(json.dumps(s)))
    smart.handle_callback(callback)                   # state check, code + code_verifier → token
    assert smart.ready
    assert smart.patient_id == "pt-1"
    ctx = smart.launch_context
    assert ctx["scope"] == "launch/patient openid fhirUser offline_access patient/*.rs"
    first_access = smart.server.auth.access_token
    first_refresh = smart.server.auth.refresh_token
    assert first_refresh, "offline_access granted → a refresh token"

    # the id_token: fhirclient ignores it (and sends no nonce); check it with PyJWT
    oidc = requests.get(f"{fhirgate.base}/.well-known/openid-configuration", timeout=10).json()
    claims = verify_id_token(ctx["id_token"], jwks_uri=oidc["jwks_uri"], issuer=fhirgate.base,
                             client_id=CLIENT_ID, nonce=None, access_token=first_access)
    assert claims["sub"] == "amy" and claims["fhirUser"] == f"{fhirgate.fhir}/Patient/pt-1"

    # the FHIR API through the library's models
    patient = smart.patient
    assert isinstance(patient, Patient) and patient.id == "pt-1"
    assert smart.human_name(patient.name[0]) == "Amy Shaw"
    assert patient.birthDate.isostring == "1987-02-20"
    observations = list(Observation.where(struct={"patient": "pt-1"}).perform_resources_iter(smart.server))
    assert [o.id for o in observations] == ["obs-1"]
    # Patient/pt-2 is outside the compartment: 404 like a missing one
    r = smart.server.session.get(f"{fhirgate.fhir}/Patient/pt-2",
                                 headers=smart.server.auth.signed_headers({}))
    assert r.status_code == 404

    # refresh through the library: a new access token and a rotated refresh token
    assert smart.reauthorize()
    assert smart.server.auth.access_token != first_access
    assert smart.server.auth.refresh_token != first_refresh
    assert smart.launch_context["patient"] == "pt-1"
    smart._patient = None
    assert smart.patient.id == "pt-1", "the refreshed token reads the patient"

