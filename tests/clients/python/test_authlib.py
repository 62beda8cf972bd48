"""A confidential web app built on Authlib's OAuth2Session (client_secret_basic + PKCE S256)
completes a SMART standalone launch against `fhirgate serve`."""

import time

import pytest
import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session

from conftest import AUTHLIB_REDIRECT
from harness import User
from idtoken import verify_id_token

CLIENT_ID = "authlib-app"
SCOPE = "launch/patient openid fhirUser offline_access patient/Patient.rs patient/Observation.rs"
FHIR_JSON = {"Accept": "application/fhir+json"}


def test_authlib_standalone_launch(fhirgate):
    # SMART discovery on the FHIR base; the OIDC document on the issuer agrees with it
    smart = requests.get(f"{fhirgate.fhir}/.well-known/smart-configuration", timeout=10).json()
    oidc = requests.get(f"{fhirgate.base}/.well-known/openid-configuration", timeout=10).json()
    assert smart["issuer"] == oidc["issuer"] == fhirgate.base
    for k in ("authorization_endpoint", "token_endpoint", "jwks_uri", "revocation_endpoint",
              "introspection_endpoint"):
        assert smart[k] == oidc[k], k
    assert "S256" in smart["code_challenge_methods_supported"]
    assert "client_secret_basic" in smart["token_endpoint_auth_methods_supported"]

    refreshed = []
    session = OAuth2Session(
        CLIENT_ID, "authlib-secret", scope=SCOPE, redirect_uri=AUTHLIB_REDIRECT,
        code_challenge_method="S256", token_endpoint=smart["token_endpoint"],
        token_endpoint_auth_method="client_secret_basic",
        update_token=lambda token, **kw: refreshed.append(token), default_timeout=30,
    )
    verifier, nonce = generate_token(64), generate_token(20)
    url, state = session.create_authorization_url(
        smart["authorization_endpoint"], code_verifier=verifier, nonce=nonce, aud=fhirgate.fhir)
    assert "code_challenge_method=S256" in url and "code_challenge=" in url

    amy = User(fhirgate, "amy", "amy-pass")
    callback = amy.authorize(url)
    assert callback.startswith(AUTHLIB_REDIRECT + "?"), f"{callback}\n{amy.trace()}"

    # Authlib checks state, sends the code, redirect_uri and code_verifier with HTTP Basic
    token = session.fetch_token(authorization_response=callback, state=state,
                                code_verifier=verifier)
    assert token["token_type"].lower() == "bearer"
    assert token["scope"] == SCOPE, "a client that gets what it asked for sees it echoed"
    assert token["patient"] == "pt-1"
    assert token.get("refresh_token") and token.get("id_token") and token.get("expires_at")

    claims = verify_id_token(token["id_token"], jwks_uri=smart["jwks_uri"], issuer=fhirgate.base,
                             client_id=CLIENT_ID, nonce=nonce, access_token=token["access_token"])
    assert claims["sub"] == "amy"
    assert claims["fhirUser"] == f"{fhirgate.fhir}/Patient/pt-1"

    # the FHIR API through the session (bearer token), confined to Amy's compartment
    r = session.get(f"{fhirgate.fhir}/Patient/pt-1", headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert r.json()["name"][0]["family"] == "Shaw"
    assert session.get(f"{fhirgate.fhir}/Patient/pt-2", headers=FHIR_JSON).status_code == 404
    bundle = session.get(f"{fhirgate.fhir}/Observation", headers=FHIR_JSON).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["obs-1"]

    userinfo = session.get(oidc["userinfo_endpoint"]).json()
    assert userinfo["sub"] == claims["sub"] and userinfo["fhirUser"] == claims["fhirUser"]

    info = session.introspect_token(smart["introspection_endpoint"],
                                    token=token["access_token"]).json()
    assert info["active"] is True and info["client_id"] == CLIENT_ID
    assert info["patient"] == "pt-1"

    # refresh explicitly: a new access token, the refresh token rotated, same scope and context
    first = dict(token)
    token2 = session.refresh_token(smart["token_endpoint"])
    assert token2["access_token"] != first["access_token"]
    assert token2["refresh_token"] != first["refresh_token"]
    assert token2["scope"] == SCOPE and token2["patient"] == "pt-1"
    assert refreshed, "update_token was called"

    # refresh automatically: Authlib refreshes an expired token before the request
    session.token["expires_at"] = int(time.time()) - 5
    before = session.token["access_token"]
    r = session.get(f"{fhirgate.fhir}/Patient/pt-1", headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    assert session.token["access_token"] != before and len(refreshed) == 2

    # revoke the refresh token: the grant goes, with every token issued under it
    access, refresh = session.token["access_token"], session.token["refresh_token"]
    r = session.revoke_token(smart["revocation_endpoint"], token=refresh,
                             token_type_hint="refresh_token")
    assert r.status_code == 200, r.text
    with pytest.raises(OAuthError) as e:
        session.refresh_token(smart["token_endpoint"], refresh_token=refresh)
    assert e.value.error == "invalid_grant"
    r = requests.get(f"{fhirgate.fhir}/Patient/pt-1",
                     headers={**FHIR_JSON, "Authorization": f"Bearer {access}"}, timeout=10)
    assert r.status_code == 401
    info = session.introspect_token(smart["introspection_endpoint"], token=access).json()
    assert info == {"active": False}
