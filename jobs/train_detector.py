"""Ray job: train the nodule detector. `ray job submit --working-dir . -- python
jobs/train_detector.py --config paper --data /data/usv --out /data/usv/detect`"""

import sys

from usv_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["detect", *sys.argv[1:]]))
