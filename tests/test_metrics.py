"""The exported metric names are the documented ``ray_app_*`` ones (a real local Ray and its
metrics agent, scraped over HTTP)."""

import subprocess
import sys
import textwrap
import time

from api_server import free_port


def test_metrics_are_exported_as_ray_app(tmp_path):
    port = free_port()
    script = textwrap.dedent(f"""
        import time, urllib.request, ray
        from ray_app.engine.metrics import job_metrics, pool_metrics
        ray.init(num_cpus=1, include_dashboard=False, _metrics_export_port={port},
                 logging_level="ERROR")
        job_metrics().completed.inc(tags={{"stream": "gd-1"}})
        pool_metrics().shards_done.inc()
        for _ in range(90):
            try:
                text = urllib.request.urlopen("http://127.0.0.1:{port}/metrics",
                                              timeout=2).read().decode()
            except OSError:
                text = ""
            if "app_shards_done" in text and "app_jobs_completed" in text:
                print(text)
                break
            time.sleep(1)
        ray.shutdown()
    """)
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=240, cwd=tmp_path).stdout
    names = {line.split("{")[0].split(" ")[0] for line in out.splitlines()
             if line and not line.startswith("#")}
    assert "ray_app_jobs_completed_total" in names, (names, time.time() - t0)
    assert "ray_app_shards_done_total" in names
    assert not any(n.startswith("ray_ray_app") for n in names)
    assert 'stream="gd-1"' in out
