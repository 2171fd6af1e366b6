"""`python -m cli ...` is the `sorl` command."""

from cli.main import main

if __name__ == "__main__":
    main()
