"""The `sorl` command: the top layer, which nothing in the project imports.

main.py          the entry point and the data / train / eval / bench subcommands
commands.py      the sweep / table / plot subcommands (thin wrappers over `experiments`)
results.py       `sorl results`: rewrite the generated blocks of the results pages
agent_args.py    `sorl train`'s --agent.KEY settings as typed tyro arguments of the chosen agent
values.py        typed values with compact spellings (--eval-K 1,2,4,8, --seeds 1-8)
parse_errors.py  tyro's parse errors as one line, from tyro's error events
"""
