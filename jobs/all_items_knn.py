"""spark-submit entry point: ``spark-submit jobs/all_items_knn.py --input ... --output ... --k 10``.

Takes exactly the flags of ``knnspark run``.
"""

import sys

from knnspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
