"""Ray job: cross-validate the classifiers. `ray job submit --working-dir . -- python
jobs/train_classifier.py --config paper --data /data/usv --out /data/usv/classify`"""

import sys

from usv_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["classify", *sys.argv[1:]]))
