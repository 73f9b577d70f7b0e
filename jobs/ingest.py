"""Ray job: ingest an archive. `ray job submit --working-dir . -- python jobs/ingest.py
--config paper --manifest /data/archive/manifest.csv --out /data/usv`"""

import sys

from usv_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
