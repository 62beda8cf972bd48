import pytest

from harness import Fhirgate

AUTHLIB_REDIRECT = "http://127.0.0.1/authlib/callback"
FHIRCLIENT_REDIRECT = "http://127.0.0.1/fhirclient/callback"


def seed() -> list[dict]:
    lab = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                       "code": "laboratory"}]}
    return [
        # the root project seeds the patient and provider policies (decisions §11); backend
        # services need one of their own
        {"resourceType": "AccessPolicy", "id": "test-backend-services", "engine": "matcho",
         "matcho": {"jwt": {"scope": "#system/"}}},
        {"resourceType": "Patient", "id": "pt-1", "name": [{"family": "Shaw", "given": ["Amy"]}],
         "gender": "female", "birthDate": "1987-02-20"},
        {"resourceType": "Patient", "id": "pt-2", "name": [{"family": "Other", "given": ["Bob"]}]},
        {"resourceType": "Observation", "id": "obs-1", "status": "final", "category": [lab],
         "code": {"text": "glucose"}, "subject": {"reference": "Patient/pt-1"}},
        {"resourceType": "Observation", "id": "obs-2", "status": "final", "category": [lab],
         "code": {"text": "glucose"}, "subject": {"reference": "Patient/pt-2"}},
        {"resourceType": "User", "id": "amy", "password": "amy-pass", "email": "amy@example.com",
         "name": {"formatted": "Amy Shaw"}, "fhirUser": {"reference": "Patient/pt-1"}},
        # a confidential web app (client_secret_basic), refresh tokens enabled the Aidbox way
        {"resourceType": "Client", "id": "authlib-app", "secret": "authlib-secret",
         "grant_types": ["authorization_code", "basic"],
         "auth": {"authorization_code": {"redirect_uri": AUTHLIB_REDIRECT, "refresh_token": True,
                                         "secret_required": True}}},
        # a public app (PKCE only), refresh tokens enabled the OAuth way
        {"resourceType": "Client", "id": "fhirclient-app",
         "grant_types": ["authorization_code", "refresh_token"],
         "auth": {"authorization_code": {"redirect_uri": FHIRCLIENT_REDIRECT,
                                         "secret_required": False}}},
    ]


@pytest.fixture(scope="session")
def fhirgate(request):
    server = Fhirgate().start()
    try:
        server.seed(seed())
        yield server
    finally:
        server.stop()
        if request.session.testsfailed:
            print("\n--- fhirgate serve log (last 60 lines) ---")
            print("\n".join(server.log_text().splitlines()[-60:]))
