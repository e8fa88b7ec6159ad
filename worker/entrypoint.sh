#!/usr/bin/env bash
# Container entry point: wait until the study database answers, then run the service's command.
# Workers and the proposer ride out later outages themselves (see docs/scale_out.md).
set -euo pipefail
python - <<'PY'
import os, sys, time
import sqlalchemy
from autopeft.study.storage import redact, storage_url
url = storage_url(None)
for attempt in range(60):
    try:
        with sqlalchemy.create_engine(url).connect():
            break
    except sqlalchemy.exc.OperationalError:
        time.sleep(2)
else:
    sys.exit(f"study database {redact(url)} did not answer in 120 s")
PY
exec "$@"
