"""CLI placeholder: this package is planned and does nothing yet."""

import sys

if __name__ == "__main__":
    print("harmlens: this command is not implemented yet (planned in the issue tracker).", file=sys.stderr)
    sys.exit(2)
