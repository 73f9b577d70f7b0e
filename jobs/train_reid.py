"""Ray job: train and evaluate the re-ID models. `ray job submit --working-dir . -- python
jobs/train_reid.py --config paper --data /data/usv --out /data/usv/reid`"""

import sys

from usv_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["reid", *sys.argv[1:]]))
