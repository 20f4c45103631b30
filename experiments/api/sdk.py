"""The browser SDK script (``GET /sdk/parcours.js``) and the demo journey page."""

from __future__ import annotations

import hashlib
import threading
from functools import lru_cache
from pathlib import Path

from flask import (
    Blueprint,
    Response,
    current_app,
    make_response,
    render_template,
    request,
    send_from_directory,
)

from experiments.auth import SYSTEM
from experiments.db import db_session, get_db
from experiments.errors import NotFound
from experiments.services.accounts import create_api_key
from experiments.services.demo import DEMO_EXPERIMENT, DEMO_KEY

bp = Blueprint("sdk", __name__, template_folder="../templates")

SDK_DIR = Path(__file__).resolve().parent.parent / "static" / "sdk"
SDK_FILE = "parcours.min.js"  # built from parcours.js by scripts/build_sdk.py
SDK_MAX_AGE_S = 300
DEMO_KEY_FILE = "demo-client-key"
_demo_key_lock = threading.Lock()


@bp.get("/sdk/parcours.js")
def sdk_script() -> Response:
    """The minified SDK: cacheable (ETag + Cache-Control) and loadable from any origin."""
    path = SDK_DIR / SDK_FILE
    response = send_from_directory(
        SDK_DIR, SDK_FILE, mimetype="text/javascript", max_age=SDK_MAX_AGE_S,
        etag=_content_etag(str(path), path.stat().st_mtime_ns), conditional=True)
    response.cache_control.public = True
    response.headers["Access-Control-Allow-Origin"] = "*"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@lru_cache(maxsize=4)
def _content_etag(path: str, _mtime_ns: int) -> str:
    # A content hash, not mtime, so every host behind a load balancer agrees.
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]


@bp.get("/demo/journey")
def demo_journey() -> Response:
    """A clickable checkout journey on the seeded demo experiment (PARCOURS_DEMO=1 only)."""
    if not current_app.config["PARCOURS"].DEMO:
        raise NotFound("the demo journey is served only with PARCOURS_DEMO=1")
    html = render_template(
        "demo/journey.html", client_key=demo_client_key(), experiment=DEMO_KEY,
        journey=",".join(DEMO_EXPERIMENT["journey"]), endpoint=request.url_root.rstrip("/"))
    response = make_response(html)  # experiments.security adds the no-inline-script CSP
    response.headers["Cache-Control"] = "no-store"
    return response


def demo_client_key() -> str:
    """The demo page's own client key, created once and kept in the instance folder.

    Keys are stored hashed, so the raw key the page embeds has to be kept somewhere; a
    client key is public by design (it can only assign and send events).
    """
    path = Path(current_app.instance_path) / DEMO_KEY_FILE
    with _demo_key_lock:
        if path.exists():
            key = path.read_text().strip()
            principal = current_app.extensions["parcours.api_keys"].lookup(db_session(), key)
            if principal is not None and principal.role == "client":
                return key
        with get_db().session() as session:
            _, key = create_api_key(session, name="demo journey page", role="client",
                                    principal=SYSTEM)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(key)
        path.chmod(0o600)
        return key
