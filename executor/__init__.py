"""The anyio DAG runner that commands hand validated work to."""
