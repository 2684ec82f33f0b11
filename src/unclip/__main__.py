"""`python -m unclip` is the same as the `unclip` command."""

from unclip.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
