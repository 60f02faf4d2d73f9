"""spark-submit entry point: ``spark-submit jobs/query_neighbors.py --index RUN_OUTPUT --base
EMBEDDINGS --input NEW --output OUT --k 10``.

Takes exactly the flags of ``knnspark query``.
"""

import sys

from knnspark.cli import main

if __name__ == "__main__":
    sys.exit(main(["query", *sys.argv[1:]]))
