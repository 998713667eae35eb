"""python -m devtools mirror ...: build or serve the offline mirror."""

import sys

from devtools.mirror.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args or args[0] != "mirror":
        sys.exit("usage: python -m devtools mirror {build,serve} ... (see: python -m devtools mirror --help)")
    sys.exit(main(args[1:]))
