"""`ray job submit` entry point: one stream recovery on the cluster this job runs in.

    ray job submit --working-dir . -- python jobs/recover.py gd-1 --input catalogue.parquet \
        --out /tmp/results/gd-1

Arguments are those of `ray-app recover` (see `python jobs/recover.py --help`). Inside a Ray job
`ray.init()` joins the job's cluster, so the density actors run on its (GPU) nodes.
"""

import sys

from ray_app.cli import main

if __name__ == "__main__":
    sys.exit(main(["recover", *sys.argv[1:]]))
