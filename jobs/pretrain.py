"""Ray job: pretrain the frame trunk on every ingested frame. `ray job submit --working-dir
. -- python jobs/pretrain.py --config paper --data /data/usv --out /data/usv/pretrain/2026-12`"""

import sys

from usv_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
