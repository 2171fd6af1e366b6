"""The `sorl` command: the top layer, which nothing in the project imports.

main.py          the entry point and the data / train / eval / bench subcommands
commands.py      the sweep / table / plot subcommands (thin wrappers over `experiments`)
results.py       `sorl results`: rewrite the generated blocks of the results pages
parse_errors.py  tyro's parse errors as one line, from tyro's error events
"""
