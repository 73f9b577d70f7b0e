"""Ray job: the nightly diagnosis. `ray job submit --working-dir . -- python jobs/predict.py
--config paper --model /data/usv/classify/bundle --data /data/usv --out /data/usv/predict`"""

import sys

from usv_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
