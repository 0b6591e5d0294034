"""A local TAP server (127.0.0.1) that speaks the Gaia archive's async protocol.

It stands in for https://gea.esac.esa.int/tap-server/tap, which this workplace cannot reach,
so the real astroquery code path (``GaiaClass.launch_job_async``) runs against it:

* ``POST /tap-server/tap/async`` (REQUEST=doQuery, LANG=ADQL, FORMAT, QUERY, PHASE=RUN)
  -> ``303 See Other`` with ``Location: .../async/<jobid>``;
* ``GET .../async/<jobid>/phase`` -> ``EXECUTING`` once, then ``COMPLETED`` (or ``ERROR``);
* ``GET .../async/<jobid>/results/result`` -> the answer as a gzipped BINARY2 VOTable with
  the archive's column types (source_id long, positions double, errors/photometry float);
* ``GET .../async/<jobid>/error`` -> the archive's plain-text error document.

The server answers queries from a table it holds: it parses the ADQL our client writes
(POLYGON and simple comparisons) and evaluates it with its own geometry (a winding-number test
in the tangent plane of each star, independent of the client's). Anything else it cannot
parse ends in phase ERROR with a parse message, as the archive does.

Failures are scripted per POST through ``server.plan`` (consumed in order, then ``"ok"``):
``"500"`` (an HTML error page), ``"503"`` and ``"429"`` (overloaded, rate-limited), ``"400"``
(a refusal whose text mentions memory, connections and a 500, to show that text is not how
errors are classified), ``"hang"`` (the POST answers after ``hang_s``), ``"stuck"`` (the job
never leaves EXECUTING), ``"aborted"`` (the service aborts the job), ``"empty"`` (a valid
answer with no rows), ``"syntax"`` (phase ERROR, a parse error).
"""

from __future__ import annotations

import gzip
import io
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import numpy as np

_FLOAT32 = {"ra_error", "dec_error", "pmra_error", "pmdec_error", "parallax_error",
            "phot_g_mean_mag", "bp_rp", "ruwe"}
_UNITS = {"ra": "deg", "dec": "deg", "pmra": "mas.yr**-1", "pmdec": "mas.yr**-1",
          "parallax": "mas", "ra_error": "mas", "dec_error": "mas", "pmra_error": "mas.yr**-1",
          "pmdec_error": "mas.yr**-1", "parallax_error": "mas", "phot_g_mean_mag": "mag",
          "bp_rp": "mag"}


def _inside_polygon(ra, dec, poly):
    """Winding number of the polygon around each star, in the star's own tangent plane."""
    def vec(a, d):
        a, d = np.radians(a), np.radians(d)
        return np.stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)], axis=-1)

    p = vec(ra, dec)                               # (N, 3)
    v = vec(poly[:, 0], poly[:, 1])                # (M, 3)
    east = np.cross([0, 0, 1.0], p)
    east /= np.linalg.norm(east, axis=1, keepdims=True)
    north = np.cross(p, east)
    w = v @ p.T                                    # (M, N)
    x = (v @ east.T) / w
    y = (v @ north.T) / w
    ang = np.arctan2(y, x)
    d = np.diff(np.vstack([ang, ang[:1]]), axis=0)
    d = (d + np.pi) % (2 * np.pi) - np.pi
    return (np.abs(d.sum(axis=0)) > np.pi) & np.all(w > 0, axis=0)


def evaluate(adql: str, table: dict) -> np.ndarray:
    """Row mask of ``table`` for the subset of ADQL the client writes; ValueError otherwise."""
    m = re.fullmatch(r"\s*SELECT\s+(?P<cols>[\w\s,]+?)\s+FROM\s+gaiadr3\.gaia_source\s+"
                     r"WHERE\s+(?P<where>.*)", adql, re.S | re.I)
    if not m:
        raise ValueError("Error while parsing ADQL query: unexpected statement")
    mask = np.ones(len(table["source_id"]), bool)
    for cond in re.split(r"\s+AND\s+", m["where"].strip(), flags=re.I):
        poly = re.fullmatch(r"1\s*=\s*CONTAINS\(POINT\('ICRS',\s*ra,\s*dec\),\s*"
                            r"POLYGON\('ICRS',\s*(?P<pts>[-\d.,\s]+)\)\)", cond.strip())
        if poly:
            vals = np.array([float(x) for x in poly["pts"].split(",")]).reshape(-1, 2)
            mask &= _inside_polygon(table["ra"], table["dec"], vals)
            continue
        cmp_ = re.fullmatch(r"(\w+)\s*(<|>|<=|>=)\s*(-?[\d.eE+-]+)", cond.strip())
        if not cmp_ or cmp_[1] not in table:
            raise ValueError(f"Error while parsing ADQL query: cannot parse {cond.strip()!r}")
        col, op, val = table[cmp_[1]], cmp_[2], float(cmp_[3])
        with np.errstate(invalid="ignore"):
            mask &= {"<": col < val, ">": col > val, "<=": col <= val, ">=": col >= val}[op]
    return mask


def votable_bytes(rows: dict, columns: list[str]) -> bytes:
    """A gzipped BINARY2 VOTable of ``rows`` (the archive's ``votable_gzip`` format)."""
    from astropy.io.votable import from_table
    from astropy.table import MaskedColumn, Table

    t = Table()
    for c in columns:
        a = np.asarray(rows[c])
        if c == "source_id":
            t[c] = a.astype(np.int64)
        else:
            a = a.astype(np.float32 if c in _FLOAT32 else np.float64)
            t[c] = MaskedColumn(a, mask=~np.isfinite(a), unit=_UNITS.get(c))
    vot = from_table(t)
    vot.resources[0].type = "results"
    buf = io.BytesIO()
    vot.to_xml(buf, tabledata_format="binary2")
    return gzip.compress(buf.getvalue())


class TapServer:
    """See the module docstring. ``table``: dict of column -> array (the archive's sky)."""

    def __init__(self, table: dict, hang_s: float = 3.0):
        self.table = table
        self.hang_s = hang_s
        self.plan: list[str] = []
        self.jobs: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.queries: list[str] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, status, body=b"", ctype="text/plain", headers=()):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                server.requests.append(("POST", self.path))
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                form = {k: v[0] for k, v in parse_qs(body).items()}
                if self.path.rstrip("/") != "/tap-server/tap/async":
                    return self._send(404, b"not found")
                with server._lock:
                    mode = server.plan.pop(0) if server.plan else "ok"
                server.queries.append(form.get("QUERY", ""))
                if mode == "hang":
                    time.sleep(server.hang_s)
                if mode == "500":
                    page = (b"<html><head><title>Error 500</title></head><body><h1>HTTP "
                            b"Status 500 - Internal Server Error</h1></body></html>")
                    return self._send(500, page, "text/html")
                if mode in ("503", "429"):
                    return self._send(int(mode), b"busy, try later", headers=[("Retry-After",
                                                                               "1")])
                if mode == "400":
                    return self._send(400, b"query refused: out of memory on connection 500 "
                                           b"(timeout)")
                jobid = uuid.uuid4().hex[:12] + "O"
                server.jobs[jobid] = {"mode": mode, "query": form.get("QUERY", ""),
                                      "format": form.get("FORMAT"), "polls": 0}
                host, port = server.httpd.server_address[:2]
                loc = f"http://{host}:{port}/tap-server/tap/async/{jobid}"
                return self._send(303, b"", headers=[("Location", loc)])

            def do_GET(self):
                server.requests.append(("GET", self.path))
                m = re.fullmatch(r"/tap-server/tap/async/(\w+)/(phase|results/result|error)",
                                 self.path)
                if not m or m[1] not in server.jobs:
                    return self._send(404, b"no such job")
                job = server.jobs[m[1]]
                if m[2] == "phase":
                    job["polls"] += 1
                    if job["mode"] == "stuck" or job["polls"] == 1:
                        return self._send(200, b"EXECUTING")
                    return self._send(200, server._finish(job).encode())
                if m[2] == "error":
                    return self._send(200, job.get("error", "").encode())
                if server._finish(job) != "COMPLETED":
                    return self._send(400, b"job has no results")
                return self._send(200, job["answer"], "application/x-votable+xml")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _finish(self, job: dict) -> str:
        if "phase" in job:
            return job["phase"]
        if job["mode"] == "aborted":
            job["phase"] = "ABORTED"
            job["error"] = "job aborted by the service (queue limit)"
            return job["phase"]
        try:
            if job["mode"] == "syntax":
                raise ValueError("Error while parsing ADQL query: Incorrect syntax near 'FROM'")
            mask = evaluate(job["query"], self.table)
            if job["mode"] == "empty":
                mask[:] = False
            cols = re.match(r"\s*SELECT\s+(.+?)\s+FROM", job["query"], re.S | re.I)[1]
            names = [c.strip() for c in cols.split(",")]
            job["answer"] = votable_bytes({c: np.asarray(self.table[c])[mask] for c in names},
                                          names)
            job["rows"] = int(mask.sum())
            job["phase"] = "COMPLETED"
        except (ValueError, KeyError) as exc:
            job["phase"] = "ERROR"
            job["error"] = str(exc)
        return job["phase"]

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def count(self, method: str = "POST") -> int:
        return sum(1 for m, _ in self.requests if m == method)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
