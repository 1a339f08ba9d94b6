#!/bin/sh
# Prints a fresh .env for docker-compose.yml: every secret it requires, random, URL-safe.
#   sh ops/new-env.sh > .env && chmod 600 .env
# Keep .env out of version control (it is in .gitignore) and back it up with the database:
# without CHANGEFLOW_PAYLOAD_KEYS no history, and without CHANGEFLOW_CREDENTIAL_KEYS no
# connector secret, can be read again. CHANGEFLOW_DECISION_ISSUER must be the `iss` your
# identity service signs decision tokens with (the development signer's by default).
set -eu
secret() { python3 -c 'import secrets; print(secrets.token_urlsafe(24))'; }
key() { python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'; }
cat <<ENV
POSTGRES_PASSWORD=$(secret)
CHANGEFLOW_PAYLOAD_KEYS=p1:$(key)
CHANGEFLOW_CREDENTIAL_KEYS=c1:$(key)
CHANGEFLOW_CODEC_SERVER_TOKEN=$(secret)
CHANGEFLOW_DECISION_ISSUER=${CHANGEFLOW_DECISION_ISSUER:-changeflow-dev-signer}
GRAFANA_ADMIN_PASSWORD=$(secret)
ENV
