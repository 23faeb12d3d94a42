"""Write N user records as CSV with a header (id,name,email): the import example's input.

python examples/06-import/make_users.py 100000 > users.csv
"""

from __future__ import annotations

import csv
import sys


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    out = csv.writer(sys.stdout, lineterminator="\n")
    out.writerow(["id", "name", "email"])
    for i in range(count):
        # Some names need quoting (a comma, a quote), as real exports do.
        name = f'User {i}, "the {i % 7}th"' if i % 10 == 0 else f"User {i}"
        out.writerow([i, name, f"user{i}@example.com"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
