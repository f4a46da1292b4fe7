"""Start clm: `python microservices/clm/main.py`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, when run as a script

from microservices.clm.service import create_service


def main() -> None:
    create_service().run()


if __name__ == "__main__":
    main()
