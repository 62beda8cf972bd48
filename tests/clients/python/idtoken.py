"""Check an OpenID Connect id_token with PyJWT against the server's published JWKS."""

import base64

import jwt


def verify_id_token(id_token: str, *, jwks_uri: str, issuer: str, client_id: str,
                    nonce: str | None, access_token: str | None = None) -> dict:
    header = jwt.get_unverified_header(id_token)
    assert header["alg"] == "RS256", header
    key = jwt.PyJWKClient(jwks_uri, cache_keys=False).get_signing_key_from_jwt(id_token)
    claims = jwt.decode(
        id_token, key.key, algorithms=["RS256"], audience=client_id, issuer=issuer,
        options={"require": ["iss", "sub", "aud", "exp", "iat"]},
    )
    # with no nonce in the request, none may come back (OIDC Core 3.1.3.7)
    assert claims.get("nonce") == nonce, claims
    if "at_hash" in claims and access_token is not None:
        digest = jwt.get_algorithm_by_name("RS256").compute_hash_digest(access_token.encode())
        half = base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()
        assert claims["at_hash"] == half, "at_hash does not match the access token"
    return claims
