"""Ray job: a Ray Tune sweep. `ray job submit --working-dir . -- python jobs/tune.py
--config paper --target cnn --data /data/usv --out /data/usv/tune/cnn`"""

import sys

from usv_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
