"""Ray job: the nightly nodule index. `ray job submit --working-dir . -- python
jobs/index_archive.py --config paper --data /data/usv --model /data/usv/reid --out
/data/usv/index`"""

import sys

from usv_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["index", *sys.argv[1:]]))
