"""`bin/picluster`: the operator's command line next to the stacks (README: "Operating")."""
