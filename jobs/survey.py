"""`ray job submit` entry point: a sky survey on the cluster's shared density pool.

    RAY_AUTH_MODE=token ray job submit --address http://localhost:8265 --working-dir . \\
        -- python jobs/survey.py --min-abs-b 30 --source gaia-dr3 --out /home/ray/survey-b30

Same flags as ``ray-app survey`` (see ``python jobs/survey.py --help``); the job joins the
cluster's Ray instance, so its density actors go to the GPU nodes. Re-submitting the same
command resumes a survey whose driver was stopped.
"""

import sys

from ray_app.cli import main

if __name__ == "__main__":
    sys.exit(main(["survey", *sys.argv[1:]]))
