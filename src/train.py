"""`python -m train ...` — the widthlab command line (see widthlab.cli)."""
from widthlab.cli import main

if __name__ == "__main__":
    main()
