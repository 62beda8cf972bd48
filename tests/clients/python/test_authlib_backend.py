"""SMART Backend Services with Authlib: an OAuth2Session authenticating with `private_key_jwt`
(Authlib's PrivateKeyJWT client auth method, RFC 7523) gets a `client_credentials` token for
`system/` scopes, reads with it, and introspects it; a wrong key, a replayed assertion and an
assertion that lives longer than SMART allows are refused with `invalid_client`."""

import jwt as pyjwt
import pytest
import requests
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT, private_key_jwt_sign
from joserfc.jwk import ECKey, RSAKey

SCOPE = "system/Patient.rs system/Observation.rs"
FHIR_JSON = {"Accept": "application/fhir+json"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def generate(alg: str, kid: str):
    params = {"kid": kid, "alg": alg, "use": "sig"}
    if alg == "RS384":
        return RSAKey.generate_key(2048, parameters=params, private=True)
    return ECKey.generate_key("P-384", parameters=params, private=True)


class SmartPrivateKeyJWT(PrivateKeyJWT):
    """Authlib's PrivateKeyJWT signs assertions that expire an hour after issue; SMART Backend
    Services allow at most five minutes, so a SMART client sets `expires_in` (a keyword Authlib's
    signing function takes). Everything else — iss = sub = client_id, aud = token endpoint, a
    fresh jti, the kid header — is Authlib's own."""

    def sign(self, auth, token_endpoint):
        return private_key_jwt_sign(auth.client_secret, client_id=auth.client_id,
                                    token_endpoint=token_endpoint, header=dict(self.headers or {}),
                                    alg=self.alg, expires_in=300)


def session_for(client_id, key, token_endpoint, alg, method=SmartPrivateKeyJWT):
    s = OAuth2Session(client_id, key, scope=SCOPE, token_endpoint=token_endpoint,
                      token_endpoint_auth_method="private_key_jwt", default_timeout=30)
    s.register_client_auth_method(method(token_endpoint, headers={"kid": key.kid}, alg=alg))
    return s


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_authlib_backend_services(fhirgate, alg):
    client_id = f"authlib-backend-{alg.lower()}"
    key = generate(alg, f"{client_id}-k1")
    fhirgate.seed([{"resourceType": "Client", "id": client_id, "grant_types": ["client_credentials"],
                    "scope": "system/*.rs",
                    "jwks": {"keys": [key.as_dict(private=False)]}}])

    smart = requests.get(f"{fhirgate.fhir}/.well-known/smart-configuration", timeout=10).json()
    token_endpoint = smart["token_endpoint"]
    assert "client_credentials" in smart["grant_types_supported"]
    assert "private_key_jwt" in smart["token_endpoint_auth_methods_supported"]
    assert alg in smart["token_endpoint_auth_signing_alg_values_supported"]
    assert "client-confidential-asymmetric" in smart["capabilities"]

    session = session_for(client_id, key, token_endpoint, alg)
    token = session.fetch_token(token_endpoint, grant_type="client_credentials")
    assert token["token_type"].lower() == "bearer"
    assert token["scope"] == SCOPE
    assert token["expires_in"] > 0
    assert "refresh_token" not in token and "patient" not in token and "id_token" not in token

    # the access token is a JWT signed with a key from the server's JWKS, about the client
    signing_key = pyjwt.PyJWKClient(smart["jwks_uri"]).get_signing_key_from_jwt(token["access_token"])
    claims = pyjwt.decode(token["access_token"], signing_key, algorithms=["ES256", "RS256"],
                          audience=fhirgate.fhir, issuer=fhirgate.base)
    assert claims["sub"] == client_id and claims["client_id"] == client_id
    assert claims["scope"] == SCOPE and "patient" not in claims

    # system/ scopes: every patient's data, and nothing the scopes do not name
    bundle = session.get(f"{fhirgate.fhir}/Patient", headers=FHIR_JSON).json()
    assert bundle["resourceType"] == "Bundle"
    assert {"pt-1", "pt-2"} <= {e["resource"]["id"] for e in bundle["entry"]}
    bundle = session.get(f"{fhirgate.fhir}/Observation", headers=FHIR_JSON).json()
    assert {"obs-1", "obs-2"} <= {e["resource"]["id"] for e in bundle["entry"]}
    r = session.get(f"{fhirgate.fhir}/Patient/pt-2", headers=FHIR_JSON)
    assert r.status_code == 200 and r.json()["name"][0]["family"] == "Other"
    r = session.get(f"{fhirgate.fhir}/Encounter", headers=FHIR_JSON)
    assert r.status_code == 403, r.text

    # introspection, the client authenticating with a new assertion
    info = session.introspect_token(smart["introspection_endpoint"],
                                    token=token["access_token"]).json()
    assert info["active"] is True
    assert info["client_id"] == client_id and info["scope"] == SCOPE
    assert info["exp"] == claims["exp"]
    assert "patient" not in info

    # a wrong key under the registered kid: invalid_client, through Authlib and on the wire
    wrong = generate(alg, key.kid)
    with pytest.raises(OAuthError) as e:
        session_for(client_id, wrong, token_endpoint, alg).fetch_token(
            token_endpoint, grant_type="client_credentials")
    assert e.value.error == "invalid_client"
    forged = private_key_jwt_sign(wrong, client_id=client_id, token_endpoint=token_endpoint,
                                  header={"kid": key.kid}, alg=alg, expires_in=300)
    r = requests.post(token_endpoint, timeout=10, data={
        "grant_type": "client_credentials", "scope": SCOPE,
        "client_assertion_type": ASSERTION_TYPE, "client_assertion": forged})
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "invalid_client"

    # the right key, but the same assertion twice: the jti is accepted once
    assertion = private_key_jwt_sign(key, client_id=client_id, token_endpoint=token_endpoint,
                                     header={"kid": key.kid}, alg=alg, expires_in=300)
    form = {"grant_type": "client_credentials", "scope": SCOPE,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
    assert requests.post(token_endpoint, data=form, timeout=10).status_code == 200
    r = requests.post(token_endpoint, data=form, timeout=10)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text

    # Authlib's default assertion lifetime (an hour) is more than SMART allows
    with pytest.raises(OAuthError) as e:
        session_for(client_id, key, token_endpoint, alg, method=PrivateKeyJWT).fetch_token(
            token_endpoint, grant_type="client_credentials")
    assert e.value.error == "invalid_client"

    # a token for an unknown client's assertion is refused the same way
    r = requests.post(token_endpoint, timeout=10, data={
        **form, "client_assertion": private_key_jwt_sign(
            key, client_id="no-such-client", token_endpoint=token_endpoint,
            header={"kid": key.kid}, alg=alg, expires_in=300)})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text
