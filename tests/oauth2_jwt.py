"""An OAuth2 token endpoint and an API for keyward's assertion tests, over TLS, that verify
every JWT keyward signs with an independent library (PyJWT + cryptography): signature, alg,
kid, iss, sub, aud, exp at most 1 h ahead (5 min for a client assertion), iat, jti never
reused; Google's scope claim. The API accepts only the tokens this endpoint issued.

Usage: oauth2_jwt.py DIR CERT KEY. Writes into DIR the private keys keyward signs with (PKCS#8
PEM: rsa.pem, ec.pem, client.pem, and unknown.pem, which the endpoint does not know) and a
Google service-account key file (sa.json), then prints one JSON line: {"port": N}.
"""
import json
import os
import secrets
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

DIR, CERT, KEY = sys.argv[1:4]
SA_EMAIL = "svc@proj.iam.gserviceaccount.com"
SA_SCOPE = "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/devstorage.read_only"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def write_key(name, key):
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    with open(os.path.join(DIR, name), "wb") as f:
        f.write(pem)
    return pem.decode()


rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ec_key = ec.generate_private_key(ec.SECP256R1())
client_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
write_key("rsa.pem", rsa_key)
write_key("ec.pem", ec_key)
write_key("client.pem", client_key)
write_key("unknown.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048))
sa_pem = sa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode()

# Who may assert what: issuer -> (public key, alg, kid, sub or None).
ISSUERS = {
    "rs-issuer": (rsa_key.public_key(), "RS256", "rs-k1", "user@example.com"),
    "es-issuer": (ec_key.public_key(), "ES256", None, None),
    SA_EMAIL: (sa_key.public_key(), "RS256", "sa-kid-1", None),
}
CLIENTS = {"kw-client": (client_key.public_key(), "RS256")}

issued = {}
seen_jti = set()
log = []
lock = threading.Lock()
token_url = None


def check(assertion, key, alg, kid, max_life):
    header = jwt.get_unverified_header(assertion)
    if header.get("alg") != alg:
        raise ValueError(f"alg {header.get('alg')} is not {alg}")
    if header.get("kid") != kid:
        raise ValueError(f"kid {header.get('kid')} is not {kid}")
    claims = jwt.decode(assertion, key=key, algorithms=[alg], audience=token_url,
                        options={"require": ["exp", "iat", "iss", "aud", "jti"]}, leeway=5)
    now = time.time()
    if claims["exp"] - now > max_life + 5:
        raise ValueError(f"exp is {claims['exp'] - now:.0f} s ahead, more than {max_life}")
    if claims["iat"] > now + 5:
        raise ValueError("iat in the future")
    with lock:
        if claims["jti"] in seen_jti:
            raise ValueError(f"jti {claims['jti']} reused")
        seen_jti.add(claims["jti"])
    return header, claims


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/log":
            with lock:
                return self.reply(200, log)
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        with lock:
            grant = issued.get(token)
        if grant is None:
            return self.reply(401, {"error": "invalid_token"})
        self.reply(200, {"ok": True, "via": grant})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        form = dict(urllib.parse.parse_qsl(body))
        try:
            label, header, claims = self.verify(form)
        except Exception as e:  # noqa: BLE001 - every failure is the client's
            status, error = (401, "invalid_client") if "client_assertion" in form else (400, "invalid_grant")
            with lock:
                log.append({"error": str(e)})
            return self.reply(status, {"error": error, "error_description": str(e)})
        token = "at-" + secrets.token_hex(16)
        with lock:
            issued[token] = label
            log.append({"grant": label, "header": header, "claims": claims,
                        "form_keys": sorted(form.keys()), "scope": form.get("scope")})
        self.reply(200, {"access_token": token, "token_type": "Bearer", "expires_in": 3600})

    def verify(self, form):
        if form.get("grant_type") == JWT_BEARER:
            assertion = form["assertion"]
            iss = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
            if iss not in ISSUERS:
                raise ValueError(f"unknown issuer {iss}")
            key, alg, kid, sub = ISSUERS[iss]
            header, claims = check(assertion, key, alg, kid, 3600)
            if sub is not None and claims.get("sub") != sub:
                raise ValueError(f"sub {claims.get('sub')} is not {sub}")
            if iss == SA_EMAIL:
                if claims.get("scope") != SA_SCOPE or "scope" in form:
                    raise ValueError(f"Google wants the scopes in the scope claim: {claims.get('scope')}")
                return "google", header, claims
            return alg, header, claims
        if form.get("grant_type") == "client_credentials" and form.get("client_assertion_type") == CLIENT_ASSERTION:
            client = form.get("client_id")
            if client not in CLIENTS:
                raise ValueError(f"unknown client {client}")
            key, alg = CLIENTS[client]
            header, claims = check(form["client_assertion"], key, alg, None, 300)
            if claims["iss"] != client or claims.get("sub") != client:
                raise ValueError("iss and sub must be the client id")
            return "private_key_jwt", header, claims
        raise ValueError(f"unsupported grant {form.get('grant_type')}")


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(CERT, KEY)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
port = server.server_address[1]
token_url = f"https://localhost:{port}/token"
with open(os.path.join(DIR, "sa.json"), "w") as f:
    json.dump({"type": "service_account", "project_id": "proj", "private_key_id": "sa-kid-1",
               "private_key": sa_pem, "client_email": SA_EMAIL, "client_id": "1234567890",
               "token_uri": token_url}, f)


def exit_with_the_test():
    sys.stdin.read()
    os._exit(0)


threading.Thread(target=exit_with_the_test, daemon=True).start()
print(json.dumps({"port": port}), flush=True)
server.serve_forever()
